"""The node daemon's shell: I/O, time and trio live here (the core stays pure)."""
