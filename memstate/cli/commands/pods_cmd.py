"""Commands around the daemon: `admit`, `remove`, `status`, `topology`.

`admit` and `remove` work through the manifest directory, like `kubectl` works through the API
server: they change the desired state (place or delete a manifest, atomically) and then wait for the
daemon's decision to appear in the log. `status` and `topology` are read-only and need no lock, so
they work while the daemon runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memstate.cli.commands.common import (
    add_location_arguments,
    require_state_dir,
    resolve_settings,
)
from memstate.core.errors import (
    EXIT_FAILURE,
    FileAccessError,
    InputError,
    ManifestError,
)
from memstate.core.events import (
    Envelope,
    ManifestInvalid,
    PodAdmitted,
    PodRejected,
    PodRemovalRequested,
    PodRemoved,
)
from memstate.core.pod import Pod, spec_hash
from memstate.core.quantity import format_bytes
from memstate.core.state import state_hash
from memstate.core.state_targets import state_targets
from memstate.core.targets import NodeTargets
from memstate.core.topology import Topology
from memstate.node.inputs import load_manifest, load_topology, manifest_files
from memstate.present.output import (
    add_output_argument,
    output_format,
    write_json,
    write_table,
)
from memstate.present.views import (
    NUMA_HEADERS,
    POD_HEADERS,
    describe_decision,
    numa_document,
    numa_rows,
    pod_rows,
    pods_document,
    rejections_document,
    targets_document,
)

POLL_SECONDS = 0.1


def register(subparsers: Any) -> None:
    admit = subparsers.add_parser(
        "admit",
        help="place a pod manifest and wait for the daemon's decision",
        description=(
            "Validate FILE, place it atomically in the manifest directory the daemon watches, "
            "wait for the decision and print it. Exit 0 when admitted, 1 when rejected or when "
            "no decision arrives in time, 65 when the manifest is invalid."
        ),
    )
    admit.add_argument("file", type=Path, help="a Kubernetes v1 Pod manifest (YAML or JSON)")
    add_location_arguments(admit, manifests=True)
    admit.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    add_output_argument(admit, jsonl=False)
    admit.set_defaults(handler=run_admit)

    remove = subparsers.add_parser(
        "remove",
        help="delete a pod's manifest and wait for its removal",
        description=(
            "Find the manifest of the pod named POD (a UID, a name, namespace/name, or a "
            "manifest file whose UID is used) in the "
            "manifest directory, delete it and wait until the daemon has recorded the removal."
        ),
    )
    remove.add_argument("pod", help="UID, name, namespace/name, or a manifest file")
    add_location_arguments(remove, manifests=True)
    remove.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    add_output_argument(remove, jsonl=False, quiet_help="print nothing on success")
    remove.set_defaults(handler=run_remove)

    status = subparsers.add_parser(
        "status",
        help="pods, NUMA accounting, cgroup targets and rejections (read-only)",
        description=(
            "Show the node as memstate sees it: every pod with QoS class, NUMA affinity, sizes "
            "and cgroup targets; rejections with reasons; per-NUMA-node allocatable, reserved "
            "and free memory by resource. Reads the state directory without a lock, so it works "
            "while the daemon runs. `-o json` prints the documented schema (docs/cli.md)."
        ),
    )
    add_location_arguments(status)
    add_output_argument(status, jsonl=False)
    status.set_defaults(handler=run_status)

    topology = subparsers.add_parser(
        "topology",
        help="the NUMA topology this machine shows",
        description="Print the NUMA nodes, their memory, hugepage pools and distances.",
    )
    topology.add_argument(
        "--topology-file", type=Path, default=None, help="read a topology file instead of sysfs"
    )
    add_output_argument(topology, jsonl=False)
    topology.set_defaults(handler=run_topology)


# --- reading the log ------------------------------------------------------------------------------


def current_last_seq(state_dir: Path) -> int:
    """The seq of the last durable record, reading only the last segment."""
    from memstate.store.reader import LogReader

    reader = LogReader(state_dir)
    segments = reader.segments()
    if not segments:
        return 0
    last = segments[-1][0] - 1
    for record in reader.read_raw(segments[-1][0]):
        last = record.seq
    return last


def wait_for(
    state_dir: Path,
    after_seq: int,
    match: Callable[[Envelope], bool],
    *,
    timeout: float,
) -> list[Envelope]:
    """Tail the log after `after_seq` until `match` accepts a record; returns the records from the
    matching one to the end of its transition (empty on timeout)."""
    from memstate.store.reader import LogReader

    deadline = time.monotonic() + timeout
    seq = after_seq
    while True:
        reader = LogReader(state_dir)
        records = list(reader.read(seq + 1)) if reader.segments() else []
        for index, envelope in enumerate(records):
            if match(envelope):
                return records[index:]
        if records:
            seq = records[-1].seq
        if time.monotonic() >= deadline:
            return []
        time.sleep(POLL_SECONDS)


# --- admit ----------------------------------------------------------------------------------------


def manifest_destination(manifest_dir: Path, pod: Pod) -> Path:
    """`<namespace>.<name>.yaml`: names are DNS-1123, so no path can escape the directory."""
    return manifest_dir / f"{pod.namespace}.{pod.name}.yaml"


def place_atomically(data: bytes, destination: Path) -> None:
    """Write a hidden temporary file, fsync it, rename it into place, fsync the directory."""
    temporary = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, destination)
    dir_fd = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def run_admit(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    pod = load_manifest(args.file)  # ManifestError (exit 65) before anything is placed
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise FileAccessError.from_os_error(exc, "read the manifest") from None
    manifest_dir = settings.manifest_dir
    if not manifest_dir.is_dir():
        raise InputError(
            f"manifest directory {manifest_dir} does not exist", source=str(manifest_dir)
        )
    destination = manifest_destination(manifest_dir, pod)
    same_uid = [(path, held) for path, held in manifests_of(manifest_dir) if held.uid == pod.uid]
    if same_uid and destination not in [path for path, _ in same_uid]:
        # The pod is already there under another file name: replace that file (atomically), so
        # the directory never holds two manifests of one UID (the second would be rejected).
        destination = same_uid[0][0]
    # The same spec (resources, QoS) in a new file brings no new decision; a changed spec does
    # (the daemon removes the pod with reason spec_changed and decides again), so wait for it.
    unchanged_spec = any(spec_hash(held) == spec_hash(pod) for _, held in same_uid)
    if destination.exists():
        try:
            existing = load_manifest(destination)
        except ManifestError:
            existing = None
        if existing is not None and existing.uid != pod.uid:
            raise InputError(
                f"{destination} already holds {existing.key} with uid {existing.uid}; "
                f"`memstate remove {existing.uid}` first",
                source=str(args.file),
            )
        if destination.read_bytes() == data:
            if output_format(args, piped="json") == "json":
                write_json({"seq": None, "admitted": None, "unchanged": str(destination)})
            else:
                sys.stdout.write(f"{pod.key} ({pod.uid}) is already in place at {destination}\n")
            return 0
    after = current_last_seq(settings.state_dir) if settings.state_dir.exists() else 0
    try:
        place_atomically(data, destination)
    except OSError as exc:
        raise FileAccessError.from_os_error(exc, f"place the manifest at {destination}") from None

    if unchanged_spec:
        if output_format(args, piped="json") == "json":
            write_json({"seq": None, "admitted": None, "replaced": str(destination)})
        else:
            sys.stdout.write(
                f"replaced {destination}: {pod.key} ({pod.uid}) was already in the manifest "
                "directory with the same spec: the daemon keeps its decision (`memstate status` "
                "shows it)\n"
            )
        return 0

    def decided(envelope: Envelope) -> bool:
        event = envelope.event
        if isinstance(event, (PodAdmitted, PodRejected)) and event.uid == pod.uid:
            return True
        return isinstance(event, ManifestInvalid) and event.source == str(destination)

    records = wait_for(settings.state_dir, after, decided, timeout=args.timeout)
    if not records:
        sys.stderr.write(
            f"memstate: no decision about {pod.key} within {args.timeout:g}s; is `memstate run` "
            f"running with --manifest-dir {manifest_dir} and --state-dir {settings.state_dir}?\n"
        )
        return EXIT_FAILURE
    decision = records[0].event
    admitted = isinstance(decision, PodAdmitted)
    if output_format(args, piped="json") == "json":
        write_json({"seq": records[0].seq, "admitted": admitted, "decision": decision})
    else:
        sys.stdout.write(describe_decision(decision) + "\n")
        if isinstance(decision, PodAdmitted):
            _print_admission(decision)
    return 0 if admitted else EXIT_FAILURE


def _print_admission(decision: PodAdmitted) -> None:
    allocation = decision.allocation
    if allocation is not None:
        rows = [
            [c.name, b.type, list(b.numa_affinity), format_bytes(b.size)]
            for c in allocation.containers
            for b in c.blocks
        ]
        write_table(["CONTAINER", "RESOURCE", "NUMA", "SIZE"], rows)
    if decision.targets is not None:
        sys.stdout.write(f"cgroup {decision.targets.cgroup}:\n")
        write_table(["FILE", "VALUE"], sorted(decision.targets.files.items()))


# --- remove ---------------------------------------------------------------------------------------


def manifests_of(manifest_dir: Path) -> list[tuple[Path, Pod]]:
    """Every readable manifest of the directory with its pod (unreadable ones are skipped)."""
    if not manifest_dir.is_dir():
        raise InputError(
            f"manifest directory {manifest_dir} does not exist (use --manifest-dir or --config)",
            source=str(manifest_dir),
        )
    found: list[tuple[Path, Pod]] = []
    for path in sorted(manifest_files(manifest_dir)):
        try:
            found.append((path, load_manifest(path)))
        except InputError:
            continue
    return found


def find_manifests(manifest_dir: Path, wanted: str) -> tuple[list[Path], Pod]:
    """The manifests of the one pod named by `wanted`: a manifest file (its UID), a UID, a name
    or namespace/name. A UID is exact: every file holding it is that pod's."""
    held = manifests_of(manifest_dir)
    if os.sep in wanted or wanted.endswith((".yaml", ".yml", ".json")):
        candidate = Path(wanted)
        if candidate.is_file():
            wanted = load_manifest(candidate).uid
    by_uid = [(path, pod) for path, pod in held if pod.uid == wanted]
    if by_uid:
        return [path for path, _ in by_uid], by_uid[0][1]
    matches = [(path, pod) for path, pod in held if wanted in (pod.name, pod.key)]
    if not matches:
        raise InputError(f"no manifest in {manifest_dir} holds a pod {wanted!r}")
    if len({pod.uid for _, pod in matches}) > 1:
        listed = ", ".join(f"{p.key} ({p.uid}) in {path.name}" for path, p in matches)
        raise InputError(f"{wanted!r} is ambiguous: {listed}; give the UID")
    return [path for path, _ in matches], matches[0][1]


