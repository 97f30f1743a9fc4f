"""The node agent: everything `memstate run` does at run time.

The daemon (start-up, the writer that decides, appends and applies, its loops), the pod sources
(memstate.node.sources) and config inputs it watches, the cgroup watcher, the HTTP endpoint,
metrics and sd_notify. It drives the core through the store and converges cgroups through
`memstate.reconcile`; it never imports `history`, `present` or `cli`.
"""
