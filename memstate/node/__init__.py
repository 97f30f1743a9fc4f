"""The node daemon's shell: where memstate meets the node (pod sources, the daemon's loops)."""
