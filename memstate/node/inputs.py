"""Reading input files: pod manifests, the node config and topology files.

This is the boundary where untrusted bytes become core values. YAML (which includes JSON) is
parsed with PyYAML's safe loader, then handed to the core's validating constructors, so every
error names the file and the field path. Files are bounded in size and must hold exactly one
document; a manifest directory may contain `.yaml`, `.yml` and `.json` files, anything else is
ignored (editor backups, dotfiles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import yaml

from memstate.core.config import NodeConfig, config_from_object
from memstate.core.errors import ConfigError, InputError, ManifestError, TopologyError
from memstate.core.pod import Pod, pod_from_manifest
from memstate.core.topology import Topology, topology_from_object

MAX_FILE_BYTES = 1 << 20
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def read_document(path: Path, error: type[InputError]) -> Any:
    """One YAML/JSON document from a file, as plain objects; `error` names the file."""
    source = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", source=source) from None
    if len(data) > MAX_FILE_BYTES:
        raise error(f"larger than {MAX_FILE_BYTES} bytes", source=source)
    return parse_document(data, source=source, error=error)


def parse_document(data: bytes, *, source: str, error: type[InputError]) -> Any:
    """Parse bytes as one YAML (or JSON) document."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte {exc.start})", source=source) from None
    if source.endswith(".json"):
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise error(f"invalid JSON: {exc}", source=source) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"invalid YAML{where}: {problem}", source=source) from None
    if len(documents) != 1:
        raise error(f"expected exactly one document, found {len(documents)}", source=source)
    return documents[0]


def load_manifest(path: Path) -> Pod:
    """A validated pod from a manifest file; `ManifestError` names the file and field."""
    return pod_from_manifest(read_document(path, ManifestError), source=str(path))


def load_config(path: Path) -> NodeConfig:
    """A validated node config from a KubeletConfiguration-shaped YAML file."""
    obj = read_document(path, ConfigError)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != "memstate"}
    return config_from_object(obj, source=str(path))


def load_topology(path: Path) -> Topology:
    """A validated topology from a topology file."""
    return topology_from_object(read_document(path, TopologyError), source=str(path))


def manifest_files(directory: Path) -> list[Path]:
    """Manifest candidates in a directory, in the order the directory lists them.

    Deliberately not sorted: like the kubelet after a restart, memstate must not depend on the
    order pods come back in, and the tests exercise that.
    """
    return [
        entry
        for entry in directory.iterdir()
        if entry.is_file() and entry.suffix in MANIFEST_SUFFIXES and not entry.name.startswith(".")
    ]
