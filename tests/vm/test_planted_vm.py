"""A wrong belief planted in SimCgroupFS is caught by the differential against the VM's kernel.

Theory of operation: tests/vm/guest_planted.py runs in the session's one batched boot, after the
unplanted differential (tests.host.differential). For each planted bug it runs the scenario
that exercises it with the bug in the simulator and reports every step where the kernel and the
simulator disagree. These tests assert, per bug, that

* the scenario reports a mismatch, while the same scenario without the bug matched this kernel
  in the same boot (the differential suite's report);
* the mismatches are the ones that bug must cause, computed here from the values written (page
  rounding the simulator forgot, an octal literal read as decimal, EBUSY reported as
  ENOTEMPTY...), so a mismatch for any other reason does not count as "caught";
* a scenario that does not exercise the bug (``CONTROLS``) still matches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from memstate.core.cgroup_values import format_bitmap_list, parse_bitmap_list
from memstate.host.sim.cgroupsim import PlantedBug

from . import guest_planted as guest
from . import harness
from .suites import DIFFERENTIAL, PLANTED

pytestmark = pytest.mark.vm

Records = Mapping[str, Mapping[str, Any]]
Step = Mapping[str, str]

_OK_VALUE_RE = re.compile(r"ok '(.*)\\n'")
_READ_RE = re.compile(r"read \S+/(?P<file>[A-Za-z0-9_.]+)$")
_WRITE_RE = re.compile(r"write \S+/(?P<file>[A-Za-z0-9_.]+) '(?P<value>.*)'$")
_HUGETLB_RE = re.compile(r"hugetlb\.(\d+)([KMG])B\.(?:rsvd\.)?max")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Records:
    suite = vm_batch.suites[PLANTED]
    found = {str(r["id"]): r for r in harness.parse_json_lines(suite.stdout)}
    errors = {k: r["traceback"] for k, r in found.items() if k.startswith("error")}
    if suite.rc != 0 or errors:
        pytest.fail(f"planted suite rc {suite.rc}: {errors}\n{suite.stderr[-3000:]}", pytrace=False)
    return found


@pytest.fixture(scope="module")
def page_size(records: Records) -> int:
    return int(get(records, "facts")["page_size"])


def get(records: Records, check_id: str) -> Mapping[str, Any]:
    record = records.get(check_id)
    if record is None:
        pytest.fail(f"the guest printed no {check_id!r}; it printed {sorted(records)}")
    return record


def value_of(outcome: str) -> str | None:
    """The value of a successful read outcome (``ok '4096\\n'`` -> ``4096``)."""
    match = _OK_VALUE_RE.fullmatch(outcome)
    return match.group(1) if match else None


def read_file(step: Step) -> str | None:
    match = _READ_RE.fullmatch(step["step"])
    return match.group("file") if match else None


def rounding_unit(file: str, page_size: int) -> int:
    """What the kernel rounds a limit in `file` down to: the page, or the huge page size."""
    match = _HUGETLB_RE.fullmatch(file)
    return int(match.group(1)) * _UNITS[match.group(2)] if match else page_size


def floor(value: int, unit: int) -> int:
    return value // unit * unit


# --- what each planted bug must look like ---------------------------------------------------


def forgot_rounding(step: Step, page_size: int) -> bool:
    """A read where the kernel shows the simulator's value rounded down to the file's unit."""
    file = read_file(step)
    real, sim = value_of(step["real"]), value_of(step["sim"])
    if file is None or real is None or sim is None or not (real.isdigit() and sim.isdigit()):
        return False
    return int(real) == floor(int(sim), rounding_unit(file, page_size)) != int(sim)


def forgot_page_rounding(step: Step, page_size: int) -> bool:
    return (read_file(step) or "").startswith("memory.") and forgot_rounding(step, page_size)


def forgot_hugepage_rounding(step: Step, page_size: int) -> bool:
    file = read_file(step) or ""
    return _HUGETLB_RE.fullmatch(file) is not None and forgot_rounding(step, page_size)


def octal_read_as_decimal(step: Step, page_size: int) -> bool:
    """A read right after writing an octal literal: the kernel took it as octal, the simulator
    as decimal (both rounded down to the file's unit)."""
    file = read_file(step)
    written = _WRITE_RE.fullmatch(step["previous"])
    real, sim = value_of(step["real"]), value_of(step["sim"])
    if file is None or written is None or written.group("file") != file or None in (real, sim):
        return False
    literal = written.group("value").strip()
    if not re.fullmatch(r"0[0-7]+", literal):
        return False
    unit = rounding_unit(file, page_size)
    return (real, sim) == (str(floor(int(literal, 8), unit)), str(floor(int(literal), unit)))


def ebusy_as_enotempty(step: Step, page_size: int) -> bool:
    return step["step"].startswith("rmdir ") and (step["real"], step["sim"]) == (
        "EBUSY",
        "ENOTEMPTY",
    )


def internal_process_allowed(step: Step, page_size: int) -> bool:
    """The kernel refuses (EBUSY) a process or a controller in a cgroup with the other; the
    simulator, not knowing the rule, lets it happen."""
    operation = step["step"].split(" ", 1)[0]
    return operation in ("move", "spawn", "write") and (step["real"], step["sim"]) == (
        "EBUSY",
        "ok",
    )


def cpus_not_normalised(step: Step, page_size: int) -> bool:
    real, sim = value_of(step["real"]), value_of(step["sim"])
    if read_file(step) != "cpuset.cpus" or real is None or sim is None:
        return False
    return real == format_bitmap_list(parse_bitmap_list(sim, nbits=1 << 16)) != sim


Signature = Callable[[Step, int], bool]
# bug -> (what it must look like, whether every mismatch must look like it or only the first;
# later steps of some scenarios inherit the wrong state, e.g. a value the kernel refused).
SIGNATURES: dict[PlantedBug, tuple[Signature, bool]] = {
    PlantedBug.NO_PAGE_ROUNDING: (forgot_page_rounding, True),
    PlantedBug.NO_HUGEPAGE_ROUNDING: (forgot_hugepage_rounding, True),
    PlantedBug.OCTAL_AS_DECIMAL: (octal_read_as_decimal, False),
    PlantedBug.RMDIR_ENOTEMPTY: (ebusy_as_enotempty, True),
    PlantedBug.INTERNAL_PROCESS_ALLOWED: (internal_process_allowed, True),
    PlantedBug.CPUSET_NO_NORMALISE: (cpus_not_normalised, True),
}


def _pair_id(pair: tuple[PlantedBug, str]) -> str:
    return guest.pair_id(*pair)


@pytest.mark.parametrize("pair", guest.PLANTED, ids=_pair_id)
def test_planted_bug_is_reported_as_the_mismatch_it_causes(
    records: Records, page_size: int, pair: tuple[PlantedBug, str]
) -> None:
    bug, scenario = pair
    result = get(records, guest.pair_id(bug, scenario))
    assert result["status"] == "mismatch", f"{bug} went unnoticed by scenario {scenario}"
    mismatches = result["mismatches"]
    signature, every = SIGNATURES[bug]
    checked = mismatches if every else mismatches[:1]
    unexplained = [m for m in checked if not signature(m, page_size)]
    assert unexplained == [], json.dumps(unexplained, indent=1)


@pytest.mark.parametrize("pair", guest.PLANTED, ids=_pair_id)
def test_the_same_scenario_without_the_bug_matched_this_kernel(
    vm_batch: harness.BatchResult, pair: tuple[PlantedBug, str]
) -> None:
    suite = vm_batch.suites[DIFFERENTIAL]
    try:
        report = json.loads(suite.stdout)
    except ValueError:
        pytest.fail(f"the differential printed no report (rc {suite.rc})", pytrace=False)
    assert report["planted_bugs"] == []
    statuses = {r["name"]: r["status"] for r in report["results"]}
    assert statuses.get(pair[1]) == "match"


@pytest.mark.parametrize("pair", guest.CONTROLS, ids=_pair_id)
def test_a_scenario_that_does_not_exercise_the_bug_still_matches(
    records: Records, pair: tuple[PlantedBug, str]
) -> None:
    result = get(records, guest.pair_id(*pair))
    assert result["status"] == "match", json.dumps(result["mismatches"], indent=1)
    assert result["steps"] > 0
