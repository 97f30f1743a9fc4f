"""The deterministic simulation of the whole daemon (tests/sim/world.py; docs/testing.md).

`MEMSTATE_SIM_SEEDS=N` runs N seeds instead of the default; `MEMSTATE_SIM_SEED=S` makes the
replay test run seed S alone (the command every failure prints).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memstate.core import reducer
from memstate.core.plan import planner
from tests.sim.world import CONFIG_YAML, SimFailure, World, simulate

SEEDS = int(os.environ.get("MEMSTATE_SIM_SEEDS", "300"))
CHUNK = 50


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "config.yaml"
    path.write_text(CONFIG_YAML)
    return path


def _chunks() -> Iterator[range]:
    for start in range(0, SEEDS, CHUNK):
        yield range(start, min(start + CHUNK, SEEDS))


@pytest.mark.parametrize("seeds", list(_chunks()), ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_simulation(seeds: range, config_file: Path) -> None:
    for seed in seeds:
        simulate(seed, config_file)  # SimFailure names the seed and the command to rerun it


def test_replay_is_deterministic(config_file: Path) -> None:
    seed = int(os.environ.get("MEMSTATE_SIM_SEED", "7"))

    def fingerprint(world: World) -> tuple[object, ...]:
        records = [(e.seq, e.ts_ns, e.event) for e in world.disk.synced]
        return tuple(world.steps), tuple(records), world.fs.counts

    first = simulate(seed, config_file)
    second = simulate(seed, config_file)
    assert fingerprint(first) == fingerprint(second)
    assert any(e.event.kind == "pod_admitted" for e in first.disk.synced)


def _first_failing_seed(config_file: Path) -> tuple[int, str] | None:
    for seed in range(SEEDS):
        try:
            simulate(seed, config_file)
        except SimFailure as failure:
            return seed, str(failure)
    return None


def test_finds_a_planted_reducer_bug(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    """The reducer forgets to reserve what it admits: the next admission takes it again."""
    monkeypatch.setattr(reducer, "reserve", lambda machine, allocation: machine)
    found = _first_failing_seed(config_file)
    assert found is not None, f"a double-allocating reducer survived {SEEDS} seeds"
    assert "rerun: MEMSTATE_SIM_SEED=" in found[1]


def test_finds_a_planted_ordering_bug(monkeypatch: pytest.MonkeyPatch, config_file: Path) -> None:
    """The planner lowers a parent before its children (top-down, without the ordering edges)."""
    emit_lower: Callable[[planner._Planner], None] = planner._Planner._emit_lower

    def top_down(self: planner._Planner) -> None:
        self.order = list(reversed(self.order))
        try:
            emit_lower(self)
        finally:
            self.order = list(reversed(self.order))

    monkeypatch.setattr(planner, "_ORDER_BOUND", frozenset())
    monkeypatch.setattr(planner._Planner, "_emit_lower", top_down)
    found = _first_failing_seed(config_file)
    assert found is not None, f"a parent lowered before its children survived {SEEDS} seeds"
    assert "below its children" in found[1] or "converge" in found[1], found[1]
