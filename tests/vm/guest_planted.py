"""Guest-side planted-bug suite: the SimCgroupFS differential must catch a wrong belief.

Theory of operation: tests.host.differential runs each scenario on the real kernel and on a
SimCgroupFS shaped like it, and compares every step's outcome. That comparison is only worth
something if it fails when the simulator is wrong. This program runs inside the cgvm VM
(tests/vm/suites.py adds it to the session boot, after the unplanted differential) and, for each
(planted bug, scenario) pair of ``PLANTED``, runs the scenario once with the bug planted in the
simulator (memstate.host.sim.cgroupsim.PlantedBug: no page rounding, octal read as decimal...). It
prints one JSON object per pair with the outcome and every mismatching step (with the step
before it, which says what was written); tests/vm/test_planted_vm.py asserts on the host that
each bug is reported, in the scenario that exercises it, as the mismatch that bug must cause.
``CONTROLS`` are pairs whose scenario never touches the planted belief: they must still match,
so a report is about the bug and not about the planting. Stdlib plus memstate only.

By hand: ``scripts/cgvm run --numa 2 --hugepages 8 -- python -m tests.vm.guest_planted``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from memstate.host.sim.cgroupsim import PlantedBug
from tests.host import differential

DEFAULT_MOUNT = "/sys/fs/cgroup"

# (bug, scenario) pairs where the scenario exercises the planted belief: each must mismatch.
PLANTED = (
    (PlantedBug.NO_PAGE_ROUNDING, "memory_values"),
    (PlantedBug.OCTAL_AS_DECIMAL, "memory_values"),
    (PlantedBug.OCTAL_AS_DECIMAL, "hugetlb"),
    (PlantedBug.NO_HUGEPAGE_ROUNDING, "hugetlb"),
    (PlantedBug.RMDIR_ENOTEMPTY, "lifecycle"),
    (PlantedBug.INTERNAL_PROCESS_ALLOWED, "subtree_control"),
    (PlantedBug.CPUSET_NO_NORMALISE, "cpuset_values"),
)
# Pairs whose scenario does not exercise the bug: each must still match.
CONTROLS = (
    (PlantedBug.NO_PAGE_ROUNDING, "lifecycle"),
    (PlantedBug.RMDIR_ENOTEMPTY, "memory_values"),
)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def pair_id(bug: PlantedBug, scenario: str) -> str:
    return f"{bug.value}/{scenario}"


def run_pair(mount: Path, facts: differential.HostFacts, bug: PlantedBug, scenario: str) -> None:
    started = time.monotonic()
    result = differential.run_scenario(scenario, mount, facts, planted=[bug])
    mismatches = [
        {
            "index": index,
            "step": step["step"],
            "real": step["real"],
            "sim": step["sim"],
            "previous": result.steps[index - 1]["step"] if index else "",
        }
        for index, step in enumerate(result.steps)
        if step["real"] != step["sim"]
    ]
    emit(
        {
            "id": pair_id(bug, scenario),
            "bug": bug.value,
            "scenario": scenario,
            "status": result.status,
            "reason": result.reason,
            "steps": len(result.steps),
            "mismatches": mismatches,
            "seconds": round(time.monotonic() - started, 3),
        }
    )


def main(argv: list[str]) -> int:
    mount = Path(argv[1] if len(argv) > 1 else DEFAULT_MOUNT)
    enabled = differential.prepare_mount(mount)
    facts = differential.probe_facts(mount)
    emit(
        {
            "id": "facts",
            "mount": str(mount),
            "page_size": facts.page_size_bytes,
            "hugepage_sizes": list(facts.hugepage_sizes_bytes),
            "controllers": list(facts.base_controllers),
            "enabled_now": enabled,
        }
    )
    for bug, scenario in (*PLANTED, *CONTROLS):
        try:
            run_pair(mount, facts, bug, scenario)
        except Exception:  # an observation program: report, go on with the next pair
            emit({"id": f"error {pair_id(bug, scenario)}", "traceback": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
