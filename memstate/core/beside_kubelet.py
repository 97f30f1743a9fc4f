"""Sharing a node with a kubelet: what memstate reads of the kubelet's own config, and the
combinations it refuses because the two would fight over the same cgroup files.

The kubelet's config file (`kubeletConfigFile`, a full kubeadm `KubeletConfiguration`) is read
leniently: only the fields that decide who writes what are decoded (`KubeletSide`), every other
field is accepted and listed as ignored — the kubelet, not memstate, validates its own file.

`check_beside_kubelet` compares them with memstate's own config and profile and refuses
(`ConfigError`, exit 78, naming the kubelet's file and both fields) when:

- the kubelet's `featureGates.MemoryQoS` is true while memstate writes Memory QoS files (modes
  `qos` and `numa`): both would write `memory.min`/`memory.low` on kubepods, the QoS and the pod
  cgroups and the runtime would write the kubelet's `memory.high` on the containers;
- the kubelet's `memoryManagerPolicy` is `Static` while memstate pins (mode `numa` with
  memstate's `memoryManagerPolicy: Static`): two NUMA allocators for the same memory;
- the kubelet's `cgroupDriver` or `cgroupRoot` differ from memstate's: memstate would manage a
  tree the kubelet does not use (or, standalone, build a second pod tree beside it);
- beside the kubelet, its `cgroupsPerQOS` is false: there are no QoS cgroups to wait for.

`mode: shadow` writes nothing, so it accepts every combination. Beside the kubelet, a
`cgroupDriver` / `cgroupRoot` that memstate's own config does not set is taken from the
kubelet's. Pure: the parsed documents are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import msgspec

from memstate.core.config import CgroupDriver, NodeConfig, parse_cgroup_root
from memstate.core.errors import ConfigError, echo
from memstate.core.plan.profile import Mode, Ownership
from memstate.core.validation import convert_input

MEMORY_QOS_GATE = "MemoryQoS"
_DRIVERS = ("cgroupfs", "systemd")
_POLICIES = ("None", "Static")


class _KubeletFile(msgspec.Struct, rename="camel"):
    """The fields of the kubelet's file that decide who writes what; the others are skipped.
    Defaults are the kubelet's own (its MemoryQoS gate is alpha: off unless set)."""

    kind: str = "KubeletConfiguration"
    feature_gates: dict[str, bool] = {}
    memory_manager_policy: str = "None"
    cgroup_driver: str = "cgroupfs"
    cgroup_root: str = ""
    cgroups_per_qos: bool = msgspec.field(name="cgroupsPerQOS", default=True)


_READ = frozenset(f.encode_name for f in msgspec.structs.fields(_KubeletFile)) | {"apiVersion"}


