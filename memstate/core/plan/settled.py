"""What a full plan found settled, carried to the next full plan so it need not plan it again.

A full plan plans every managed cgroup, ~6,000 (cgroup, file) pairs at 500 pods, and the first
full round after an admission cannot take the last full round's plan whole (its targets differ
by a pod). But nearly every cgroup in it is *settled*: observed to exist, every file readable
and managed, every file already at its final value, so the plan has no operation, no warning,
no unknown or held value, and no blocked file for it. What the planner computes for a cgroup is
a function of a few inputs (`SettledCgroup`'s key): its target, its observation, the
controllers its parent will have enabled, and its children's protections summed (now, after the
raise pass, at the end). When all of them are equal to a settled cgroup's of the last full plan
(the target the same object, the rest compared by value) and the plan-wide inputs are equal (the
page size, whether the profile enables controllers), the results are the same: no operation,
the same managed files, enabled controllers, protections and final values. The planner then
takes those instead of deriving them (it still sums the children, which is how it knows their
protections did not move, and still visits the children's names for the same warnings).

The plan is the one computed without it (tests/reconcile/test_settled.py compares them over
random trees, targets and earlier plans). Immutable: built by the planner at the end of a full
plan, never changed afterwards. Pure: no I/O, no clock; looked up by path only.
"""

from __future__ import annotations

from collections.abc import Mapping

from memstate.core.plan.model import ObservedCgroup
from memstate.core.targets import CgroupTarget

# A protection file's children summed: (now, after the raise pass, at the end).
Sums = tuple[int, int, int]


class SettledCgroup:
    """One settled cgroup of a full plan: the inputs its results depend on (the key) and those
    results. Its protections are (file, value) pairs: now, raised and final are all `value`."""

    __slots__ = (
        "available",
        "enabled_after",
        "final",
        "found",
        "managed",
        "protections",
        "sums",
        "target",
        "visits",
    )

    def __init__(
        self,
        *,
        target: CgroupTarget,
        found: ObservedCgroup,
        available: frozenset[str],
        sums: tuple[Sums, ...],
        managed: tuple[str, ...],
        enabled_after: frozenset[str],
        protections: tuple[tuple[str, int], ...],
        visits: bool,
        final: dict[str, str],
    ) -> None:
        # The key: the target (by identity), the observation, the controllers the parent will
        # have enabled, and the children's sums of each managed protection file, in order.
        self.target = target
        self.found = found
        self.available = available
        self.sums = sums
        # The results.
        self.managed = managed
        self.enabled_after = enabled_after
        self.protections = protections
        self.visits = visits  # an order-bound file: the lower pass visits its children's names
        self.final = final  # its final values (the plan's `final_values` entry; never changed)

    def matches(
        self, target: CgroupTarget, found: ObservedCgroup | None, available: frozenset[str]
    ) -> bool:
        """True if the key's target, observation and parent's controllers are these (the sums
        are compared once they are known)."""
        return (
            target is self.target
            and found is not None
            and (found is self.found or found == self.found)
            and available == self.available
        )


class SettledCgroups:
    """The settled cgroups of one full plan, and the plan-wide inputs they hold under."""

    __slots__ = ("by_path", "enables", "naming", "page_size_bytes")

    def __init__(
        self,
        *,
        page_size_bytes: int,
        enables: bool,
        naming: tuple[str, tuple[str, ...]],
        by_path: Mapping[str, SettledCgroup],
    ) -> None:
        self.page_size_bytes = page_size_bytes
        self.enables = enables  # the profile creates and enables (owns the cgroups)
        # The targets' naming (cgroup driver, cgroupRoot) their targets were checked under.
        self.naming = naming
        self.by_path = by_path

    def usable(self, page_size_bytes: int, enables: bool) -> Mapping[str, SettledCgroup]:
        """The settled cgroups, when they were settled under these plan-wide inputs; else none."""
        if page_size_bytes != self.page_size_bytes or enables != self.enables:
            return {}
        return self.by_path

    def checked(self, naming: tuple[str, tuple[str, ...]]) -> Mapping[str, SettledCgroup]:
        """The settled cgroups, whose targets passed `check_target_tree`'s per-cgroup checks
        (a pure function of the target and the naming) when the naming is `naming`; else none."""
        return self.by_path if naming == self.naming else {}


NOTHING_SETTLED = SettledCgroups(page_size_bytes=0, enables=True, naming=("", ()), by_path={})
