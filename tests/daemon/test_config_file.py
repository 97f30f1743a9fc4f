"""The config file is read once per load: settings, config and the digest that makes a repeated
reload a no-op all come from the same bytes (memstate.node.loops.config).

Method: a real config file on disk; every read of it (`Path.open`, `Path.read_bytes`,
`Path.read_text`) is recorded while the real read happens. Before the fix, start-up read the file
twice (the document, then the bytes for the digest), so an edit between the two reads was taken
as already loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memstate.core.events import PodAdmitted
from memstate.node.context import DaemonContext
from memstate.node.loops.config import config_digest, load_config_at_startup
from memstate.node.settings import Settings
from tests.daemon.harness import Node, pod_manifest
from tests.factories import topology

CONFIG_YAML = """\
memoryManagerPolicy: Static
topologyManagerPolicy: none
memoryReservationPolicy: TieredReservation
systemReserved: {memory: 2Gi}
evictionHard: {memory.available: "0"}
reservedMemory:
- {numaNode: 0, limits: {memory: 1Gi}}
- {numaNode: 1, limits: {memory: 1Gi}}
memstate: {metricsAddress: "off", rescanSeconds: 7}
"""


def record_reads(monkeypatch: pytest.MonkeyPatch, watched: Path) -> list[str]:
    """Names of the Path methods that read `watched`, in order (the reads still happen)."""
    reads: list[str] = []
    for name in ("open", "read_bytes", "read_text"):
        original: Callable[..., Any] = getattr(Path, name)

        def counting(self: Path, *args: Any, _name: str = name, _orig: Any = original) -> Any:
            if self == watched:
                reads.append(_name)
            return _orig(self, *args)

        monkeypatch.setattr(Path, name, counting)
    return reads


def test_start_up_reads_the_config_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    daemon = DaemonContext(
        Settings(
            state_dir=tmp_path / "state",
            manifest_dir=tmp_path / "manifests",
            config_file=config_file,
            metrics_address="off",
        )
    )
    reads = record_reads(monkeypatch, config_file)
    config = load_config_at_startup(daemon, topology("8Gi", "8Gi"))
    assert reads == ["open"]
    monkeypatch.undo()
    assert daemon._config_digest == config_digest(config_file.read_bytes())
    assert daemon.settings.rescan_seconds == 7  # the memstate: section, from the same read
    assert config.memory_manager_policy == "Static"


def test_run_takes_every_location_from_the_config_section_under_flags_and_environment(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """`memstate run` with a config file whose memstate: section names the manifest directory,
    the metrics address and the state directory, and `$MEMSTATE_STATE_DIR` set: the section's
    values are the ones in force (manifests admitted from its manifestDir, metrics served on its
    metricsAddress) except where the environment wins (docs/cli.md): the log and the daemon's
    status file are in the environment's state directory, and `memstate status` with that
    environment finds the running daemon and reports the section's values. Before the fix the
    start-up load put the section's stateDir back over the environment's, so the status file
    went to a directory the log is not in."""
    node = make_node()
    env_state = tmp_path / "env-state"
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi"))
    node.start(env={"MEMSTATE_STATE_DIR": str(env_state)})
    node.state_dir = env_state  # where the harness reads the log
    node.wait_for(
        lambda records: any(
            isinstance(r.event, PodAdmitted) and r.event.uid == "pod-a" for r in records
        )
    )
    assert node.metric("memstate_pods") is not None  # the section's metricsAddress
    assert not (node.root / "state").exists()  # the section's stateDir: the environment won
    status_file = env_state / "daemon-status.json"
    assert status_file.exists()
    result = node.cli(
        "status",
        "--config",
        str(node.config_file),
        "-o",
        "json",
        env={"MEMSTATE_STATE_DIR": str(env_state)},
    )
    assert result.returncode == 0, result.stderr
    daemon = json.loads(result.stdout)["daemon"]
    assert daemon is not None and daemon["running"], result.stdout
    assert daemon["manifest_dir"] == str(node.manifest_dir)
    assert daemon["metrics_address"] == f"127.0.0.1:{node.metrics_port}"  # bound, not :0
    assert node.metrics_port > 0
    assert node.terminate() == 0


@pytest.mark.parametrize("edited", [True, False])
def test_an_edit_before_the_config_watch_is_in_place_is_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edited: bool
) -> None:
    """The config loop starts after start-up read the file; an edit made in between is never
    reported by the watch, which is only then set up. The loop compares the file once the watch
    is in place and reloads if it changed (no SIGHUP needed), and not if it did not (no
    "unchanged" reload at every start). Fails without that comparison: no reload comes."""
    import trio

    from memstate.node.adapters import Adapters
    from memstate.node.loops import config as config_loop_module
    from memstate.node.sdnotify import Notifier

    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    daemon = DaemonContext(
        Settings(state_dir=tmp_path / "state", manifest_dir=tmp_path, config_file=config_file),
        adapters=Adapters(host_loops=True, notifier=Notifier(None, None)),
    )
    daemon._config_digest = config_digest(config_file.read_bytes())  # what start-up loaded
    if edited:
        config_file.write_text(CONFIG_YAML.replace("rescanSeconds: 7", "rescanSeconds: 9"))
    reloads: list[str] = []

    async def recording(context: DaemonContext) -> None:
        reloads.append(config_digest(config_file.read_bytes()))

    monkeypatch.setattr(config_loop_module, "reload_config", recording)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(config_loop_module.config_loop, daemon)
            # A hang guard when a reload is expected; otherwise long enough for a wrong one.
            with trio.move_on_after(5.0 if edited else 0.5):
                while not reloads:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert reloads == ([config_digest(config_file.read_bytes())] if edited else [])
