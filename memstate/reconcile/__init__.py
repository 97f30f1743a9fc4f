"""Converging the live cgroup v2 tree to the core's targets: observe, plan (core), execute.

Synchronous and trio-free: the daemon runs it in a worker thread; `memstate plan`/`diff` run it
directly. Depends on `core` and `host` only.
"""
