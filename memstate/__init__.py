"""memstate: NUMA memory pinning and cgroup v2 Memory QoS as an event-sourced state machine.

Importing the package has no side effects; everything lives in sub-modules.
"""

__version__ = "0.1.0"
