"""The `mode`, `ownership` and `kubeletCheckpoint` settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from memstate.core.errors import ConfigError
from memstate.node.settings import Settings, settings_from_object


def test_defaults_are_todays_behaviour() -> None:
    settings = Settings()
    assert (settings.mode, settings.ownership) == ("numa", "standalone")
    assert settings.kubelet_checkpoint == Path("/var/lib/kubelet/memory_manager_state")


def test_shadow_mode_and_the_checkpoint_path_are_read() -> None:
    settings = settings_from_object(
        {"mode": "shadow", "ownership": "beside-kubelet", "kubeletCheckpoint": "/tmp/mm"},
        source="c.yaml",
        base=Settings(),
    )
    assert settings.mode == "shadow" and settings.ownership == "beside-kubelet"
    assert settings.kubelet_checkpoint == Path("/tmp/mm")


def test_an_unknown_mode_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_object({"mode": "pin"}, source="c.yaml", base=Settings())
    assert caught.value.path == "$.memstate.mode"


def test_shadow_with_nri_is_refused() -> None:
    with pytest.raises(ConfigError, match="shadow") as caught:
        settings_from_object({"mode": "shadow", "nri": {}}, source="c.yaml", base=Settings())
    assert caught.value.path == "$.memstate.nri"
    assert caught.value.exit_code == 78
