"""The daemon's tasks after READY (memstate.node.daemon.Daemon.loops): each a function of the
daemon's shared state (memstate.node.context.DaemonContext)."""