def run_remove(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    paths, pod = find_manifests(settings.manifest_dir, args.pod)
    after = current_last_seq(settings.state_dir) if settings.state_dir.exists() else 0
    for path in paths:
        try:
            path.unlink()
        except OSError as exc:
            raise FileAccessError.from_os_error(exc, f"delete the manifest {path}") from None
    try:
        dir_fd = os.open(settings.manifest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise FileAccessError.from_os_error(exc, "sync the manifest directory") from None
    path = paths[0]

    def requested(envelope: Envelope) -> bool:
        event = envelope.event
        return isinstance(event, PodRemovalRequested) and event.uid == pod.uid

    records = wait_for(settings.state_dir, after, requested, timeout=args.timeout)
    if not records:
        sys.stderr.write(
            f"memstate: {path} was deleted but no removal was recorded within "
            f"{args.timeout:g}s; is `memstate run` running?\n"
        )
        return EXIT_FAILURE
    removed = any(isinstance(r.event, PodRemoved) and r.event.uid == pod.uid for r in records)
    if args.quiet and args.output is None:
        pass  # -q: nothing at all unless a format is asked for explicitly
    elif output_format(args, piped="json") == "json":
        write_json(
            {
                "seq": records[-1].seq,
                "uid": pod.uid,
                "namespace": pod.namespace,
                "name": pod.name,
                "manifests": [str(p) for p in paths],
                "removed": removed,
            }
        )
    elif removed:
        sys.stdout.write(f"removed {pod.key} ({pod.uid}); its memory is free again\n")
    else:
        sys.stdout.write(f"removed the manifest of {pod.key} ({pod.uid}); it was not admitted\n")
    return 0


# --- status ---------------------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    from memstate.store.recovery import recover_state

    settings = resolve_settings(args)
    require_state_dir(settings.state_dir)
    recovered = recover_state(settings.state_dir)
    state = recovered.state
    targets = state_targets(state)
    daemon = read_daemon_status(settings.state_dir)
    if output_format(args, piped="json") == "json":
        write_json(
            {
                "schema": "memstate.status/v1",
                "seq": recovered.last_seq,
                "state_hash": state_hash(state),
                "readmission_open": state.readmission_open,
                "pinning": {
                    "requests_total": state.counters.pinning_requests,
                    "errors_total": state.counters.pinning_errors,
                },
                "pods": pods_document(state),
                "rejections": rejections_document(state),
                "numa": numa_document(state),
                "targets": targets_document(targets) if targets is not None else None,
                "daemon": daemon,
            }
        )
        return 0
    out = sys.stdout
    running = "running" if daemon and daemon.get("running") else "not running"
    out.write(
        f"memstate state at {settings.state_dir}: seq {recovered.last_seq}, "
        f"{len(state.pods)} pods, daemon {running}"
    )
    if daemon and daemon.get("running"):
        out.write(f" (pid {daemon.get('pid')}, converged: {daemon.get('converged')})")
        if daemon.get("ownership"):  # absent in the status files of older daemons
            out.write(f", ownership {daemon.get('ownership')}, mode {daemon.get('mode')}")
        metrics = daemon.get("metrics_address")
        if metrics and metrics != "off":  # the bound address (the kernel's pick for port 0)
            out.write(f", metrics http://{metrics}/metrics")
    out.write("\n")
    if state.readmission_open:
        out.write("readmission in progress\n")
    health = daemon.get("pod_source_health") if daemon and daemon.get("running") else None
    if health:
        out.write("\nPod sources:\n")
        write_table(
            ["SOURCE", "IN SYNC", "FAILURES", "LAST SUCCESS", "PODS", "LAST ERROR"],
            [
                [
                    str(h.get("name", "")),
                    "yes" if h.get("in_sync") else "no",
                    str(h.get("consecutive_failures", 0)),
                    _when(h.get("last_success_unix")),
                    str(h.get("pods", 0)),
                    str(h.get("last_error", "")) or "-",
                ]
                for h in health
            ],
        )
    nri = daemon.get("nri") if daemon and daemon.get("running") else None
    if isinstance(nri, dict):
        # The NRI plugin's connection (memstate.node.nri_decider), when `nri:` is configured.
        connected = f"connected to {nri.get('runtime') or 'the runtime'}"
        state_text = connected if nri.get("connected") else "not connected"
        out.write(f"\nNRI plugin {nri.get('plugin')} on {nri.get('socket')}: {state_text}")
        out.write(f"; last error: {nri.get('last_error')}\n" if nri.get("last_error") else "\n")
    out.write("\nPods:\n")
    write_table(POD_HEADERS, pod_rows(state))
    rejections = rejections_document(state)
    if rejections:
        out.write("\nRejections:\n")
        write_table(
            ["POD OR FILE", "REASON", "MESSAGE"],
            [
                [
                    f"{r['namespace']}/{r['name']}" if r["name"] else r["source"],
                    r["reason"],
                    r["message"],
                ]
                for r in rejections
            ],
        )
    out.write("\nNUMA nodes:\n")
    write_table(NUMA_HEADERS, numa_rows(state))
    if targets is not None:
        out.write("\nCgroups (node, QoS, pod, and the containers' values for the runtime):\n")
        write_table(CGROUP_HEADERS, cgroup_rows(targets))
        for warning in targets.warnings:
            out.write(f"warning: {warning}\n")
    return 0


MEMORY_FILES = ("memory.min", "memory.low", "memory.high", "memory.max")
CGROUP_HEADERS = ["CGROUP", "LEVEL", *(f.upper() for f in MEMORY_FILES)]


def cgroup_rows(targets: NodeTargets) -> list[list[str]]:
    """One row per managed cgroup with memory files (node, QoS, pod), each pod followed by its
    containers (`<pod cgroup>/<container>`: created by the runtime, values from the targets)."""
    containers = {p.cgroup: p.containers for p in targets.pods}
    rows: list[list[str]] = []
    for target in targets.cgroups:
        if not any(f in target.files for f in MEMORY_FILES):
            continue
        rows.append([target.path, target.level, *(target.files.get(f, "-") for f in MEMORY_FILES)])
        for container in containers.get(target.path, ()):
            rows.append(
                [
                    f"{target.path}/{container.name}",
                    "container",
                    *(container.files.get(f, "-") for f in MEMORY_FILES),
                ]
            )
    return rows


def _when(unix: object) -> str:
    import datetime

    if not isinstance(unix, int | float) or not unix:
        return "never"
    moment = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_daemon_status(state_dir: Path) -> dict[str, Any] | None:
    """The daemon's status file, with `running` computed from its pid."""
    import msgspec

    path = state_dir / "daemon-status.json"
    try:
        document: dict[str, Any] = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    pid = document.get("pid")
    running = isinstance(pid, int) and _alive(pid)
    document["running"] = running
    return document


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- topology -------------------------------------------------------------------------------------


def run_topology(args: argparse.Namespace) -> int:
    topology: Topology
    if args.topology_file is not None:
        topology = load_topology(args.topology_file)
    else:
        from memstate.host.sysfs import observe_topology

        topology = observe_topology()
    if output_format(args, piped="json") == "json":
        from memstate.core.topology import topology_to_object

        write_json(topology_to_object(topology))
        return 0
    rows = []
    for node in topology.nodes:
        pools = ", ".join(f"{format_bytes(p.page_size_bytes)} x {p.count}" for p in node.hugepages)
        rows.append(
            [
                node.id,
                format_bytes(node.memory_bytes),
                pools or "-",
                " ".join(map(str, node.distances)),
            ]
        )
    write_table(["NUMA", "MEMORY", "HUGEPAGES", "DISTANCES"], rows)
    sys.stdout.write(
        f"page size {format_bytes(topology.page_size_bytes)}, kernel {topology.kernel_release}\n"
    )
    return 0
