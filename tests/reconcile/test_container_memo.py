"""The reconciler's memo of container targets (memstate.reconcile.observe.ContainerTargetsMemo)
gives what `container_targets_for_pod` gives.

Method: a hypothesis property over sequences of rounds in which each pod's cgroup listing
(directories named after a container, runtime-id directories, foreign names) and runtime ids
change or stay the same object, and pods come and go with new targets: after every round, for
every pod, the memo's answer equals a fresh computation.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memstate.core.plan.containers import container_targets_for_pod
from memstate.reconcile.observe import ContainerTargetsMemo
from tests.reconcile.helpers import mixed_pod, node_config, targets_of_pods, uid_for
from tests.reconcile.test_properties import PROPERTY_SETTINGS

RUNTIME_ID = "a" * 64
NAMES = ("app", "sidecar", "main", RUNTIME_ID, f"cri-containerd-{RUNTIME_ID}.scope", "other")


@PROPERTY_SETTINGS
@given(
    rounds=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 5),  # which pod
                st.sets(st.sampled_from(NAMES)),  # its listing this round
                st.booleans(),  # the listing is a new tuple (else the previous object if equal)
                st.sampled_from([None, "app", "main", "sidecar"]),  # the runtime id's container
                st.booleans(),  # the pod's targets are rebuilt (a new object)
            ),
            max_size=6,
        ),
        max_size=6,
    )
)
def test_the_memo_answers_as_a_fresh_computation(
    rounds: list[list[tuple[int, set[str], bool, str | None, bool]]],
) -> None:
    config = node_config("TieredReservation", static=False)
    memo = ContainerTargetsMemo()
    pods = {i: targets_of_pods([mixed_pod(uid_for(i), i)], config).pods[0] for i in range(6)}
    listings: dict[int, tuple[str, ...]] = {}
    for changes in rounds:
        for index, names, fresh, owner, rebuilt in changes:
            if rebuilt:
                pods[index] = targets_of_pods([mixed_pod(uid_for(index), index)], config).pods[0]
            listing = tuple(sorted(names))
            if not fresh and listings.get(index) == listing:
                listing = listings[index]
            listings[index] = listing
            ids = {} if owner is None else {RUNTIME_ID: owner}
            pod = pods[index]
            assert memo.derive(pod, listing, ids) == container_targets_for_pod(pod, listing, ids)
        memo.round_done()
