"""The history tools: replay, bisect, audit, anonymise — questions asked of a recorded log.

Synchronous and trio-free; reads the store, re-runs the core, never touches a cgroup and never
writes a log. Shown to people through `memstate.present`.
"""
