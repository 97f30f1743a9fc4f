"""sd_notify, settings and metrics rendering.

Goal: the notifier speaks the sd_notify datagram protocol to a real AF_UNIX socket (also in the
abstract namespace), computes the watchdog interval, and is silent without $NOTIFY_SOCKET;
settings from the `memstate:` section are validated; metrics use the documented names.
Method: real sockets and the real prometheus-client exposition.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from memstate.core.errors import ConfigError
from memstate.core.state import Counters, State
from memstate.node.metrics import Metrics, Snapshot
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings, settings_from_object


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"memstate-test-{os.getpid()}"
            server.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            server.bind(address)
        server.settimeout(5)
        notifier = Notifier.from_environment(
            {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}
        )
        assert notifier.watchdog_interval_seconds == 15.0
        assert notifier.ready("3 pods")
        assert server.recv(4096) == b"READY=1\nSTATUS=3 pods"
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert server.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_notifier_without_systemd_is_silent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_interval_seconds is None
    other_pid = Notifier.from_environment({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_seconds is None  # the watchdog is someone else's


def test_settings_section() -> None:
    settings = settings_from_object(
        {"manifestDir": "/srv/pods", "podRemoval": "kill", "metricsAddress": "[::1]:9000"},
        source="c.yaml",
        base=Settings(),
    )
    assert settings.manifest_dir == Path("/srv/pods")
    assert settings.pod_removal == "kill"
    assert settings.metrics_host_port() == ("::1", 9000)
    with pytest.raises(ConfigError, match="unknown field"):
        settings_from_object({"manifestDirectory": "/x"}, source="c.yaml", base=Settings())
    with pytest.raises(ConfigError, match="host:port"):
        settings_from_object({"metricsAddress": "localhost"}, source="c.yaml", base=Settings())
    with pytest.raises(ConfigError, match="positive"):
        settings_from_object({"resyncSeconds": 0}, source="c.yaml", base=Settings())


def test_metric_names() -> None:
    metrics = Metrics()
    metrics.publish(Snapshot(last_seq=42))
    text = metrics.render().decode()
    for name in (
        "memory_manager_pinning_requests_total 0.0",
        "kubelet_memory_manager_pinning_errors_total 0.0",
        "kubelet_memory_qos_node_memory_min_bytes 0.0",
        "kubelet_memory_qos_node_memory_low_bytes 0.0",
        "memstate_last_applied_seq 42.0",
        "memstate_build_info{",
    ):
        assert name in text, name
    assert "_created" not in text


def test_cgroup_root_holding_memstate_itself_is_refused() -> None:
    from memstate.core.errors import HostError
    from memstate.node.cgroup_tree import check_not_inside

    mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"
    own = "0::/system.slice/memstate.service\n"
    # memstate's own service cgroup (Delegate=yes pointed at itself): refused, exit 69
    with pytest.raises(HostError, match=r"runs in /sys/fs/cgroup/system\.slice/memstate\.service"):
        check_not_inside(Path("/sys/fs/cgroup/system.slice/memstate.service"), own, mounts)
    with pytest.raises(HostError):  # below it: its parent (ours) cannot enable controllers
        check_not_inside(Path("/sys/fs/cgroup/system.slice/memstate.service/pods"), own, mounts)
    # the mount root, an ancestor holding no process itself, and a separate slice are fine
    check_not_inside(Path("/sys/fs/cgroup"), own, mounts)
    check_not_inside(Path("/sys/fs/cgroup/system.slice"), own, mounts)
    check_not_inside(Path("/sys/fs/cgroup/pods.slice"), own, mounts)
    # cgroup v1 only, or no information: nothing to check
    check_not_inside(Path("/sys/fs/cgroup/x"), "", mounts)
    assert HostError("x").exit_code == 69


def _help_texts(text: str) -> dict[str, str]:
    return {
        line.split(" ", 3)[2]: line.split(" ", 3)[3]
        for line in text.splitlines()
        if line.startswith("# HELP ")
    }


def test_metrics_help_stability_prefix() -> None:
    """Upstream-named series carry the kubelet's `[ALPHA] ` help prefix; memstate's own do not."""
    helps = _help_texts(Metrics().render().decode())
    upstream = [n for n in helps if n.startswith(("kubelet_", "memory_manager_"))]
    assert len(upstream) == 6, upstream
    for name in upstream:
        assert helps[name].startswith("[ALPHA] "), (name, helps[name])
    own = [n for n in helps if n.startswith("memstate_")]
    assert own
    for name in own:
        assert not helps[name].startswith("["), (name, helps[name])


def test_fidelity_pinning_counters_reset_per_process() -> None:
    """Upstream names count from this process's start; memstate_* keep the log's totals."""
    metrics = Metrics()
    metrics.start_process(Counters(pinning_requests=5, pinning_errors=2))
    metrics.publish(Snapshot(state=State(counters=Counters(pinning_requests=7, pinning_errors=2))))
    text = metrics.render().decode()
    for line in (
        "\nmemory_manager_pinning_requests_total 2.0",
        "\nkubelet_memory_manager_pinning_requests_total 2.0",
        "\nkubelet_memory_manager_pinning_errors_total 0.0",
        "\nmemstate_memory_manager_pinning_requests_total 7.0",
        "\nmemstate_memory_manager_pinning_errors_total 2.0",
    ):
        assert line in text, line


def test_nri_settings_are_off_by_default_and_validated() -> None:
    assert Settings().nri is None
    settings = settings_from_object(
        {"nri": {"socket": "/run/nri.sock", "pluginName": "memstate", "pluginIndex": "10"}},
        source="c.yaml",
        base=Settings(),
    )
    assert settings.nri is not None
    assert (settings.nri.socket, settings.nri.plugin_index) == ("/run/nri.sock", "10")
    bad = [
        ({"pluginName": "mem state"}, "$.memstate.nri.pluginName"),
        ({"pluginIndex": "5"}, "$.memstate.nri.pluginIndex"),
        ({"pluginIndex": 50}, "$.memstate.nri.pluginIndex"),  # YAML 50 is a number: quote it
        ({"socket": ""}, "$.memstate.nri.socket"),
        ({"unknownPodWaitSeconds": 2.0}, "$.memstate.nri.unknownPodWaitSeconds"),
        ({"plugin": "x"}, "$.memstate.nri"),
    ]
    for section, path in bad:
        with pytest.raises(ConfigError) as caught:
            settings_from_object({"nri": section}, source="c.yaml", base=Settings())
        assert caught.value.exit_code == 78
        assert caught.value.path.startswith(path), (section, caught.value.path)
        assert caught.value.source == "c.yaml"


def test_the_status_file_is_coalesced_and_never_left_behind(tmp_path: Path) -> None:
    """`write_status_soon` (after each round) writes at once when the last write is a second
    old, else leaves it to `status_loop`, which writes what is current at the end of the
    second: a burst of rounds costs one write per second, and the file ends up saying the
    latest (seq here). `_write_status` (before READY=1, NRI and source health) writes now."""
    import json

    import trio
    import trio.testing

    from memstate.node.adapters import Adapters
    from memstate.node.context import STATUS_INTERVAL_SECONDS, DaemonContext
    from memstate.node.loops.upkeep import status_loop

    settings = Settings(
        state_dir=tmp_path, manifest_dir=tmp_path / "m", config_file=tmp_path / "c.yaml"
    )
    context = DaemonContext(
        settings, adapters=Adapters(host_loops=True, notifier=Notifier(None, None))
    )
    status = tmp_path / "daemon-status.json"

    def seq_on_file() -> int:
        return int(json.loads(status.read_bytes())["seq"])

    written: list[int] = []
    write_file = context._write_status

    def counting() -> None:
        written.append(context.last_seq)
        write_file()

    context._write_status = counting  # type: ignore[method-assign]

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(status_loop, context)
            context.writer.last_seq = 1
            context.write_status_soon()
            assert seq_on_file() == 1  # the first write is at once
            for seq in range(2, 40):  # a burst of rounds, 0.1 s apart
                context.writer.last_seq = seq
                context.write_status_soon()
                await trio.sleep(0.1)
            await trio.sleep(STATUS_INTERVAL_SECONDS)
            assert seq_on_file() == 39  # the last one written, within the interval
            # About one write per interval (3.8 s of rounds), not one per round.
            assert 3 <= len(written) <= 6, written
            context.writer.last_seq = 40
            write_file()
            assert seq_on_file() == 40
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
