"""Reading the machine's NUMA topology from sysfs.

Reads `/sys/devices/system/node/node*/{meminfo,distance,hugepages/*/nr_hugepages}` and hands the
text to `memstate.core.topology.topology_from_sysfs`, which does all the parsing. The base page
size and kernel release come from the running kernel. A machine without NUMA support still has
`node0`; a container without sysfs gets a clear `TopologyError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from memstate.core.errors import TopologyError
from memstate.core.topology import Topology, topology_from_sysfs

NODE_DIR = Path("/sys/devices/system/node")


def read_sysfs_files(node_dir: Path = NODE_DIR) -> dict[str, str]:
    """The text of every file `topology_from_sysfs` reads, keyed by path below `node_dir`."""
    files: dict[str, str] = {}
    try:
        nodes = sorted(p for p in node_dir.iterdir() if p.name.startswith("node"))
    except OSError as exc:
        raise TopologyError(
            f"cannot list NUMA nodes: {exc.strerror}", source=str(node_dir)
        ) from None
    for node in nodes:
        for name in ("meminfo", "distance"):
            _read_into(files, node_dir, node / name)
        hugepages = node / "hugepages"
        if hugepages.is_dir():
            for pool in sorted(hugepages.iterdir()):
                _read_into(files, node_dir, pool / "nr_hugepages")
    return files


def _read_into(files: dict[str, str], base: Path, path: Path) -> None:
    try:
        files[str(path.relative_to(base))] = path.read_text()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TopologyError(f"cannot read: {exc.strerror}", source=str(path)) from None


def observe_topology(node_dir: Path = NODE_DIR) -> Topology:
    """The running machine's topology, with its base page size and kernel release."""
    return topology_from_sysfs(
        read_sysfs_files(node_dir),
        page_size_bytes=os.sysconf("SC_PAGE_SIZE"),
        kernel_release=os.uname().release,
    )
