"""Reading the kubelet's own config file (`kubeletConfigFile`) at start and on every reload.

The rules are the core's (memstate.core.beside_kubelet): this module reads the file, logs the
fields it does not read once per load, and returns memstate's config with the kubelet's cgroup
naming adopted where memstate's own file does not set it — or raises the `ConfigError` (exit 78
at start; a rejected reload keeps the previous config) that names the fields that would fight.
"""

from __future__ import annotations

import logging
from typing import Any

from memstate.core.beside_kubelet import check_beside_kubelet, kubelet_side_from_object
from memstate.core.config import NodeConfig
from memstate.core.errors import ConfigError
from memstate.node.inputs import read_document
from memstate.node.settings import Settings

logger = logging.getLogger(__name__)


def with_kubelet_config(settings: Settings, config: NodeConfig, document: Any) -> NodeConfig:
    """`config` checked against (and named after) the kubelet's config file of `settings`.

    `document` is memstate's own parsed config file: which naming fields it sets."""
    path = settings.kubelet_config_file
    if path is None:
        if settings.ownership == "beside-kubelet" and settings.mode != "shadow":
            logger.warning(
                "ownership beside-kubelet without kubeletConfigFile: memstate cannot check that "
                "the kubelet's MemoryQoS gate is off and its memoryManagerPolicy fits mode %s",
                settings.mode,
            )
        return config
    kubelet = kubelet_side_from_object(read_document(path, ConfigError), source=str(path))
    if kubelet.ignored:
        logger.info(
            "%s: %d kubelet config fields not read by memstate: %s",
            path,
            len(kubelet.ignored),
            ", ".join(kubelet.ignored),
        )
    config_sets = [k for k in document if isinstance(k, str)] if isinstance(document, dict) else []
    checked = check_beside_kubelet(
        kubelet,
        config,
        ownership=settings.ownership,
        mode=settings.mode,
        config_sets=config_sets,
        kubelet_source=str(path),
    )
    if (checked.cgroup_driver, checked.cgroup_root) != (config.cgroup_driver, config.cgroup_root):
        logger.info(
            "cgroup naming from the kubelet's config %s: cgroupDriver %s, cgroupRoot /%s",
            path,
            checked.cgroup_driver,
            "/".join(checked.cgroup_root),
        )
    return checked
