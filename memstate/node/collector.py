"""The cyclic garbage collector's young-generation threshold while the daemon runs.

CPython collects its youngest generation after every 700 net allocations of tracked objects (its
default). A young collection walks every object allocated since the last one and everything
those objects refer to. At 500 resident pods an admission leaves ~50 objects alive (the new
pod's records and the next versions of the indexes it changed) and frees the rest by reference
counting: the collections found nothing to free in the admission benchmark, yet each walked the
node-sized containers the latest commit and reconcile round left young (the targets' tuples, the
reconciler's cgroup sets and names, ~27,000 references at 500 pods): ~0.5 ms per collection,
one every ~13 admissions, and twice that at 2,000 pods — CPU per admission that grew with the
node, not with the change (docs/performance.md, "stop 23: the admission path outside the round").

While the daemon runs, the young generation holds `YOUNG_THRESHOLD` allocations instead: each
collection walks those containers as before, an order of magnitude less often. The older
generations' thresholds are kept; reference counting still frees everything acyclic at once,
and a cycle waits at most one young collection, as before (the daemon makes few: a collection
at 700 freed nothing in a whole benchmark run).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations between two young collections while the daemon runs (CPython's default: 700). A
# collection then walks ~50 times more young objects than the containers' references at 500
# pods cost alone (~1.3 ms against ~0.5), a pause like one of the middle generation's today.
YOUNG_THRESHOLD = 5000


@contextmanager
def young_generation(threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Run the body with the young generation's threshold at least `threshold`, and put the
    previous thresholds back after, unless something else changed them meanwhile. A threshold
    already as high, or 0 (automatic collection off), is left as it is."""
    before = gc.get_threshold()
    if before[0] == 0 or before[0] >= threshold:
        yield
        return
    raised = (threshold, *before[1:])
    gc.set_threshold(*raised)
    try:
        yield
    finally:
        if gc.get_threshold() == raised:
            gc.set_threshold(*before)
