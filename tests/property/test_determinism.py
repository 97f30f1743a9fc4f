"""The state hash does not depend on the process, the hash seed or the order of readmission.

Goal: a log copied off a node replays bit-for-bit anywhere. Method: build random event
sequences (seeded), write them in the exported JSON-lines form, replay every one of them in
fresh interpreters with different PYTHONHASHSEED values, and compare the final state hashes with
the ones computed here. The replay/ corpus is included.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from memstate.core.events import (
    SCHEMA_VERSION,
    ConfigLoaded,
    DaemonRestarted,
    Envelope,
    Event,
    PodAdmissionRequested,
    PodInitCompleted,
    PodRemovalRequested,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.pod import pod_from_manifest
from memstate.core.reducer import step
from memstate.core.scenario import read_scenario, write_scenario
from memstate.core.state import State, state_hash
from memstate.history.replay import replay_state
from tests.factories import static_config, topology

ROOT = Path(__file__).resolve().parents[2]

REPLAY_SNIPPET = """
import json, sys
from pathlib import Path
from memstate.core.scenario import read_scenario
from memstate.core.state import state_hash
from memstate.history.replay import replay_state
result = {}
for path in sorted(Path(sys.argv[1]).glob("*.jsonl")):
    result[path.name] = state_hash(replay_state(read_scenario(path.read_text())))
print(json.dumps(result))
"""


def random_log(seed: int) -> list[Envelope]:
    """A seeded random sequence with recorded decisions (as the daemon would write it)."""
    rng = random.Random(seed)
    nodes = rng.randint(1, 4)
    topo = topology(*[rng.choice(["2Gi", "4Gi"]) for _ in range(nodes)], hugepages={"2Mi": 128})
    config = static_config(
        ["256Mi"] * nodes,
        topology_policy=rng.choice(["none", "best-effort", "restricted", "single-numa-node"]),
        scope=rng.choice(["container", "pod"]),
        memoryReservationPolicy=rng.choice(["None", "TieredReservation"]),
    )
    events: list[Event] = [TopologyObserved(topology=topo), ConfigLoaded(config=config)]
    live: list[str] = []
    for index in range(40):
        roll = rng.random()
        if roll < 0.55 or not live:
            uid = f"p{seed}-{index}"
            containers: list[dict[str, Any]] = []
            for c in range(rng.randint(1, 2)):
                memory = rng.choice(["128Mi", "512Mi", "1Gi", "1536Mi"])
                limits: dict[str, Any] = {"memory": memory, "cpu": "1"}
                if rng.random() < 0.3:
                    limits["hugepages-2Mi"] = "32Mi"
                containers.append({"name": f"c{c}", "resources": {"limits": limits}})
            spec: dict[str, Any] = {"containers": containers}
            if rng.random() < 0.3:
                spec["initContainers"] = [
                    {"name": "init", "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}
                ]
            manifest = {"metadata": {"name": uid, "uid": uid}, "spec": spec}
            events.append(PodAdmissionRequested(pod=pod_from_manifest(manifest)))
            live.append(uid)
        elif roll < 0.7:
            events.append(PodRemovalRequested(uid=live.pop(rng.randrange(len(live)))))
        elif roll < 0.8:
            events.append(PodInitCompleted(uid=rng.choice(live)))
        else:
            events.append(DaemonRestarted())
            state = State()
            for event in events:
                state = step(state, event).state
            waiting = sorted(state.pods)
            rng.shuffle(waiting)
            events.extend(PodAdmissionRequested(pod=state.pods[u].pod) for u in waiting)
            events.append(ReadmissionCompleted())
    envelopes: list[Envelope] = []
    state = State()
    for event in events:
        transition = step(state, event)
        state = transition.state
        seq = len(envelopes) + 1
        envelopes.append(
            Envelope(
                seq=seq,
                ts_ns=seq,
                schema_v=SCHEMA_VERSION,
                event=event,
                decisions=len(transition.decisions),
            )
        )
        envelopes.extend(
            Envelope(seq=seq + i, ts_ns=seq, schema_v=SCHEMA_VERSION, event=d)
            for i, d in enumerate(transition.decisions, start=1)
        )
    return envelopes


def test_hash_is_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    expected: dict[str, str] = {}
    for seed in range(6):
        envelopes = random_log(seed)
        name = f"random-{seed}.jsonl"
        text = write_scenario(envelopes)
        (tmp_path / name).write_text(text)
        # The export form round-trips exactly.
        assert read_scenario(text) == envelopes
        expected[name] = state_hash(replay_state(envelopes))
    for scenario in sorted((ROOT / "replay").glob("*.jsonl")):
        (tmp_path / scenario.name).write_text(scenario.read_text())
        expected[scenario.name] = state_hash(replay_state(read_scenario(scenario.read_text())))
    assert len(set(expected.values())) == len(expected)  # the scenarios really differ
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", REPLAY_SNIPPET, str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        assert json.loads(result.stdout) == expected, f"PYTHONHASHSEED={hash_seed}"
