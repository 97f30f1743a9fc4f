"""Pausing Python's cyclic garbage collector across a long walk over the log.

Folding and re-deriving a log allocate millions of small acyclic objects (decoded records,
states, allocations); none of them is ever part of a reference cycle (on the 100,000-record
benchmark log the collector ran ~110 times per walk and freed nothing), yet each young-generation
collection, and the rarer older ones, walk every tracked object still alive: ~3-5 % of the walk.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the body with the cyclic collector off, and switch it back on after (only if it was
    on: a caller that switched it off keeps it off; a nested pause does nothing). Reference
    counting still frees everything acyclic at once; any cycle made meanwhile is collected at
    the next collection after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
