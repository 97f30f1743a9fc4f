"""The removals fold (`memstate.core.removals`) against an independent model, and its recovery.

Goal: for any history — admissions of pods of every QoS class (a UID reused with another class
moves its cgroup), removals, restarts with partial readmission, a change of cgroup driver, and
`pod_cgroup_removed` notes — the fold's pending set equals the obvious definition: every pod
cgroup path any state implied, minus those the current state implies, minus those a note
declared gone after they were last retired. And start-up recovery (with checkpoints taken at
random moments) rebuilds exactly the set the writer folded. Method: hypothesis drives the real
reducer; the model tracks paths with plain sets; the log is written through the real `EventLog`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.core.config import config_from_object
from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    Event,
    PodAdmissionRequested,
    PodCgroupRemoved,
    PodRemovalRequested,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.reducer import apply, step
from memstate.core.removals import NO_REMOVALS, fold_removals, pod_cgroup_paths
from memstate.core.state import State
from memstate.store.checkpoint import write_checkpoint
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog
from tests.factories import topology
from tests.property.strategies import pods

UIDS = ["u1", "u2", "u3", "u4"]


def config_for(driver: str) -> ConfigLoaded:
    return ConfigLoaded(
        config=config_from_object(
            {
                "memoryManagerPolicy": "None",
                "cgroupDriver": driver,
                "systemReserved": {"memory": "1Gi"},
                "evictionHard": {"memory.available": "0"},
            }
        )
    )


@st.composite
def histories(draw: st.DrawFn) -> list[Event | str]:
    """Inputs, plus the word "note" where the reconciler reports a pending path gone and
    "checkpoint" where the writer takes a checkpoint."""
    events: list[Event | str] = [
        TopologyObserved(topology=topology("64Gi")),
        config_for("cgroupfs"),
    ]
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(
            st.sampled_from(
                ["admit", "admit", "admit", "remove", "restart", "note", "note", "driver", "ckpt"]
            )
        )
        if kind == "admit":
            uid = draw(st.sampled_from(UIDS))
            events.append(PodAdmissionRequested(pod=draw(pods(uid, hugepages=False))))
        elif kind == "remove":
            events.append(PodRemovalRequested(uid=draw(st.sampled_from(UIDS))))
        elif kind == "restart":
            events.append(DaemonRestarted())
            for uid in draw(st.lists(st.sampled_from(UIDS), unique=True)):
                events.append(PodAdmissionRequested(pod=draw(pods(uid, hugepages=False))))
            events.append(ReadmissionCompleted())
        elif kind == "driver":
            events.append(config_for(draw(st.sampled_from(["cgroupfs", "systemd"]))))
        elif kind == "note":
            events.append("note")
        else:
            events.append("checkpoint")
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), data=st.data())
def test_the_fold_is_every_path_ever_implied_minus_current_and_noted(
    history: list[Event | str], data: st.DataObject
) -> None:
    state = State()
    pending = NO_REMOVALS
    ever: dict[str, str] = {}  # the model: every path implied since it was last noted gone
    with tempfile.TemporaryDirectory() as directory:
        state_dir = Path(directory)
        log = EventLog.open(state_dir, fsync=False)
        for item in history:
            before = state
            if item == "checkpoint":
                if log.last_seq:
                    write_checkpoint(
                        state_dir,
                        state,
                        seq=log.last_seq,
                        chain_crc=log.chain_crc,
                        fsync=False,
                        removals=pending,
                    )
                continue
            if item == "note":
                if not pending.paths:
                    continue
                path = data.draw(st.sampled_from(sorted(pending.paths)))
                note = PodCgroupRemoved(path=path, uid=pending.paths[path])
                state = apply(state, note)
                pending = fold_removals(pending, before, [note], state)
                log.append([(note, None)], ts_ns=0)
                ever.pop(path)
                continue
            assert isinstance(item, Event)
            transition = step(state, item)
            state = transition.state
            pending = fold_removals(pending, before, [item, *transition.decisions], state)
            log.append(
                [(item, len(transition.decisions)), *((d, None) for d in transition.decisions)],
                ts_ns=0,
            )
            current = pod_cgroup_paths(state)
            ever.update(current)
            expected = {p: u for p, u in ever.items() if p not in current}
            assert pending.paths == expected
        log.close()
        recovered = recover_state(state_dir)
        assert recovered.state == state
        assert recovered.removals.paths == pending.paths
        # From seq 1 the fold is clean from the start: the folder's change journal path.
        from_start = recover_state(state_dir, use_checkpoints=False)
        assert from_start.state == state
        assert from_start.removals.paths == pending.paths
