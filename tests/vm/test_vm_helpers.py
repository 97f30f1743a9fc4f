"""Host-side tests (no VM) of the pieces the daemon and planted-bug VM suites rely on.

Theory of operation: a mistake in these would only show up after a 60 s boot, or worse, make a
VM check pass for the wrong reason. So they are tested here, fast: the bytecode the harness
compiles for the guest is valid and refreshed when a source changes; the node config the daemon
suite writes is accepted by memstate and leaves exactly the allocatable memory the scenario is
sized for; the invariant check over the watcher's samples finds what it must; each planted-bug
signature recognises its own mismatch and nobody else's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from memstate.core import reducer
from memstate.core.events import Event
from memstate.core.machine import default_machine
from memstate.core.state import State
from memstate.core.topology import HugepagePool, NumaNode, Topology
from memstate.host.sim.cgroupsim import PlantedBug
from memstate.node.inputs import load_config
from memstate.store.reader import LogReader
from memstate.store.writer import EventLog
from tests.replay.recording import BASE_TS_NS, churn_inputs

from . import guest_daemon, harness
from .test_daemon_vm import shortfalls
from .test_planted_vm import SIGNATURES

MIB = 1 << 20


# --- bytecode for the guest ----------------------------------------------------------------------


def test_precompiled_bytecode_loads_and_follows_source_edits(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    source = package / "mod.py"
    source.write_text("VALUE = 1\n")
    assert harness.precompile_bytecode(tmp_path, ["pkg"]) == 1
    assert harness.precompile_bytecode(tmp_path, ["pkg"]) == 0  # up to date: left alone
    cfile = package / "__pycache__" / f"mod.{sys.implementation.cache_tag}.pyc"
    assert cfile.read_bytes()[4:8] == (0b11).to_bytes(4, "little")  # checked hash

    def load() -> object:
        spec = importlib.util.spec_from_file_location("pkg_mod_under_test", source)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.VALUE

    assert load() == 1
    source.write_text("VALUE = 2\n")  # same size, maybe the same second: the hash tells
    assert load() == 2  # a stale pyc is never used
    assert harness.precompile_bytecode(tmp_path, ["pkg"]) == 1


# --- the daemon suite's node ---------------------------------------------------------------------

# The 2-node VM as measured (shared/specs/real-kernel-vm.md), hugepages=8 split 4 and 4.
VM_NODES = {
    0: {"memtotal_kib": 469376, "hugepages_kib": 8192},
    1: {"memtotal_kib": 515492, "hugepages_kib": 8192},
}


def test_daemon_suite_config_is_valid_and_leaves_the_planned_allocatable(tmp_path: Path) -> None:
    config_document = guest_daemon.node_config(tmp_path, VM_NODES)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_document))
    config = load_config(path)
    topology = Topology(
        nodes=tuple(
            NumaNode(
                id=node,
                memory_bytes=facts["memtotal_kib"] * 1024,
                hugepages=(HugepagePool(page_size_bytes=2 * MIB, count=4),),
            )
            for node, facts in VM_NODES.items()
        )
    )
    machine = default_machine(topology, config)
    allocatable = [node.memory_map["memory"].allocatable for node in machine.nodes]
    assert allocatable == [guest_daemon.ALLOCATABLE_MIB * MIB] * 2
    # The scenario needs this shape: a and c fill one node, b the other, d fits in what is
    # left and e does not.
    running = sorted(mib for _, _, mib in guest_daemon.RUNNING)
    assert running == [32, 64, 64] and guest_daemon.ALLOCATABLE_MIB == 96


def test_daemon_suite_refuses_a_node_too_small_for_it(tmp_path: Path) -> None:
    tiny = {0: {"memtotal_kib": 100 * 1024, "hugepages_kib": 0}}
    with pytest.raises(RuntimeError, match="too small"):
        guest_daemon.node_config(tmp_path, tiny)


# --- the watcher's invariant check ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"k": ["100", "0"], "k/a": ["60", "0"], "k/b": ["40", "0"]}, []),
        ({"k": ["99", "0"], "k/a": ["60", "0"], "k/b": ["40", "0"]}, ["k/memory.min"]),
        ({"k": ["100", "5"], "k/a": ["60", "6"], "k/a/c": ["60", "0"]}, ["k/memory.low"]),
        ({"k": ["max", "max"], "k/a": ["60", "6"]}, []),
        ({"k": ["10", "0"], "k/a": ["max", "0"]}, ["k/memory.min"]),
        ({"k": [None, None], "k/a": ["60", "0"]}, []),  # no files: nothing to compare
        ({"k": ["50", "0"], "k/a": ["40", "0"], "k/a/c": ["60", "0"]}, ["k/a/memory.min"]),
    ],
)
def test_shortfalls_compare_each_parent_with_its_direct_children(
    tree: dict[str, list[str | None]], expected: list[str]
) -> None:
    assert [s.split(" ")[0] for s in shortfalls(tree)] == expected


# --- planted-bug signatures ----------------------------------------------------------------------


def step(text: str, real: str, sim: str, previous: str = "") -> dict[str, str]:
    return {"step": text, "real": real, "sim": sim, "previous": previous}


# One mismatch as each bug causes it (taken from a VM run), and a near miss that is not it.
EXAMPLES = {
    PlantedBug.NO_PAGE_ROUNDING: (
        step("read a/memory.min", "ok '999424\\n'", "ok '1000000\\n'"),
        step("read a/memory.min", "ok '999423\\n'", "ok '1000000\\n'"),
    ),
    PlantedBug.NO_HUGEPAGE_ROUNDING: (
        step("read a/hugetlb.2MB.max", "ok '2097152\\n'", "ok '3145728\\n'"),
        step("read a/memory.max", "ok '2097152\\n'", "ok '3145728\\n'"),
    ),
    PlantedBug.OCTAL_AS_DECIMAL: (
        step(
            "read a/hugetlb.2MB.max",
            "ok '4194304\\n'",
            "ok '18874368\\n'",
            "write a/hugetlb.2MB.max '020000000'",
        ),
        step(
            "read a/memory.min",
            "ok '4096\\n'",
            "ok '8192\\n'",
            "write a/memory.min '10000'",
        ),
    ),
    PlantedBug.RMDIR_ENOTEMPTY: (
        step("rmdir a", "EBUSY", "ENOTEMPTY"),
        step("rmdir a", "ENOENT", "ENOTEMPTY"),
    ),
    PlantedBug.INTERNAL_PROCESS_ALLOWED: (
        step("move a [p]", "EBUSY", "ok"),
        step("move a [p]", "ESRCH", "ok"),
    ),
    PlantedBug.CPUSET_NO_NORMALISE: (
        step("read a/cpuset.cpus", "ok '0-1\\n'", "ok '0,1\\n'"),
        step("read a/cpuset.cpus", "ok '0-2\\n'", "ok '0,1\\n'"),
    ),
}


@pytest.mark.parametrize("bug", sorted(SIGNATURES, key=str), ids=str)
def test_each_signature_recognises_its_own_mismatch_and_no_other(bug: PlantedBug) -> None:
    signature, _ = SIGNATURES[bug]
    own, near_miss = EXAMPLES[bug]
    assert signature(own, 4096)
    assert not signature(near_miss, 4096)
    for other, (other_example, _) in EXAMPLES.items():
        if other != bug:
            assert not signature(other_example, 4096), other


# --- the guest node's incremental log reading ----------------------------------------------------


def test_node_records_read_incrementally_equal_a_whole_read_beside_the_writer(
    tmp_path: Path,
) -> None:
    """`Node.records` decodes only what was appended since its last call; at every moment it
    must equal a whole read of the log: across segment rolls, a writer reopening the log, and
    a transaction whose decisions are only partly written (held back, then read once whole)."""
    node = guest_daemon.Node(tmp_path / "node", {})
    segments = node.state_dir / "log"

    def whole() -> list[tuple[int, object]]:
        return [(e.seq, e.event) for e in LogReader(node.state_dir).read()]

    def incremental() -> list[tuple[int, object]]:
        return [(e.seq, e.event) for e in node.records()]

    assert incremental() == [] == whole()
    inputs = churn_inputs(90)
    state = State()
    checked = 0
    for chunk in range(3):  # the log is opened again for each chunk, as a restarted daemon does
        with EventLog.open(node.state_dir, fsync=False, segment_bytes=4096) as log:
            for index in range(chunk * 30, chunk * 30 + 30):
                event = inputs[index]
                if event.role == "note":
                    log.append([(event, None)], ts_ns=BASE_TS_NS + index)
                else:
                    transition = reducer.step(state, event)
                    state = transition.state
                    batch: list[tuple[Event, int | None]] = [(event, len(transition.decisions))]
                    batch.extend((d, None) for d in transition.decisions)
                    log.append(batch, ts_ns=BASE_TS_NS + index)
                if index % 3 == 0:
                    assert incremental() == whole()
                    checked += 1
    assert len(list(segments.iterdir())) > 3  # the reads crossed segment rolls
    assert incremental() == whole()
    # A transaction cut short: its last decision's frame is not on disk yet.
    with EventLog.open(node.state_dir, fsync=False, segment_bytes=1 << 20) as log:
        event = inputs[-1] if inputs[-1].role != "note" else inputs[-2]
        transition = reducer.step(state, event)
        batch = [(event, len(transition.decisions))]
        batch.extend((d, None) for d in transition.decisions)
        assert len(batch) >= 2
        written = log.append(batch, ts_ns=BASE_TS_NS + 1000)
    last = max(segments.iterdir())
    data = last.read_bytes()
    last.write_bytes(data[:-5])
    before = whole()
    assert written[0].seq not in {seq for seq, _ in before}  # held back by the whole read too
    assert incremental() == before
    last.write_bytes(data)  # the writer finishes the transaction
    after = whole()
    assert [seq for seq, _ in after[-len(written) :]] == [e.seq for e in written]
    assert incremental() == after
    assert checked >= 30
