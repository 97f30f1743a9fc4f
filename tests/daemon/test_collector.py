"""The young generation's threshold while the daemon runs (memstate.node.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import yaml

from memstate.host.sim import SimCgroupFS
from memstate.node.adapters import Adapters
from memstate.node.collector import YOUNG_THRESHOLD, young_generation
from memstate.node.daemon import Daemon
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from tests.factories import topology


@pytest.fixture
def thresholds() -> Iterator[None]:
    """Whatever a test sets, the process gets CPython's thresholds back."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("thresholds")
def test_the_young_threshold_is_raised_for_the_body_and_put_back() -> None:
    with young_generation(5000):
        assert gc.get_threshold() == (5000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)
    with pytest.raises(RuntimeError), young_generation(5000):
        raise RuntimeError("the body failed")
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("thresholds")
def test_a_higher_or_disabled_threshold_and_a_change_meanwhile_are_left_alone() -> None:
    gc.set_threshold(9000, 10, 10)
    with young_generation(5000):
        assert gc.get_threshold() == (9000, 10, 10)
    assert gc.get_threshold() == (9000, 10, 10)
    gc.set_threshold(0, 10, 10)
    with young_generation(5000):
        assert gc.get_threshold() == (0, 10, 10)
    gc.set_threshold(700, 10, 10)
    with young_generation(5000):
        gc.set_threshold(1000, 5, 5)  # someone else's choice, made while the body ran
    assert gc.get_threshold() == (1000, 5, 5)


@pytest.mark.usefixtures("thresholds")
def test_the_daemon_runs_with_the_raised_threshold(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "memoryManagerPolicy": "None",
                "memstate": {"metricsAddress": "off", "cgroupTree": "/"},
            }
        )
    )
    settings = Settings(
        state_dir=tmp_path / "state",
        manifest_dir=manifests,
        config_file=config_file,
        metrics_address="off",
        pod_sources=("manifests",),
    )
    adapters = Adapters(
        cgroup_fs=SimCgroupFS(page_size_bytes=4096, online_nodes="0"),
        topology=topology("4Gi"),
        sources=[],
        notifier=Notifier(None, None),
        host_loops=False,
    )
    daemon = Daemon(settings, adapters=adapters)
    seen: list[tuple[int, int, int]] = []

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            with trio.fail_after(30):
                await daemon.ready.wait()
            seen.append(gc.get_threshold())
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert seen == [(YOUNG_THRESHOLD, 10, 10)]
    assert gc.get_threshold() == (700, 10, 10)
