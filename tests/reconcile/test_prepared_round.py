"""A round in two halves (`Reconciler.prepare`, `Reconciler.complete`) and the check that says
whether the second may wait on the kernel (memstate.reconcile.blocking).

Method: the halves against `reconcile` on two identical kernel models, round after round (full,
admission, drift, removal): the same reports and the same trees. The check over hand-built
operations and over plans the reconciler makes on the model.
"""

from __future__ import annotations

import pytest

from memstate.core.errors import InvariantViolation
from memstate.core.plan import Operation, Plan
from memstate.reconcile.blocking import may_block_in_kernel
from memstate.reconcile.reconciler import Reconciler
from tests.reconcile.helpers import PAGE, new_sim, retired, targets_of_pods, tree_snapshot, uid_for
from tests.reconcile.test_reconciler import make, mixed, writes


def _write(path: str, file: str, value: str, observed: str | None, index: int = 0) -> Operation:
    return Operation(
        index=index, phase="raise", kind="write", path=path, file=file, value=value,
        observed=observed,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("file", "value", "observed", "blocks"),
    [
        ("memory.max", "67108864", "max", True),  # lowered: the write reclaims
        ("memory.high", "1000", "2000", True),
        ("memory.high", "1000", None, True),  # not known: may be a lowering
        ("memory.max", "max", "67108864", False),  # raised
        ("memory.max", "2000", "1000", False),
        ("memory.max", "1000", "1000", False),
        ("cpuset.mems", "0", "0-1", True),  # the tasks' pages may move
        ("memory.min", "0", "67108864", False),  # protections never wait
        ("memory.low", "0", None, False),
        ("hugetlb.2MB.max", "0", "max", False),  # refused (EBUSY) rather than reclaimed
    ],
)
def test_what_may_block_on_an_existing_cgroup(
    file: str, value: str, observed: str | None, blocks: bool
) -> None:
    plan = Plan(operations=(_write("kubepods/poda", file, value, observed),))
    assert may_block_in_kernel(plan) is blocks


def test_nothing_blocks_on_a_cgroup_the_plan_creates() -> None:
    made = Operation(index=0, phase="create", kind="mkdir", path="kubepods/poda")
    lowered = _write("kubepods/poda", "memory.max", "1000", "max", index=1)
    nodes = _write("kubepods/poda", "cpuset.mems", "0", None, index=2)
    assert not may_block_in_kernel(Plan(operations=(made, lowered, nodes)))
    elsewhere = _write("kubepods/podb", "memory.max", "1000", "max", index=3)
    assert may_block_in_kernel(Plan(operations=(made, lowered, elsewhere)))


def test_the_halves_do_what_one_round_does() -> None:
    everyone = mixed(8)
    whole_fs, whole, _ = make(sim=new_sim())
    halves_fs, halves, _ = make(sim=new_sim())

    def both(**kwargs: object) -> None:
        one = whole.reconcile(**kwargs)  # type: ignore[arg-type]
        before = writes(halves_fs)
        prepared = halves.prepare(**kwargs)  # type: ignore[arg-type]
        assert writes(halves_fs) == before  # the first half only reads
        assert halves.complete(prepared) == one
        assert writes(halves_fs) - before == one.writes
        assert tree_snapshot(halves_fs) == tree_snapshot(whole_fs)

    first = targets_of_pods(everyone[:5])
    both(targets=first)  # full
    admitted = targets_of_pods(everyone[:6])
    both(targets=admitted, scope=[admitted.pod(uid_for(5)).cgroup])
    drifted = admitted.pod(uid_for(2)).cgroup
    for fs in (whole_fs, halves_fs):
        fs.write(drifted, "memory.max", "max")
    both(targets=admitted, scope=[drifted])
    remaining = targets_of_pods(everyone[2:6])
    both(targets=remaining, retired_paths=retired(uid_for(0), uid_for(1)), scope=[])
    both(targets=remaining)  # full again


def test_an_admission_may_run_anywhere_a_lowered_limit_may_not() -> None:
    everyone = mixed(6)
    fs, reconciler, _ = make(sim=new_sim())
    assert reconciler.reconcile(targets_of_pods(everyone[:5])).converged
    targets = targets_of_pods(everyone)
    admitted = targets.pod(uid_for(5)).cgroup
    prepared = reconciler.prepare(targets, scope=[admitted])
    assert not prepared.may_block
    assert reconciler.complete(prepared).converged
    # Someone raised an existing pod's limit: putting it back lowers it (reclaim in the write).
    raised = targets.pod(uid_for(1)).cgroup
    fs.write(raised, "memory.max", "max")
    prepared = reconciler.prepare(targets, scope=[raised])
    assert prepared.may_block
    assert reconciler.complete(prepared).converged


def test_a_round_completes_only_on_the_reconciler_that_prepared_it() -> None:
    targets = targets_of_pods(mixed(3))
    _, reconciler, _ = make(sim=new_sim())
    other = Reconciler(new_sim(), page_size_bytes=PAGE)
    with pytest.raises(InvariantViolation):
        other.complete(reconciler.prepare(targets))
