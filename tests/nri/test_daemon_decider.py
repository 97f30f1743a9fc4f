"""The daemon's NRI decider (memstate.node.nri_decider) on real core decisions.

Goal: an answer only ever comes from a committed state (a pod whose decision is committed during
the wait is answered with it, woken by the commit); a pod never decided is let through unchanged
after the configured wait, with the sources nudged; refusals carry the upstream reason; the
look-up tables are rebuilt once per published state, not per request.
Method: the published (state, targets) pair is a variable the test swaps, as the daemon's writer
does after each fsync; trio's MockClock drives the waits.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from memstate.core.events import PodAdmissionRequested
from memstate.core.qos import node_targets
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.targets import NodeTargets
from memstate.node.nri_decider import DaemonNriDecider, PodLookup
from memstate.nri.adapter import adjustment_for
from memstate.nri.decider import ContainerInfo, Refusal, ResourceAdjustment, SandboxInfo
from tests.factories import container, pod_of
from tests.nri.scenario import PINNED, REJECTED, UNKNOWN, node_state

LATE = "55555555-5555-5555-5555-555555555555"


def _targets(state: State) -> NodeTargets:
    assert state.config is not None and state.topology is not None
    pods = [(r.pod, r.allocation) for r in state.pods.values()]
    return node_targets(pods, state.config, state.topology)


def _lookup(targets: NodeTargets) -> PodLookup:
    by_uid = {pod.uid: pod for pod in targets.pods}
    return by_uid.get


class Published:
    """What the daemon publishes after each commit, and the nudges the decider asked for."""

    def __init__(self, state: State) -> None:
        self.pair = (state, _targets(state))
        self.nudges = 0
        self.decider: DaemonNriDecider | None = None

    def current(self) -> tuple[State, PodLookup | None]:
        state, targets = self.pair
        return state, _lookup(targets)

    def nudge(self) -> None:
        self.nudges += 1

    def commit(self, state: State) -> None:
        self.pair = (state, _targets(state))
        if self.decider is not None:
            self.decider.state_changed()  # as Daemon._note_effects does


def _pod(uid: str) -> SandboxInfo:
    return SandboxInfo(f"sb-{uid[:4]}", uid, "p", "default", "kubepods-pod.slice", "Guaranteed")


def _container(uid: str, name: str) -> ContainerInfo:
    return ContainerInfo(f"c-{uid[:4]}-{name}", f"sb-{uid[:4]}", uid, name, 1)


def _decider(published: Published, wait: float = 1.0) -> DaemonNriDecider:
    published.decider = DaemonNriDecider(
        published.current, published.nudge, unknown_pod_wait_seconds=wait, metrics=None
    )
    return published.decider


def _wired_decider(
    mode: str, state: State, targets: NodeTargets | None, published_pod: PodLookup
) -> tuple[Any, DaemonNriDecider]:
    """The decider as the daemon wires it (`nri_service_for`), beside the kubelet in `mode`,
    over a stand-in daemon holding `state`, `targets` and the targets' look-up: the stand-in
    (a test moves its state and targets on) and the decider."""
    from types import SimpleNamespace

    from memstate.node.nri_decider import nri_service_for
    from memstate.node.settings import NriSettings, Settings

    daemon = SimpleNamespace(
        settings=Settings(nri=NriSettings(), mode=mode, ownership="beside-kubelet"),  # type: ignore[arg-type]
        state=state,
        targets=targets,
        published_pod=published_pod,
        metrics=None,
        sources=[],
        nri_containers_changed=lambda ids, pods: None,
    )
    service = nri_service_for(daemon)  # type: ignore[arg-type]
    assert service is not None
    return daemon, service.decider


def test_known_pods_are_answered_from_the_committed_state() -> None:
    published = Published(node_state())
    decider = _decider(published)
    state, targets = published.pair
    assert targets is not None and state.config is not None

    async def main() -> None:
        for name in ("app", "sidecar"):
            got = await decider.create_container(_pod(PINNED), _container(PINNED, name))
            assert got == adjustment_for(targets.pod(PINNED), name, state.config)
            assert isinstance(got, ResourceAdjustment) and got.cpuset_mems
        refused = await decider.run_pod_sandbox(_pod(REJECTED))
        rejection = next(r for r in state.rejections.values() if r.uid == REJECTED)
        assert refused == Refusal(rejection.reason, rejection.message)
        assert await decider.create_container(_pod(REJECTED), _container(REJECTED, "big")) == (
            refused
        )

    trio.run(main)
    assert published.nudges == 0  # nothing was unknown: no source was asked


def test_a_pod_committed_during_the_wait_is_answered_after_its_commit() -> None:
    published = Published(node_state())
    decider = _decider(published, wait=1.5)
    late_pod = pod_of(LATE, [container("app", "1Gi")])
    answered_at: list[float] = []

    async def main() -> None:
        async def answer() -> None:
            got = await decider.create_container(_pod(LATE), _container(LATE, "app"))
            answered_at.append(trio.current_time())
            state, targets = published.pair
            assert targets is not None and state.config is not None
            assert got == adjustment_for(targets.pod(LATE), "app", state.config)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            await trio.sleep(0.4013)  # off any timer grid a poll might use
            assert not answered_at  # no decision yet: the request waits
            assert published.nudges == 1  # and asked the sources to look now
            state = step(published.pair[0], PodAdmissionRequested(pod=late_pod)).state
            published.commit(state)  # what the writer does after the fsync
            committed_at = trio.current_time()
        # Woken by the commit itself: the answer leaves at the commit's instant, not on a timer.
        assert answered_at == [committed_at]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_unknown_pod_is_let_through_unchanged_after_the_wait() -> None:
    published = Published(node_state())
    decider = _decider(published, wait=0.7)

    async def main() -> None:
        started = trio.current_time()
        got = await decider.create_container(_pod(UNKNOWN), _container(UNKNOWN, "x"))
        assert got == ResourceAdjustment()
        assert trio.current_time() - started >= 0.7
        assert await decider.run_pod_sandbox(_pod(UNKNOWN)) is None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert published.nudges == 2


def test_synchronize_and_update_reapply_and_tables_are_built_once_per_state() -> None:
    published = Published(node_state())
    decider = _decider(published)
    containers = [_container(PINNED, "sidecar"), _container(PINNED, "app")]

    async def main() -> None:
        updates = await decider.synchronize([_pod(PINNED)], containers)
        assert {u.container_id for u in updates} == {c.id for c in containers}
        again = await decider.update_container(_pod(PINNED), containers[1])
        assert [u.adjustment for u in again] == [
            u.adjustment for u in updates if u.container_id == containers[1].id
        ]
        first = decider.snapshot()
        for _ in range(50):
            await decider.create_container(_pod(PINNED), containers[0])
        assert decider.snapshot() is first  # same published state: same tables
        published.commit(
            step(
                published.pair[0],
                PodAdmissionRequested(pod=pod_of(LATE, [container("app", "1Gi")])),
            ).state
        )
        assert decider.snapshot() is not first

    trio.run(main)


def test_in_qos_mode_the_nri_answer_carries_no_cpuset_mems() -> None:
    """`mode: qos` never pins: not through the reconciler, not through the runtime either."""
    state = node_state()
    targets = _targets(state)
    answers: dict[str, object] = {}
    for mode in ("numa", "qos"):
        _, decider = _wired_decider(mode, state, targets, _lookup(targets))

        async def main(decider: DaemonNriDecider = decider) -> object:
            return await decider.create_container(_pod(PINNED), _container(PINNED, "app"))

        answers[mode] = trio.run(main)
    numa, qos = answers["numa"], answers["qos"]
    assert isinstance(numa, ResourceAdjustment) and numa.cpuset_mems
    assert isinstance(qos, ResourceAdjustment) and qos.cpuset_mems == ""
    assert qos.unified == numa.unified and qos.unified  # the Memory QoS values all the same


def test_every_container_the_runtime_tells_of_is_handed_on_and_forgotten_with_it() -> None:
    """The decider's known containers reach the daemon (`on_containers`: the pods whose set
    changed) from every NRI event that teaches or removes one, for decided and unknown pods."""
    published = Published(node_state())
    told: list[frozenset[str]] = []
    decider = DaemonNriDecider(
        published.current,
        published.nudge,
        unknown_pod_wait_seconds=0.0,
        metrics=None,
        on_containers=told.append,
    )

    async def main() -> None:
        app, side = _container(PINNED, "app"), _container(PINNED, "sidecar")
        await decider.synchronize([_pod(PINNED)], [app])
        assert told == [frozenset({PINNED})]
        await decider.synchronize([_pod(PINNED)], [app])  # nothing new: nothing told
        assert len(told) == 1
        await decider.create_container(_pod(PINNED), side)
        await decider.create_container(_pod(UNKNOWN), _container(UNKNOWN, "x"))  # fail-open
        await decider.update_container(_pod(PINNED), side)  # known already
        assert told[1:] == [frozenset({PINNED}), frozenset({UNKNOWN})]
        assert decider.containers_by_pod() == {
            PINNED: {app.id: "app", side.id: "sidecar"},
            UNKNOWN: {f"c-{UNKNOWN[:4]}-x": "x"},
        }
        await decider.remove_container(_pod(PINNED), side)
        await decider.remove_pod_sandbox(_pod(UNKNOWN))
        await decider.remove_pod_sandbox(_pod(UNKNOWN))  # gone already: nothing told
        assert told[3:] == [frozenset({PINNED}), frozenset({UNKNOWN})]
        assert decider.containers_by_pod() == {PINNED: {app.id: "app"}}
        await decider.synchronize([], [])  # the runtime restarted with nothing running
        assert told[-1] == frozenset({PINNED}) and decider.containers_by_pod() == {}

    trio.run(main)


def test_the_look_ups_answer_what_the_whole_tables_did() -> None:
    """Per UID, what the decider answers from (`snapshot().admitted(uid)`, `.rejected(uid)`)
    is what the tables of every pod it built per commit before said: the pods of
    `profile_targets(targets)` by UID, the rejections with a UID by UID — for every admitted,
    rejected and unknown UID, in both write profiles, over a run of admissions (some rejected:
    too big), with the daemon's wiring (`nri_service_for`, the tracker's look-up)."""
    import random

    from memstate.core.plan.profile import WriteProfile, profile_targets
    from memstate.core.state_targets import TargetsTracker

    rng = random.Random(7)
    for mode in ("numa", "qos"):
        profile = WriteProfile(ownership="beside-kubelet", mode=mode)  # type: ignore[arg-type]
        tracker = TargetsTracker()
        state = node_state()
        targets = tracker.update(state)
        daemon, decider = _wired_decider(mode, state, targets, tracker.pod)
        uids = [PINNED, REJECTED, UNKNOWN, ""]
        for index in range(25):
            uid = f"{index:08d}-0000-0000-0000-000000000000"
            uids.append(uid)
            size = rng.choice(["256Mi", "1Gi", "3Gi", "900Gi"])  # 900Gi never fits
            transition = step(state, PodAdmissionRequested(pod=pod_of(uid, [container("a", size)])))
            state = transition.state
            targets = tracker.update(state, transition.decisions)
            daemon.state, daemon.targets = state, targets
            decider.state_changed()
            assert targets is not None
            written = {pod.uid: pod for pod in profile_targets(targets, profile).pods}
            rejected = {r.uid: r for r in state.rejections.values() if r.uid}
            snap = decider.snapshot()
            for known in uids:
                assert snap.admitted(known) == written.get(known), (mode, known)
                assert snap.rejected(known) == rejected.get(known), (mode, known)
        assert any(known in rejected for known in uids[4:])  # some were rejected
        assert sum(known in written for known in uids[4:]) > 5
