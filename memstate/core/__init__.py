"""The pure functional core: no I/O, no clock, no randomness (see tests/test_layering.py)."""
