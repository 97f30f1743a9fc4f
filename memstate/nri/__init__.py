"""memstate's NRI plugin: the multiplexer and ttrpc transport (sans I/O), the NRI messages, the
plugin's life cycle on trio, and the mapping from memstate's decisions to container adjustments.

See docs/nri.md.
"""