class KubeletSide(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What memstate knows of the kubelet's configuration (see the module docstring)."""

    memory_qos: bool = False
    memory_manager_policy: str = "None"
    cgroup_driver: CgroupDriver = "cgroupfs"
    cgroup_root: tuple[str, ...] = ()
    cgroups_per_qos: bool = True
    # The file's other top-level fields, sorted: accepted and not read.
    ignored: tuple[str, ...] = ()


def kubelet_side_from_object(obj: Any, *, source: str) -> KubeletSide:
    """The kubelet's config (a parsed YAML document) as memstate reads it; `ConfigError` naming
    `source` and the field when the fields memstate reads are not what the kubelet accepts."""
    if not isinstance(obj, dict):
        raise ConfigError("not a KubeletConfiguration (expected a mapping)", source=source)
    raw = convert_input(
        {k: v for k, v in obj.items() if k in _READ}, _KubeletFile, source=source, error=ConfigError
    )
    if raw.kind != "KubeletConfiguration":
        raise ConfigError(
            f"kind {echo(raw.kind)} is not a KubeletConfiguration: this file is not a kubelet "
            "config",
            source=source,
            path="$.kind",
        )
    if raw.cgroup_driver not in _DRIVERS:
        raise ConfigError(
            f'unknown cgroup driver: "{echo(raw.cgroup_driver, quote=False)}" '
            f"(valid: {', '.join(_DRIVERS)})",
            source=source,
            path="$.cgroupDriver",
        )
    if raw.memory_manager_policy not in _POLICIES:
        raise ConfigError(
            f'unknown policy: "{echo(raw.memory_manager_policy, quote=False)}" '
            f"(valid: {', '.join(_POLICIES)})",
            source=source,
            path="$.memoryManagerPolicy",
        )
    try:
        root = parse_cgroup_root(raw.cgroup_root or "/", raw.cgroup_driver)
    except ConfigError as exc:
        raise exc.with_source(source) from None
    return KubeletSide(
        memory_qos=raw.feature_gates.get(MEMORY_QOS_GATE, False),
        memory_manager_policy=raw.memory_manager_policy,
        cgroup_driver=cast(CgroupDriver, raw.cgroup_driver),
        cgroup_root=root,
        cgroups_per_qos=raw.cgroups_per_qos,
        ignored=tuple(sorted(str(k) for k in obj if k not in _READ)),
    )


def _root_text(root: tuple[str, ...]) -> str:
    return "/" + "/".join(root)


def check_beside_kubelet(
    kubelet: KubeletSide,
    config: NodeConfig,
    *,
    ownership: Ownership,
    mode: Mode,
    config_sets: Iterable[str],
    kubelet_source: str,
) -> NodeConfig:
    """memstate's config with the kubelet's cgroup naming where memstate's own does not set it
    (beside the kubelet), after refusing every combination that would fight (module docstring).

    `config_sets`: the top-level fields memstate's own config file sets (`cgroupDriver` and
    `cgroupRoot` are taken from the kubelet only when absent there).
    """
    given = frozenset(config_sets)
    if ownership == "beside-kubelet" or mode == "shadow":
        adopted: dict[str, Any] = {}
        if "cgroupDriver" not in given:
            adopted["cgroup_driver"] = kubelet.cgroup_driver
        if "cgroupRoot" not in given:
            adopted["cgroup_root"] = kubelet.cgroup_root
        config = msgspec.structs.replace(config, **adopted)
    if mode == "shadow":
        return config
    fights: list[tuple[str, str]] = []  # (the kubelet's field, why)
    if kubelet.memory_qos:
        fights.append(
            (
                f"$.featureGates.{MEMORY_QOS_GATE}",
                f"featureGates.{MEMORY_QOS_GATE} is true, so the kubelet writes memory.min/"
                f"memory.low/memory.high, which memstate writes in mode {mode}: set it to false "
                "in the kubelet's config (or run memstate with mode: shadow)",
            )
        )
    pins = mode == "numa" and config.memory_manager_policy == "Static"
    if pins and kubelet.memory_manager_policy == "Static":
        fights.append(
            (
                "$.memoryManagerPolicy",
                "memoryManagerPolicy is Static in the kubelet's config while memstate pins "
                "memory (mode numa, memoryManagerPolicy Static): set the kubelet's to None, "
                "or run memstate with mode: qos",
            )
        )
    if kubelet.cgroup_driver != config.cgroup_driver:
        fights.append(
            (
                "$.cgroupDriver",
                f"cgroupDriver is {kubelet.cgroup_driver} in the kubelet's config but "
                f"{config.cgroup_driver} in memstate's: use the kubelet's",
            )
        )
    if kubelet.cgroup_root != config.cgroup_root:
        fights.append(
            (
                "$.cgroupRoot",
                f"cgroupRoot is {_root_text(kubelet.cgroup_root)} in the kubelet's config but "
                f"{_root_text(config.cgroup_root)} in memstate's: use the kubelet's",
            )
        )
    if ownership == "beside-kubelet" and not kubelet.cgroups_per_qos:
        fights.append(
            (
                "$.cgroupsPerQOS",
                "cgroupsPerQOS is false in the kubelet's config: there are no QoS cgroups for "
                "memstate to protect",
            )
        )
    if fights:
        raise ConfigError(
            "memstate and the kubelet would fight over the same cgroups: "
            + "; ".join(why for _, why in fights),
            source=kubelet_source,
            path=", ".join(field for field, _ in fights),
        )
    return config
