"""A config reload that reads the file while it is being written (truncated, not yet written
again) must not reject and count that torn read: editors and shell redirections truncate, then
write, and a SIGHUP or an earlier change may already have a reload pending (docs/operations.md,
"Config"). Only a file that stays invalid is rejected, once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio
import trio.testing

from memstate.core.events import ConfigRejected, Event
from memstate.node.daemon import Daemon
from memstate.node.loops.config import REJECT_QUIET_SECONDS
from tests.sim.world import (
    CONFIG_YAML,
    _settings,
    fixed_world,
    sim_adapters,
)

INVALID = CONFIG_YAML.replace("topologyManagerPolicy: none", "topologyManagerPolicy: sideways")


def _run(config_file: Path, edit: list[tuple[float, str]]) -> tuple[list[ConfigRejected], float]:
    """Start a simulated daemon, then write `edit`'s texts to the config file, each after its
    pause and followed by a wake-up (what the file watch or a SIGHUP does); return the rejections
    submitted and the reload-error counter once everything has settled."""
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world))
    rejected: list[ConfigRejected] = []
    submit = daemon.submit

    async def recording_submit(events: Sequence[Event]) -> None:
        rejected.extend(e for e in events if isinstance(e, ConfigRejected))
        await submit(events)

    daemon.submit = recording_submit  # type: ignore[method-assign]

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            for pause, text in edit:
                await trio.sleep(pause)
                config_file.write_text(text)
                daemon._config_wake.set()
            await trio.sleep(10 * REJECT_QUIET_SECONDS)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    count = daemon.metrics.registry.get_sample_value("memstate_config_reload_errors_total")
    return rejected, count or 0.0


def test_a_torn_read_is_not_rejected_when_the_writer_finishes(tmp_path: Path) -> None:
    # The reload reads the truncated (empty) file; the writer finishes 0.1 s later.
    rejected, count = _run(tmp_path / "config.yaml", [(0.0, ""), (0.1, INVALID)])
    assert count == 1
    assert len(rejected) == 1
    assert "sideways" in rejected[0].error, rejected[0].error


def test_a_file_that_stays_invalid_is_rejected_once(tmp_path: Path) -> None:
    rejected, count = _run(tmp_path / "config.yaml", [(0.0, INVALID), (0.2, INVALID)])
    assert (len(rejected), count) == (1, 1)


def test_an_empty_file_that_stays_empty_is_rejected(tmp_path: Path) -> None:
    rejected, count = _run(tmp_path / "config.yaml", [(0.0, "")])
    assert (len(rejected), count) == (1, 1)
    assert "found 0" in rejected[0].error, rejected[0].error


def test_a_torn_read_of_a_valid_edit_rejects_nothing(tmp_path: Path) -> None:
    valid = CONFIG_YAML.replace("topologyManagerPolicy: none", "topologyManagerPolicy: best-effort")
    rejected, count = _run(tmp_path / "config.yaml", [(0.0, ""), (0.1, valid)])
    assert (rejected, count) == ([], 0)
