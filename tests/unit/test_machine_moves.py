"""`add_allocation` / `remove_allocation` (what `apply` pays per pinned pod) against the
`MachineBuilder` they mirror: the same machine after any sequence of reservations and
releases, and the same invariant checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.errors import InvariantViolation
from memstate.core.machine import (
    Block,
    Machine,
    MachineBuilder,
    Take,
    add_allocation,
    default_machine,
    remove_allocation,
)
from tests.factories import Gi, Mi, static_config, topology

TOPOLOGY = topology("8Gi", "8Gi", "8Gi", "8Gi", hugepages={"2Mi": 64})
MACHINE = default_machine(TOPOLOGY, static_config(["1Gi", "1Gi", "1Gi", "1Gi"]))
RESOURCES = ("memory", "hugepages-2Mi")

MASKS = st.sampled_from([(0,), (1,), (2,), (3,), (0, 1), (2, 3), (0, 1, 2, 3)])
POD = st.tuples(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(RESOURCES), st.integers(1, 40)),
        max_size=3,
    ),
    st.lists(st.tuples(MASKS, st.sampled_from(RESOURCES)), max_size=3),
)


def _pod(
    raw: tuple[list[tuple[int, str, int]], list[tuple[tuple[int, ...], str]]],
) -> tuple[list[Take], list[Block]]:
    takes = [Take(numa_node=n, resource=r, size_bytes=k * 2 * Mi) for n, r, k in raw[0]]
    blocks = [Block(numa_affinity=m, type=r, size=0) for m, r in raw[1]]
    return takes, blocks


def _built(machine: Machine, takes: list[Take], blocks: list[Block], sign: int) -> Machine:
    builder = MachineBuilder(machine)
    if sign > 0:
        builder.reserve(takes)
        builder.assign(blocks)
    else:
        builder.release(takes)
        builder.unassign(blocks)
    return builder.freeze()


@settings(max_examples=200, deadline=None)
@given(st.lists(POD, min_size=1, max_size=6), st.data())
def test_moves_equal_the_builder(pods: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    machine = MACHINE
    held = []
    for raw in pods:
        takes, blocks = _pod(raw)
        try:
            expected = _built(machine, takes, blocks, 1)
        except InvariantViolation as exc:
            with pytest.raises(InvariantViolation, match=str(exc)):
                add_allocation(machine, takes, blocks)
            continue  # more than a node holds: refused by both
        machine_after = add_allocation(machine, takes, blocks)
        assert machine_after == expected
        machine = machine_after
        held.append((takes, blocks))
    order = data.draw(st.permutations(range(len(held))))
    for index in order:
        takes, blocks = held[index]
        machine_after = remove_allocation(machine, takes, blocks)
        assert machine_after == _built(machine, takes, blocks, -1)
        machine = machine_after
    assert machine == MACHINE


@pytest.mark.parametrize(
    ("move", "message"),
    [
        (lambda: add_allocation(MACHINE, [Take(0, "memory", 8 * Gi)], []), "exceeds allocatable"),
        (lambda: remove_allocation(MACHINE, [Take(1, "memory", 1)], []), "release below zero"),
        (
            lambda: add_allocation(MACHINE, [Take(7, "memory", 1)], []),
            "take of memory on NUMA node 7",
        ),
        (lambda: remove_allocation(MACHINE, [Take(0, "hugepages-1Gi", 1)], []), "release of"),
        (lambda: add_allocation(MACHINE, [], [Block((0, 9), "memory", 0)]), "NUMA node 9"),
        (lambda: remove_allocation(MACHINE, [], [Block((2,), "memory", 0)]), "below zero"),
    ],
)
def test_moves_check_what_the_builder_checks(move: object, message: str) -> None:
    with pytest.raises(InvariantViolation, match=message):
        move()  # type: ignore[operator]


@pytest.mark.parametrize("sign", [1, -1])
def test_a_block_on_a_node_the_machine_lacks_is_an_invariant_violation(sign: int) -> None:
    # A recorded block naming NUMA node 7 on a 4-node machine (a corrupt or foreign log whose
    # checksums hold): the typed error with the node, never a bare KeyError, on both paths.
    blocks = [Block(numa_affinity=(7,), type="memory", size=0)]
    with pytest.raises(InvariantViolation, match="NUMA node 7"):
        _built(MACHINE, [], blocks, sign)
    moved = add_allocation if sign > 0 else remove_allocation
    with pytest.raises(InvariantViolation, match="NUMA node 7"):
        moved(MACHINE, [], blocks)
