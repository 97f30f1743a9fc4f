"""`memstate plan` and `memstate diff`: what the reconciler would do to a live tree, read-only.

Both take the desired state from a state directory (recovered exactly as the daemon starts:
newest valid checkpoint plus the log tail) or from a JSON-lines scenario (replayed), turn it into
cgroup targets, and observe the live tree under `--cgroup-root` through `RealCgroupFS` wrapped so
that any write, mkdir or rmdir is refused: these commands can never change the tree.

- `plan` prints the ordered operations a full resync would run (phase, operation, cgroup, file,
  value, the value found, the operations it requires), the pod cgroups it would remove and why
  others are left alone. Retired pod cgroups are the removals the state directory's log says are
  still to finish (as the daemon recovers them), plus every cgroup of a UID given with
  `--retired`; any other undesired pod cgroup is an orphan.
- `diff` prints every managed file with its target, what the tree holds, and whether they are
  equal in kernel-normalised form (page rounding, "max", cpu lists), plus the pod cgroups no
  target explains.

With `--exit-code`, both exit 1 when the tree is not converged (operations to run / rows that
differ), like `git diff --exit-code`.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any

from memstate.cli.commands.common import (
    add_config_argument,
    require_state_dir,
    resolve_settings,
    state_dir_of,
)
from memstate.core.cgroup_paths import pod_paths_of_uid
from memstate.core.errors import (
    HostError,
    InputError,
    InvariantViolation,
    MemstateError,
    ScenarioError,
)
from memstate.core.plan import (
    EMPTY_WRITE,
    FileDiff,
    Operation,
    Plan,
    diff_tree,
    plan_operations,
)
from memstate.core.plan.profile import STANDALONE, WriteProfile
from memstate.core.removals import NO_REMOVALS, PendingRemovals
from memstate.core.state import State
from memstate.core.targets import NodeTargets
from memstate.host.cgroupfs import CgroupFS, RealCgroupFS
from memstate.present.output import add_output_argument, output_format, write_json, write_table
from memstate.reconcile.reconciler import add_container_cgroups, observe_tree

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_ROOT_ENV = "MEMSTATE_CGROUP_ROOT"
PLAN_HEADERS = ["#", "PHASE", "OP", "CGROUP", "FILE", "VALUE", "WAS", "REQUIRES"]
DIFF_HEADERS = ["CGROUP", "FILE", "DESIRED", "OBSERVED", "STATUS"]

EXAMPLES = """\
examples:
  memstate plan --state-dir /var/lib/memstate
  memstate plan --scenario replay/memory-qos-tiered.jsonl --cgroup-root /sys/fs/cgroup -o json
  memstate diff --state-dir /var/lib/memstate --only-differences --exit-code
