"""NRI messages: the checked-in generated code is current, field numbers match the spec (checked
with the independent encoder), and the core mapping to adjustments."""

from __future__ import annotations

import filecmp
import itertools
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from memstate.nri import messages
from memstate.nri.adapter import TargetsDecider, adjustment_for
from memstate.nri.decider import ContainerUpdate, ResourceAdjustment
from memstate.nri.errors import PluginConfigError
from memstate.nri.plugin import NriPlugin, PluginSettings
from memstate.nri.proto import nri_pb2 as pb
from tests.nri import wire
from tests.nri.scenario import BURSTABLE, PINNED, node_decisions

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "memstate" / "nri" / "proto"


def test_generated_code_is_current() -> None:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "gen_nri_proto", ROOT / "scripts/gen_nri_proto.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_nri_proto"] = module
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as out:
        module.generate(Path(out))
        names = sorted(p.name for p in Path(out).iterdir())
        assert names == ["nri_pb2.py", "nri_pb2.pyi", "ttrpc_pb2.py", "ttrpc_pb2.pyi"]
        _match, mismatch, errors = filecmp.cmpfiles(out, PROTO, names, shallow=False)
        assert mismatch == [] and errors == [], (
            f"stale generated code {mismatch or errors}: run scripts/gen_nri_proto.py"
        )


def test_field_numbers_agree_with_the_independent_encoder() -> None:
    pod = pb.PodSandbox()
    pod.ParseFromString(wire.pod_sandbox("sb", "uid-1", "name", "kubepods-burstable-x.slice"))
    assert (pod.id, pod.uid, pod.name, pod.linux.cgroup_parent) == (
        "sb",
        "uid-1",
        "name",
        "kubepods-burstable-x.slice",
    )
    container = pb.Container()
    container.ParseFromString(
        wire.container("c", "sb", "uid-1", "app", memory_limit=5, unified={"memory.min": "1"})
    )
    info = messages.container_info(container)
    assert (info.id, info.sandbox_id, info.pod_uid, info.name, info.memory_limit) == (
        "c",
        "sb",
        "uid-1",
        "app",
        5,
    )
    assert info.unified == {"memory.min": "1"}
    assert wire.decode(pb.ConfigureResponse(events=0x68F).SerializeToString()) == {2: [0x68F]}
    adjusted = messages.container_adjustment(ResourceAdjustment("0-1", {"memory.high": "9"}))
    payload = pb.CreateContainerResponse(adjust=adjusted).SerializeToString()
    assert wire.create_response_adjustment(payload) == wire.Adjusted("0-1", {"memory.high": "9"})
    update = messages.container_updates([ContainerUpdate("c", ResourceAdjustment("1"))])
    payload = pb.UpdateContainerResponse(update=update).SerializeToString()
    assert wire.updates_of(payload) == {"c": wire.Adjusted("1", {})}


def test_a_zero_limit_is_present_and_an_absent_one_is_none() -> None:
    container = pb.Container()
    container.ParseFromString(wire.container("c", "sb", "u", "n", memory_limit=0))
    assert messages.container_info(container).memory_limit == 0
    container.ParseFromString(wire.container("c", "sb", "u", "n"))
    assert messages.container_info(container).memory_limit is None


def test_requested_resources_replace_the_containers_own() -> None:
    container = pb.Container()
    container.ParseFromString(wire.container("c", "sb", "u", "n", memory_limit=5))
    requested = pb.LinuxResources()
    requested.memory.limit.value = 7
    requested.unified["memory.high"] = "6"
    info = messages.container_info(container, "u", requested)
    assert (info.memory_limit, dict(info.unified)) == (7, {"memory.high": "6"})


def test_event_mask_is_the_documented_memory_plugin_mask() -> None:
    assert messages.MEMSTATE_EVENT_MASK == 0x068F
    assert messages.event_mask([messages.Event.UPDATE_POD_SANDBOX]) == 0x0800


@pytest.mark.parametrize(
    ("parent", "hint"),
    [
        ("kubepods-besteffort-podx.slice", "BestEffort"),
        ("/kubepods/burstable/podx", "Burstable"),
        ("kubepods-podx.slice", "Guaranteed"),
    ],
)
def test_qos_hint_from_cgroup_parent(parent: str, hint: str) -> None:
    assert messages.qos_hint(parent) == hint


def test_adjustment_from_core_targets() -> None:
    decisions = node_decisions()
    pinned = decisions.admitted[PINNED]
    app = adjustment_for(pinned, "app", decisions.config)
    # Guaranteed under TieredReservation: memory.min = request; request == limit: no high.
    assert app == ResourceAdjustment(
        "0", {"memory.high": "max", "memory.min": str(2**30), "memory.low": "0"}
    )
    # A container the spec does not name keeps the pod's pinning only.
    assert adjustment_for(pinned, "stranger", decisions.config) == ResourceAdjustment("0", {})
    web = adjustment_for(decisions.admitted[BURSTABLE], "web", decisions.config)
    assert web.cpuset_mems == "" and web.unified["memory.low"] == str(256 * 2**20)


def test_without_tiered_reservation_min_and_low_are_left_to_the_kubelet() -> None:
    import msgspec

    decisions = node_decisions()
    config = msgspec.structs.replace(decisions.config, memory_reservation_policy="None")
    adjustment = adjustment_for(decisions.admitted[PINNED], "app", config)
    assert set(adjustment.unified) == {"memory.high"}


async def test_unknown_pods_can_be_refused() -> None:
    decisions = node_decisions()
    decider = TargetsDecider(lambda: decisions, unknown_pod="refuse")
    from memstate.nri.decider import ContainerInfo, Refusal, SandboxInfo

    pod = SandboxInfo("sb", "nope", "n", "ns", "", "Guaranteed")
    result = await decider.create_container(pod, ContainerInfo("c", "sb", "nope", "app", 1))
    assert isinstance(result, Refusal) and result.reason == "UnknownPod"


@pytest.mark.parametrize(("name", "index"), [("", "10"), ("a b", "10"), ("ok", "1"), ("ok", "1a")])
def test_plugin_settings_refuse_what_the_runtime_refuses(name: str, index: str) -> None:
    with pytest.raises(PluginConfigError, match="must be") as caught:
        PluginSettings(name=name, index=index).validate()
    assert caught.value.exit_code == 78
    assert caught.value.path in ("$.nri.pluginName", "$.nri.pluginIndex")


async def test_reconnect_backoff_runs_on_the_trio_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[float] = []

    async def refuse(path: str) -> trio.abc.Stream:
        attempts.append(trio.current_time())
        raise FileNotFoundError(2, "No such file or directory", path)

    connect: Callable[[str], Awaitable[trio.abc.Stream]] = refuse
    plugin = NriPlugin(
        PluginSettings(socket="/nonexistent", backoff_initial=0.5, backoff_max=4.0),
        TargetsDecider(node_decisions),
        connect=connect,
    )
    with trio.move_on_after(20):
        await plugin.run()
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(attempts)]
    assert gaps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert "No such file" in plugin.status.last_error
