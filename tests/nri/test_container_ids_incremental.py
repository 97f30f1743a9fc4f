"""The runtime container ids, kept pod by pod, against their whole computation.

The NRI decider keeps its containers by pod (`containers_by_pod`) and the daemon merges NRI's ids
with the pod sources' for the pods a change names (`DaemonContext._converge_containers`), instead
of a pass over every container per NRI event. Random runs of every event that changes them are
compared, after each step, with the computation from scratch they replace; the dicts handed out
earlier never change afterwards (the reconciler reads them from a worker thread), and a pod whose
ids did not change keeps its dict object (the reconciler's container index compares by identity).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from memstate.core.state import State
from memstate.node.adapters import Adapters
from memstate.node.context import DaemonContext
from memstate.node.nri_decider import DaemonNriDecider
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from memstate.nri.decider import ContainerInfo, SandboxInfo

UIDS = [f"pod-{index}" for index in range(6)]


def _by_pod_from_scratch(containers: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    by_pod: dict[str, dict[str, str]] = {}
    for container_id, (uid, name) in containers.items():
        by_pod.setdefault(uid, {})[container_id] = name
    return by_pod


def _merge_from_scratch(
    nri: dict[str, dict[str, str]], sources: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    if not nri:
        return sources
    ids = {uid: dict(known) for uid, known in nri.items()}
    for uid, known in sources.items():
        ids.setdefault(uid, {}).update(known)
    return ids


def _sandbox(uid: str) -> SandboxInfo:
    return SandboxInfo(f"sb-{uid}", uid, "p", "default", "kubepods", "Burstable")


def _container(rng: random.Random) -> ContainerInfo:
    uid = rng.choice(UIDS)
    number = rng.randrange(4)
    # Now and then an id the runtime reuses under another pod or name.
    name = rng.choice(["app", "side", "init"])
    return ContainerInfo(f"c{number}-{rng.choice(UIDS[:2])}", f"sb-{uid}", uid, name, 1)


@pytest.mark.parametrize("seed", range(4))
def test_containers_by_pod_is_the_grouping_of_every_container(seed: int) -> None:
    rng = random.Random(seed)
    decider = DaemonNriDecider(
        lambda: (State(), None),
        lambda: None,
        unknown_pod_wait_seconds=0.0,
    )
    handed: list[tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]] = []

    async def run() -> None:
        for _ in range(300):
            roll = rng.random()
            if roll < 0.05:
                listed = [_container(rng) for _ in range(rng.randrange(6))]
                unique = {c.id: c for c in listed}
                await decider.synchronize([], list(unique.values()))
            elif roll < 0.45:
                container = _container(rng)
                decider._learn(container.id, container.pod_uid, container.name)
            elif roll < 0.6:
                container = _container(rng)
                await decider.update_container(_sandbox(container.pod_uid), container)
            elif roll < 0.85:
                container = _container(rng)
                await decider.remove_container(_sandbox(container.pod_uid), container)
            else:
                await decider.remove_pod_sandbox(_sandbox(rng.choice(UIDS)))
            got = decider.containers_by_pod()
            assert got == _by_pod_from_scratch(decider.containers)
            handed.append((got, copy.deepcopy(got)))
            for given, as_given in handed:
                assert given == as_given  # never changed after it was handed out

    trio.run(run)


@pytest.mark.parametrize("seed", range(4))
def test_the_merge_for_the_reconciler_is_the_whole_merge(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    settings = Settings(
        state_dir=tmp_path, manifest_dir=tmp_path / "m", config_file=tmp_path / "c.yaml"
    )
    context = DaemonContext(settings, adapters=Adapters(notifier=Notifier(None, None)))
    reconciler = SimpleNamespace(container_ids={})
    context.reconciler = reconciler
    context._scope = None
    nri: dict[str, dict[str, str]] = {}
    sources: dict[str, dict[str, str]] = {}
    before: dict[str, dict[str, str]] = {}
    had_nri = False
    kept = 0
    for _ in range(400):
        side = rng.choice(["nri", "sources"])
        current = dict(nri if side == "nri" else sources)
        changed: set[str] = set()
        for uid in rng.sample(UIDS, rng.choice([1, 1, 2, 3])):
            if rng.random() < 0.3:
                if current.pop(uid, None) is not None:
                    changed.add(uid)
            else:
                ids = {f"c{rng.randrange(3)}": rng.choice(["app", "side"]) for _ in range(2)}
                if current.get(uid) != ids:
                    current[uid] = ids
                    changed.add(uid)
        if rng.random() < 0.05 and current:  # everything gone at once
            changed |= set(current)
            current = {}
        if side == "nri":
            nri = current
            context.nri_containers_changed(nri, frozenset(changed))
        else:
            sources = current
            context._container_ids_changed(sources, frozenset(changed))
        got = reconciler.container_ids
        assert got == _merge_from_scratch(nri, sources)
        if nri and had_nri:
            for uid, known in got.items():
                if uid not in changed and uid in before:
                    assert known is before[uid]  # an unchanged pod keeps its dict
                    kept += 1
        before, had_nri = got, bool(nri)
    assert kept > 100