"""


class ReadOnlyCgroupFS:
    """A CgroupFS that reads through `inner` and refuses every change (a bug if attempted)."""

    def __init__(self, inner: CgroupFS) -> None:
        self._inner = inner

    def exists(self, path: str) -> bool:
        return self._inner.exists(path)

    def list_children(self, path: str) -> list[str]:
        return self._inner.list_children(path)

    def read(self, path: str, file: str) -> str:
        return self._inner.read(path, file)

    def write(self, path: str, file: str, value: str) -> None:
        raise InvariantViolation(f"read-only command tried to write {path}/{file}")

    def mkdir(self, path: str) -> None:
        raise InvariantViolation(f"read-only command tried to create {path}")

    def rmdir(self, path: str) -> None:
        raise InvariantViolation(f"read-only command tried to remove {path}")


def register(subparsers: Any) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="dry run: the operations a reconcile would run against a cgroup tree",
        description=(
            "Observe the live cgroup tree (read-only) and print the ordered operations that "
            "would converge it to the targets of the desired state: creation, the raise pass "
            "(top-down), removals, the lower pass (bottom-up). Nothing is written."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(plan)
    plan.add_argument(
        "--retired",
        action="append",
        default=[],
        metavar="UID",
        help="treat every cgroup of this pod UID that no target explains as retired; repeatable",
    )
    plan.add_argument(
        "--pod-removal",
        choices=["wait", "kill"],
        default="wait",
        help="how a populated retired pod would be removed (default: wait)",
    )
    plan.add_argument(
        "--remove-orphans",
        action="store_true",
        help="plan the removal of empty orphan pod cgroups",
    )
    plan.set_defaults(handler=run_plan)

    diff = subparsers.add_parser(
        "diff",
        help="targets against the live cgroup tree, file by file",
        description=(
            "Observe the live cgroup tree (read-only) and compare every managed file with its "
            "target in kernel-normalised form; list pod cgroups no target explains."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(diff)
    diff.add_argument(
        "--only-differences", action="store_true", help="leave out rows that are equal"
    )
    diff.set_defaults(handler=run_diff)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="recover the desired state from here (default: $MEMSTATE_STATE_DIR, the config's "
        "memstate.stateDir, /var/lib/memstate)",
    )
    source.add_argument("--scenario", type=Path, help="replay this JSON-lines scenario instead")
    tree = parser.add_mutually_exclusive_group()
    tree.add_argument(
        "--cgroup-root",
        type=Path,
        default=None,
        help=(
            f"the cgroup tree to observe (default: ${CGROUP_ROOT_ENV}, else the config's "
            f"cgroupSim or cgroupTree, else {DEFAULT_CGROUP_ROOT})"
        ),
    )
    tree.add_argument(
        "--cgroup-sim",
        type=Path,
        default=None,
        help="observe a directory-backed simulated tree instead (e.g. demo/cgroup)",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--exit-code", action="store_true", help="exit 1 when the tree is not converged"
    )
    add_output_argument(parser, jsonl=False)


# --- inputs ---------------------------------------------------------------------------------------


def desired_state(args: argparse.Namespace) -> State:
    """The state to converge to: recovered from `--state-dir` or replayed from `--scenario`."""
    return desired_state_and_removals(args)[0]


def desired_state_and_removals(args: argparse.Namespace) -> tuple[State, PendingRemovals]:
    """The state to converge to and the retired pod cgroups still to remove (recovered from
    `--state-dir` as the daemon recovers them; none for a `--scenario`)."""
    if args.scenario is not None:
        from memstate.core.scenario import read_scenario
        from memstate.history.replay import replay_state

        path: Path = args.scenario
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScenarioError(f"cannot read: {exc.strerror}", source=str(path)) from None
        return replay_state(read_scenario(text, source=str(path))), NO_REMOVALS
    from memstate.store.recovery import recover_state

    state_dir = require_state_dir(state_dir_of(args))
    recovered = recover_state(state_dir)
    return recovered.state, recovered.removals


def targets_for(state: State) -> tuple[NodeTargets, int]:
    """The node's targets in `state` and its base page size (the planner's unit)."""
    from memstate.core.state_targets import state_targets

    targets = state_targets(state)
    if targets is None or state.topology is None:
        raise MemstateError(
            "the desired state has no topology and config in force yet: nothing to converge to"
        )
    return targets, state.topology.page_size_bytes


def cgroup_tree_of(args: argparse.Namespace) -> tuple[Path, bool]:
    """The tree to observe and whether it is simulated: `--cgroup-root`/`--cgroup-sim`, else
    `$MEMSTATE_CGROUP_ROOT`, else the config's `cgroupSim` or `cgroupTree`, else the default —
    the order every command uses (docs/cli.md)."""
    flag_root: Path | None = getattr(args, "cgroup_root", None)
    flag_sim: Path | None = getattr(args, "cgroup_sim", None)
    if flag_root is not None:
        return flag_root, False
    if flag_sim is not None:
        return flag_sim, True
    env = os.environ.get(CGROUP_ROOT_ENV)
    if env:
        return Path(env), False
    settings = resolve_settings(args)
    if settings.cgroup_sim is not None:
        return settings.cgroup_sim, True
    return settings.cgroup_root, False


# --- documents ------------------------------------------------------------------------------------


def operation_document(operation: Operation) -> dict[str, Any]:
    return {
        "index": operation.index,
        "phase": operation.phase,
        "kind": operation.kind,
        "path": operation.path,
        "file": operation.file or None,
        "value": operation.value or None,
        "observed": operation.observed,
        "requires": list(operation.requires),
        "reason": operation.reason,
    }


def plan_document(
    targets: NodeTargets,
    fs: CgroupFS,
    *,
    page_size_bytes: int,
    retired_paths: list[str],
    pod_removal: str,
    remove_orphans: bool,
    profile: WriteProfile = STANDALONE,
) -> tuple[dict[str, Any], Plan]:
    """The plan of a full resync of `fs` to `targets` under `profile` (what the daemon's
    `ownership` and `mode` let it do), as the `-o json` document."""
    reader = ReadOnlyCgroupFS(fs)
    tree, read_errors, reads = observe_tree(reader, targets)
    targets, tree, _paths, more_errors, more_reads = add_container_cgroups(reader, targets, tree)
    read_errors += more_errors
    reads += more_reads
    plan = plan_operations(
        targets,
        tree,
        page_size_bytes=page_size_bytes,
        retired_paths=retired_paths,
        pod_removal="kill" if pod_removal == "kill" else "wait",
        remove_orphans=remove_orphans,
        profile=profile,
    )
    phases = dict.fromkeys(("create", "raise", "remove", "lower"), 0)
    for operation in plan.operations:
        phases[operation.phase] += 1
    document = {
        "page_size_bytes": page_size_bytes,
        "operations": [operation_document(o) for o in plan.operations],
        "removals": [
            {
                "path": r.path,
                "uid": r.uid,
                "kind": r.kind,
                "action": r.action,
                "populated": r.populated,
            }
            for r in plan.removals
        ],
        "blocked": list(plan.blocked),
        "unknown": list(plan.unknown),
        "warnings": list(plan.warnings),
        "awaiting": list(plan.awaiting),
        "read_errors": [f"{e.op} {e.path}/{e.file}: {e.message}" for e in read_errors],
        "reads": reads,
        "summary": {"operations": len(plan.operations), "by_phase": phases},
    }
    return document, plan


def diff_document(
    targets: NodeTargets,
    fs: CgroupFS,
    *,
    page_size_bytes: int,
    retired_paths: list[str] | None = None,
    profile: WriteProfile = STANDALONE,
) -> tuple[dict[str, Any], tuple[FileDiff, ...]]:
    """Every managed file against the tree, as the `-o json` document; pod cgroups no target
    explains are rows of status ``retired`` (a removal still to finish) or ``orphan``."""
    reader = ReadOnlyCgroupFS(fs)
    tree, read_errors, _reads = observe_tree(reader, targets)
    targets, tree, _paths, more_errors, _more = add_container_cgroups(reader, targets, tree)
    read_errors += more_errors
    rows = diff_tree(
        targets,
        tree,
        page_size_bytes=page_size_bytes,
        retired_paths=retired_paths or (),
        profile=profile,
    )
    summary: dict[str, int] = {}
    for row in rows:
        summary[row.status] = summary.get(row.status, 0) + 1
    document = {
        "page_size_bytes": page_size_bytes,
        "rows": [
            {
                "path": r.path,
                "file": r.file or None,
                "desired": r.desired,
                "observed": r.observed,
                "desired_normalised": r.desired_normalised,
                "observed_normalised": r.observed_normalised,
                "equal": r.equal,
                "status": r.status,
            }
            for r in rows
        ],
        "read_errors": [f"{e.op} {e.path}/{e.file}: {e.message}" for e in read_errors],
        "summary": dict(sorted(summary.items())),
    }
    return document, rows


# --- handlers -------------------------------------------------------------------------------------


def observed_tree(args: argparse.Namespace, fs: CgroupFS | None) -> tuple[Path | None, CgroupFS]:
    """The tree to observe: `fs` (tests), a simulated tree (`--cgroup-sim`), or the real one."""
    if fs is not None:
        return None, fs
    tree, simulated = cgroup_tree_of(args)
    if simulated:
        from memstate.host.sim.cgroupdir import DirCgroupFS

        sim = tree

        if not sim.is_dir():
            raise InputError(f"no simulated cgroup tree at {sim}", source=str(sim))
        return sim, DirCgroupFS(sim, watch=False)
    if not tree.is_dir():
        raise HostError(
            f"cgroup root {tree} is not a directory", errno=errno.ENOENT, path=str(tree)
        )
    return tree, RealCgroupFS(str(tree))


def profile_of(args: argparse.Namespace) -> WriteProfile:
    """The daemon's profile (`ownership`, `mode` of the config file): plan and diff show what
    the daemon would do, no more."""
    settings = resolve_settings(args)
    return WriteProfile(ownership=settings.ownership, mode=settings.mode)


def run_plan(args: argparse.Namespace, fs: CgroupFS | None = None) -> int:
    """`memstate plan`; `fs` replaces the tree under --cgroup-root (tests)."""
    state, removals = desired_state_and_removals(args)
    targets, page_size_bytes = targets_for(state)
    root, tree_fs = observed_tree(args, fs)
    retired = set(removals.paths)
    if args.retired and state.config is not None:  # targets_for found a config in force
        for uid in args.retired:
            retired.update(pod_paths_of_uid(state.config, uid))
    document, plan = plan_document(
        targets,
        tree_fs,
        page_size_bytes=page_size_bytes,
        retired_paths=sorted(retired),
        pod_removal=args.pod_removal,
        remove_orphans=args.remove_orphans,
        profile=profile_of(args),
    )
    document["cgroup_root"] = str(root) if root is not None else None
    converged = not plan.operations and not plan.pending_removals
    if output_format(args, piped="json") == "json":
        write_json(document)
    else:
        _print_plan(document, plan)
    return 1 if args.exit_code and not converged else 0


def _print_plan(document: dict[str, Any], plan: Plan) -> None:
    rows = [
        [
            o.index,
            o.phase,
            o.kind,
            o.path or "/",
            o.file or None,
            _shown(o.value) if o.kind in ("write", "enable", "kill") else None,
            _shown(o.observed) if o.observed is not None else None,
            list(o.requires) or None,
        ]
        for o in plan.operations
    ]
    write_table(PLAN_HEADERS, rows)
    out = sys.stdout
    for removal in plan.removals:
        populated = {True: "populated", False: "empty", None: "populated unknown"}[
            removal.populated
        ]
        out.write(f"{removal.kind} pod cgroup {removal.path} ({populated}): {removal.action}\n")
    for line in document["warnings"]:
        out.write(f"warning: {line}\n")
    for path in document["awaiting"]:
        out.write(f"awaiting {path}: not made yet by its owner (the kubelet)\n")
    for line in document["read_errors"]:
        out.write(f"read error: {line}\n")
    phases = ", ".join(f"{n} {p}" for p, n in document["summary"]["by_phase"].items())
    total = document["summary"]["operations"]
    out.write(f"\n{total} operations ({phases})\n" if total else "\nnothing to do\n")


def run_diff(args: argparse.Namespace, fs: CgroupFS | None = None) -> int:
    """`memstate diff`; `fs` replaces the tree under --cgroup-root (tests)."""
    state, removals = desired_state_and_removals(args)
    targets, page_size_bytes = targets_for(state)
    root, tree_fs = observed_tree(args, fs)
    document, rows = diff_document(
        targets,
        tree_fs,
        page_size_bytes=page_size_bytes,
        retired_paths=sorted(removals.paths),
        profile=profile_of(args),
    )
    document["cgroup_root"] = str(root) if root is not None else None
    if args.only_differences:
        document["rows"] = [r for r in document["rows"] if r["status"] != "equal"]
    different = any(r.status != "equal" for r in rows)
    if output_format(args, piped="json") == "json":
        write_json(document)
    else:
        table = [
            [
                r["path"] or "/",
                r["file"],
                _shown(r["desired"]) if r["desired"] is not None else None,
                _shown(r["observed"]) if r["observed"] is not None else None,
                r["status"],
            ]
            for r in document["rows"]
        ]
        write_table(DIFF_HEADERS, table)
        for line in document["read_errors"]:
            sys.stdout.write(f"read error: {line}\n")
        counts = ", ".join(f"{n} {status}" for status, n in document["summary"].items())
        sys.stdout.write(f"\n{counts}\n")
    return 1 if args.exit_code and different else 0


def _shown(value: str) -> str:
    """A value for a table cell: the empty value is shown as "" (written as a newline)."""
    return '""' if value in ("", EMPTY_WRITE) else value
