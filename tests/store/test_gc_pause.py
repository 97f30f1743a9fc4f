"""`gc_paused` switches the cyclic collector off for its body and restores what it found.

Goal: folding and re-deriving run with the collector off (they make no cycles) without
leaving it off for the rest of the process, nor switching it on for a caller that had it off.
Method: the collector's state inside and after the body, with it on and off before, on an
exception, and nested; and `recover_state`/`replay_log` leave it as they found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from memstate.store.gc_pause import gc_paused


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


@pytest.mark.usefixtures("collector_on")
def test_off_inside_on_after_even_on_an_error() -> None:
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "a nested pause switched the collector back on"
    assert gc.isenabled()
    with pytest.raises(KeyError), gc_paused():
        raise KeyError("x")
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_on")
def test_a_caller_that_switched_it_off_keeps_it_off() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()


@pytest.mark.usefixtures("collector_on")
def test_recovery_and_replay_leave_the_collector_on(tmp_path: object) -> None:
    from pathlib import Path

    from benchmarks.realistic_log import build
    from memstate.history.replay import open_source, replay_log
    from memstate.store.recovery import recover_state

    state_dir = Path(str(tmp_path)) / "state"
    build(state_dir, numa_nodes=2, records=300, live_pods=10, restart_every=100, seed=3)
    seen: list[bool] = []
    recover_state(state_dir)
    assert gc.isenabled()
    report = replay_log(open_source(state_dir), on_transition=lambda t: seen.append(gc.isenabled()))
    assert report.divergence is None and seen and not any(seen)
    assert gc.isenabled()
