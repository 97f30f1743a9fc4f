"""DirCgroupFS: the persistent, directory-backed simulated cgroup v2 tree.

Goal: DirCgroupFS answers exactly like SimCgroupFS, its directory always shows what the model
holds (every interface file, with the text `read` returns), the state survives instances,
processes and SIGKILL, changes made by hand are taken in as the kernel would take such writes,
and it never writes to a directory that is not its own.

Method: the differential scenarios of tests/host/differential.py run step by step on a plain
SimCgroupFS and on a DirCgroupFS (outcomes must be equal) and the directory is compared file by
file with a reference sim; hypothesis generates operation sequences mixing API calls, edits by
hand, reopening and a second instance, mirrored on a reference sim (an edit by hand = a write of
that text, ignored when the kernel would refuse it). Subprocesses cover other processes, SIGKILL
mid-operation and concurrent use. Trees live on tmpfs (/dev/shm) when it is there: on the
development VM's ext4 a file creation costs up to a millisecond, which only slows the tests.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.core.errors import HostError
from memstate.host.cgroupfs import walk
from memstate.host.sim import cgroupdir_inotify
from memstate.host.sim.cgroupdir import (
    JOURNAL_NAME,
    MARKER_NAME,
    PRIVATE_NAME,
    DirCgroupFS,
    JournalEntry,
    SimParameters,
    _mount_type,
    read_journal,
    refused_filesystem,
)
from memstate.host.sim.cgroupdir_tree import _TreeSim as RenderableSim
from memstate.host.sim.cgroupsim import KERNEL_6_18, kernel_profile_for_release
from memstate.testing import protection_violations
from tests.host import differential

ROOT = Path(__file__).resolve().parents[2]
FULL_MACHINE = differential.VM_SHAPED_FACTS
# The development host's shape: cgroup2 with hugetlb only, a 6.18 kernel, one node.
HUGETLB_ONLY = differential.HostFacts(
    mount="/sys/fs/cgroup/unified",
    kernel_release="6.18.44",
    page_size_bytes=4096,
    hugepage_sizes_bytes=(2 << 20,),
    online_cpus="0-1",
    possible_cpus="0-3",
    online_nodes="0",
    possible_nodes="0",
    known_controllers=("cpuset", "cpu", "io", "memory", "perf_event", "hugetlb", "pids"),
    mount_controllers=("hugetlb",),
    base_controllers=("hugetlb",),
    mount_is_root=True,
)


# --- fixtures and helpers ------------------------------------------------------------------------


def _scratch_base() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh directory (tmpfs when available), removed afterwards."""
    base = tempfile.mkdtemp(prefix="memstate-cgroupdir-", dir=_scratch_base())
    try:
        yield Path(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    with scratch_dir() as path:
        yield path


@pytest.fixture(params=[True, False], ids=["inotify", "scan"])
def watch(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def parameters_for(facts: differential.HostFacts, *, on_root: bool) -> dict[str, object]:
    """DirCgroupFS keyword arguments shaped like differential.make_sim(facts)."""
    return {
        "page_size_bytes": facts.page_size_bytes,
        "controllers": facts.mount_controllers if on_root else facts.base_controllers,
        "hugepage_sizes_bytes": facts.hugepage_sizes_bytes,
        "online_cpus": facts.online_cpus,
        "possible_cpus": facts.possible_cpus,
        "online_nodes": facts.online_nodes,
        "possible_nodes": facts.possible_nodes,
        "delegated": not on_root,
        "kernel": kernel_profile_for_release(facts.kernel_release),
        "known_controllers": facts.known_controllers,
    }


def reference_for(fs: DirCgroupFS) -> RenderableSim:
    """A fresh reference sim for the same machine (the renderable subclass: it only adds
    read-only methods, and test_render_matches_read checks them against `read`)."""
    return fs.parameters.make_sim()


def expected_tree(sim: RenderableSim) -> dict[str, dict[str, str]]:
    """cgroup path → interface file → text, as the directory must show it."""
    return {path: sim.render(path) for path in walk(sim, "")}


def disk_tree(root: Path) -> dict[str, dict[str, str]]:
    """The same shape, read from the directory (hidden entries at the root left out)."""
    tree: dict[str, dict[str, str]] = {}
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        path = "" if relative == "." else relative
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        visible = [name for name in files if not name.startswith(".")]
        tree[path] = {name: (Path(directory) / name).read_text() for name in visible}
    return tree


def assert_disk_matches(root: Path, reference: RenderableSim) -> None:
    expected, actual = expected_tree(reference), disk_tree(root)
    assert sorted(actual) == sorted(expected), "cgroup directories differ"
    for path in expected:
        assert actual[path] == expected[path], f"files of {path or '<root>'} differ"


def outcome(action: Callable[[], object]) -> str:
    """ok / ok <result> / the errno name / KeyError, like the differential test renders them."""
    try:
        result = action()
    except HostError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    except KeyError:
        return "KeyError"
    return "ok" if result is None else f"ok {result!r}"


class DirDriver(differential.Driver):
    """Runs differential steps on a DirCgroupFS (fake processes instead of real ones)."""

    def __init__(self, fs: DirCgroupFS) -> None:
        self.fs = self.dir_fs = fs

    def start_process(self) -> int:
        return self.dir_fs.spawn(None)

    def terminate(self, pid: int) -> None:
        self.dir_fs.exit(pid, -signal.SIGTERM)

    def wait_exit(self, pid: int) -> str:
        status = self.dir_fs.exit_status(pid)
        return "running" if status is None else f"exit {status}"


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=timeout,
    )


def spawn_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def replay_reference(root: Path) -> RenderableSim:
    """A reference sim built from the journal with public SimCgroupFS calls only."""
    with DirCgroupFS(root) as fs:
        reference = reference_for(fs)
    for entry in read_journal(root):
        path = entry.path
        if entry.op == "mkdir":
            reference.mkdir(path or "")
        elif entry.op == "rmdir":
            reference.rmdir(path or "")
        elif entry.op == "write":
            reference.write(path or "", entry.file or "", entry.value or "")
        elif entry.op == "remove":
            subtree = list(walk(reference, path or "", topdown=False))
            reference.write(path or "", "cgroup.kill", "1")
            for node in subtree:
                reference.rmdir(node)
        elif entry.op == "spawn":
            with contextlib.suppress(HostError):
                assert reference.spawn(path) == entry.process
        elif entry.op == "exit":
            reference.exit(entry.process or 0, entry.status or 0)
        elif entry.op == "memory_usage":
            reference.set_memory_usage(path or "", entry.usage_bytes or 0)
        elif entry.op == "memory_event":
            reference.add_memory_event(path or "", entry.event or "", entry.count or 1)
        else:
            raise AssertionError(f"unexpected journal entry {entry}")
    return reference


# --- differential scenarios: the same outcomes as SimCgroupFS ------------------------------------


SHAPES = {"full_machine": FULL_MACHINE, "hugetlb_only": HUGETLB_ONLY}
# Only the (shape, scenario) pairs the scenario can be built for: a scenario needing what a
# shape lacks is not a case (test_every_scenario_runs_on_some_shape keeps that honest).
SCENARIO_CASES = [
    (shape, name)
    for shape, facts in SHAPES.items()
    for name in sorted(differential.BUILDERS)
    if not isinstance(differential.BUILDERS[name](facts), str)
]


def test_every_scenario_runs_on_some_shape() -> None:
    assert {name for _shape, name in SCENARIO_CASES} == set(differential.BUILDERS)
    assert {shape for shape, _name in SCENARIO_CASES} == set(SHAPES)


@pytest.mark.parametrize(("shape", "name"), SCENARIO_CASES)
def test_scenario_matches_simcgroupfs(shape: str, name: str, scratch: Path) -> None:
    """Every differential scenario gives the same step outcomes on DirCgroupFS as on
    SimCgroupFS, and afterwards the directory shows exactly the reference sim's files."""
    facts = SHAPES[shape]
    built = differential.BUILDERS[name](facts)
    assert isinstance(built, differential.Scenario)
    sim_outcomes = differential.run_steps(
        differential.SimDriver(differential.make_sim(facts, on_root=built.on_root)), built.steps
    )
    parameters = parameters_for(facts, on_root=built.on_root)
    with DirCgroupFS(scratch / "tree", **parameters) as fs:  # type: ignore[arg-type]
        dir_outcomes = differential.run_steps(DirDriver(fs), built.steps)
        reference = reference_for(fs)
    assert dir_outcomes == sim_outcomes
    # Replaying the same steps on the renderable reference gives the expected directory.
    assert differential.run_steps(differential.SimDriver(reference), built.steps) == sim_outcomes
    assert_disk_matches(scratch / "tree", reference)
    # And a new instance, rebuilt from the journal alone, agrees.
    with DirCgroupFS(scratch / "tree") as reopened:
        for path in walk(reference, ""):
            for file in reopened.list_files(path):
                assert outcome(partial(reopened.read, path, file)) == outcome(
                    partial(reference.read, path, file)
                )


def test_render_matches_read(scratch: Path) -> None:
    """The renderable sim's texts are exactly SimCgroupFS.read's, file by file (write-only
    cgroup.kill renders empty, as the directory shows it)."""
    with DirCgroupFS(scratch / "tree", online_nodes="0-1") as fs:
        fs.write("", "cgroup.subtree_control", "+memory +cpuset +hugetlb +pids")
        fs.mkdir("a")
        fs.write("a", "cgroup.subtree_control", "+memory +cpuset")
        fs.mkdir("a/b")
        fs.spawn("a/b")
        fs.write("a/b", "memory.max", "1G")
        fs.write("a", "cpuset.cpus", "1")
        fs.set_memory_usage("a/b", 8192)
        fs.add_memory_event("a/b", "oom_kill")
        reference = replay_reference(scratch / "tree")
        rendered = expected_tree(reference)
        for path, files in rendered.items():
            assert sorted(files) == fs.list_files(path)
            for file, text in files.items():
                if file == "cgroup.kill":
                    assert text == ""
                    assert outcome(partial(fs.read, path, "cgroup.kill")) == "EINVAL"
                else:
                    assert text == reference.read(path, file) == fs.read(path, file)
        assert_disk_matches(scratch / "tree", reference)


# --- hypothesis: API calls, edits by hand, reopening, a second instance --------------------------

PATHS = ("a", "b", "a/b", "a/c", "a/b/c")
FILE_VALUES = {
    "memory.min": ("1000000", "max", "garbage", "0x1000", "\n", "1G", "-1"),
    "memory.max": ("536870912", "max", "512MB", "4097"),
    "memory.oom.group": ("1", "2"),
    "cpuset.cpus": ("0-1", "0", "1", "5", "garbage", "\n", "0,1"),
    "cpuset.mems": ("0", "1", "\n"),
    "hugetlb.2MB.max": ("4194304", "1000000", "max", "010"),
    "cgroup.subtree_control": (
        "+memory",
        "-memory",
        "+cpuset +memory",
        "+hugetlb",
        "-cpuset",
        "+bogus",
        "-hugetlb -memory",
    ),
    "cgroup.freeze": ("1", "0"),
    "cgroup.kill": ("1", "2"),
    "cgroup.events": ("populated 0\n",),
    "cgroup.type": ("threaded",),
}

operation = st.one_of(
    st.tuples(st.just("mkdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("rmdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("read"), st.sampled_from(("", *PATHS)), st.sampled_from(sorted(FILE_VALUES))),
    st.sampled_from(sorted(FILE_VALUES)).flatmap(
        lambda file: st.tuples(
            st.sampled_from(("write", "hand_write")),
            st.sampled_from(("", *PATHS)),
            st.just(file),
            st.sampled_from(FILE_VALUES[file]),
        )
    ),
    st.tuples(st.just("spawn"), st.sampled_from((None, *PATHS))),
    st.tuples(st.just("exit"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("move"), st.integers(min_value=0, max_value=3), st.sampled_from(PATHS)),
    st.tuples(st.just("hand_move"), st.integers(min_value=0, max_value=3), st.sampled_from(PATHS)),
    st.tuples(st.just("hand_mkdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("hand_remove"), st.sampled_from(PATHS)),
    st.tuples(st.just("reopen"), st.integers(min_value=0, max_value=1)),
    st.tuples(
        st.just("switch"),
    ),
)


class Harness:
    """One DirCgroupFS world (two instances) and its reference sim, step by step."""

    def __init__(self, root: Path, *, watch: bool) -> None:
        self.root = root
        self.watch = watch
        first = DirCgroupFS(root, online_nodes="0-1", hugepage_sizes_bytes=(2 << 20,), watch=watch)
        self.instances = [first, DirCgroupFS(root, watch=watch)]
        self.current = 0
        self.reference = reference_for(first)
        self.pids: list[int] = []

    @property
    def fs(self) -> DirCgroupFS:
        return self.instances[self.current]

    def close(self) -> None:
        for instance in self.instances:
            instance.close()

    def pid(self, index: int) -> int:
        return self.pids[index % len(self.pids)] if self.pids else 999_999

    def step(self, op: tuple[object, ...]) -> None:
        kind = str(op[0])
        fs, reference = self.fs, self.reference
        if kind == "mkdir":
            path = str(op[1])
            assert outcome(lambda: fs.mkdir(path)) == outcome(lambda: reference.mkdir(path))
        elif kind == "rmdir":
            path = str(op[1])
            assert outcome(lambda: fs.rmdir(path)) == outcome(lambda: reference.rmdir(path))
        elif kind == "read":
            path, file = str(op[1]), str(op[2])
            assert outcome(lambda: fs.read(path, file)) == outcome(
                lambda: reference.read(path, file)
            )
        elif kind == "write":
            path, file, value = str(op[1]), str(op[2]), str(op[3])
            assert outcome(lambda: fs.write(path, file, value)) == outcome(
                lambda: reference.write(path, file, value)
            )
        elif kind == "hand_write":
            self.hand_write(str(op[1]), str(op[2]), str(op[3]))
        elif kind == "spawn":
            place = None if op[1] is None else str(op[1])
            got = outcome(lambda: fs.spawn(place))
            assert got == outcome(lambda: reference.spawn(place))
            if got.startswith("ok"):
                self.pids.append(int(got.split()[1]))
        elif kind == "exit":
            pid = self.pid(int(str(op[1])))
            assert outcome(lambda: fs.exit(pid, -9)) == outcome(lambda: reference.exit(pid, -9))
        elif kind == "move":
            pid, path = self.pid(int(str(op[1]))), str(op[2])
            assert outcome(lambda: fs.write(path, "cgroup.procs", str(pid))) == outcome(
                lambda: reference.write(path, "cgroup.procs", str(pid))
            )
        elif kind == "hand_move":
            self.hand_write(str(op[2]), "cgroup.procs", f"{self.pid(int(str(op[1])))}\n")
        elif kind == "hand_mkdir":
            self.hand_mkdir(str(op[1]))
        elif kind == "hand_remove":
            self.hand_remove(str(op[1]))
        elif kind == "reopen":
            index = int(str(op[1]))
            self.instances[index].close()
            self.instances[index] = DirCgroupFS(self.root, watch=self.watch)
        elif kind == "switch":
            self.current = 1 - self.current
        if not kind.startswith("hand_") and kind != "switch":
            # Any call takes in the edits made by hand before it and renders; the directory
            # must then show exactly the reference.
            assert_disk_matches(self.root, self.reference)

    def hand_write(self, path: str, file: str, text: str) -> None:
        target = self.root / path / file
        if not self.reference.exists(path) or not target.is_file() or text == "":
            return
        target.write_text(text)
        # The kernel's view of the same edit: a write of that text, ignored when refused.
        with contextlib.suppress(HostError):
            self.reference.write(path, file, text)

    def hand_mkdir(self, path: str) -> None:
        target = self.root / path
        parent = path.rpartition("/")[0]
        if not self.reference.exists(parent) or os.path.lexists(target):
            return
        target.mkdir()
        self.reference.mkdir(path)

    def hand_remove(self, path: str) -> None:
        if not self.reference.exists(path):
            return
        shutil.rmtree(self.root / path)
        subtree = list(walk(self.reference, path, topdown=False))
        self.reference.write(path, "cgroup.kill", "1")
        for node in subtree:
            self.reference.rmdir(node)


@pytest.mark.parametrize("watch_mode", [True, False], ids=["inotify", "scan"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(operation, max_size=30))
def test_random_operations_match_a_reference_sim(
    watch_mode: bool, operations: list[tuple[object, ...]]
) -> None:
    """Random mixes of calls, edits by hand, restarts and a second instance: every call's
    outcome equals the reference sim's and the directory shows the reference after each call."""
    with scratch_dir() as base:
        harness = Harness(base / "tree", watch=watch_mode)
        try:
            for op in operations:
                harness.step(op)
            harness.fs.refresh()
            assert_disk_matches(harness.root, harness.reference)
            other = harness.instances[1 - harness.current]
            for path in walk(harness.reference, ""):
                assert other.read(path, "cgroup.procs") == harness.reference.read(
                    path, "cgroup.procs"
                )
        finally:
            harness.close()
        # The journal alone rebuilds the same tree.
        assert_disk_matches(harness.root, replay_reference(harness.root))
        entries = read_journal(harness.root)
        assert [entry.n for entry in entries] == list(range(1, len(entries) + 1))


# --- creation, refusal, parameters ---------------------------------------------------------------


def test_creates_a_tree_in_a_missing_directory(scratch: Path) -> None:
    root = scratch / "deep" / "tree"
    with DirCgroupFS(root, online_nodes="0-1", hugepage_sizes_bytes=()) as fs:
        names = sorted(os.listdir(root))
        assert {MARKER_NAME, JOURNAL_NAME, PRIVATE_NAME} <= set(names)
        assert (root / "cgroup.controllers").read_text() == "cpuset cpu io memory hugetlb pids\n"
        assert (root / "cgroup.procs").read_text() == ""
        assert (root / "cpuset.mems.effective").read_text() == "0-1\n"
        assert fs.parameters.online_nodes == "0-1"
        assert fs.read("", "cgroup.subtree_control") == ""
        assert not (root / "memory.min").exists()  # the root cgroup has none
    assert read_journal(root) == []


def test_existing_tree_is_opened_with_its_marker(scratch: Path) -> None:
    with DirCgroupFS(scratch / "t", page_size_bytes=65536, online_nodes="0,1"):
        pass
    with DirCgroupFS(scratch / "t") as fs:
        assert fs.page_size_bytes == 65536
        assert fs.parameters.online_nodes == "0-1"  # stored in canonical form
    # The same parameters, spelled differently, are accepted.
    with DirCgroupFS(scratch / "t", page_size_bytes=65536, online_nodes="0-1"):
        pass
    with pytest.raises(HostError) as caught:
        DirCgroupFS(scratch / "t", page_size_bytes=4096)
    assert caught.value.errno == errno.EINVAL
    assert "page_size_bytes is 65536, asked for 4096" in str(caught.value)


def test_non_empty_directory_without_marker_is_refused(scratch: Path) -> None:
    (scratch / "notes.txt").write_text("mine\n")
    before = sorted(os.listdir(scratch))
    with pytest.raises(HostError) as caught:
        DirCgroupFS(scratch)
    assert caught.value.errno == errno.ENOTEMPTY
    assert sorted(os.listdir(scratch)) == before  # nothing written


def test_a_file_is_refused(scratch: Path) -> None:
    (scratch / "file").write_text("x")
    with pytest.raises(HostError) as caught:
        DirCgroupFS(scratch / "file")
    assert caught.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_unfinished_initialisation_is_completed(scratch: Path) -> None:
    """A creator killed before writing the marker leaves the private directory: the next
    instance initialises the tree instead of refusing it."""
    with DirCgroupFS(scratch / "t"):
        pass
    (scratch / "t" / MARKER_NAME).unlink()
    with DirCgroupFS(scratch / "t", online_nodes="0") as fs:
        assert fs.read("", "cgroup.procs") == ""
        assert (scratch / "t" / MARKER_NAME).is_file()


def test_mount_table_parsing_finds_the_containing_mount() -> None:
    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup2 /mnt/with\\040space cgroup2 rw 0 0\n"
    )
    assert _mount_type("/sys/fs/cgroup/unified/x/y", mounts) == "cgroup2"
    assert _mount_type("/sys/fs/cgroup/unified", mounts) == "cgroup2"
    assert _mount_type("/sys/fs/cgroup/unifiedx", mounts) == "tmpfs"
    assert _mount_type("/mnt/with space/a", mounts) == "cgroup2"
    assert _mount_type("/home/u", mounts) == "ext4"


def test_proc_is_refused() -> None:
    """procfs is always mounted: the filesystem check must recognise it."""
    assert refused_filesystem("/proc/self") == "proc"
    with pytest.raises(HostError) as caught:
        DirCgroupFS("/proc/memstate-never-created")
    assert caught.value.errno == errno.EPERM


def _cgroup_mounts() -> list[str]:
    points = []
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] in ("cgroup", "cgroup2"):
                points.append(fields[1])
    return points


def test_real_cgroup_filesystems_are_refused() -> None:
    """Never scribble over a real cgroupfs: opening it, or a new directory below it (which
    would be a real mkdir of a cgroup), fails before anything is created."""
    mounts = _cgroup_mounts()
    if not mounts:
        pytest.skip("no cgroup or cgroup2 filesystem is mounted on this machine")
    for mount in mounts:
        assert refused_filesystem(mount) in ("cgroup", "cgroup2")
        with pytest.raises(HostError) as caught:
            DirCgroupFS(mount)
        assert caught.value.errno == errno.EPERM
        below = Path(mount) / f"memstate-refusal-test-{os.getpid()}" / "tree"
        try:
            with pytest.raises(HostError):
                DirCgroupFS(below)
            assert not below.parent.exists()
        finally:
            with contextlib.suppress(OSError):
                below.parent.rmdir()  # only if the refusal failed: remove the real cgroup


# --- persistence, other processes, crashes --------------------------------------------------------


def test_state_survives_reopening(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("kubepods")
        fs.write("kubepods", "memory.min", "1000000")
        pid = fs.spawn("kubepods")
        other = fs.spawn(None)
        fs.exit(other, 3)
    with DirCgroupFS(root) as fs:
        assert fs.read("kubepods", "memory.min") == "999424\n"
        assert fs.read("kubepods", "cgroup.procs") == f"{pid}\n"
        assert fs.read("kubepods", "cgroup.events") == "populated 1\nfrozen 0\n"
        assert fs.cgroup_of(pid) == "kubepods"
        assert fs.exit_status(other) == 3
        assert outcome(lambda: fs.rmdir("kubepods")) == "EBUSY"
        assert fs.spawn(None) == other + 1  # pids keep counting
    assert (root / "kubepods" / "memory.min").read_text() == "999424\n"


def test_another_process_sees_writes_and_vice_versa(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        run_python(
            """
            import sys
            from memstate.host.sim.cgroupdir import DirCgroupFS
            with DirCgroupFS(sys.argv[1]) as fs:
                fs.write("a", "memory.low", "1G")
                fs.mkdir("a/b")
                print(fs.spawn("a/b"))
            """,
            str(root),
        )
        assert (root / "a" / "memory.low").read_text() == "1073741824\n"
        assert fs.read("a", "memory.low") == "1073741824\n"
        assert fs.read("a", "cgroup.events") == "populated 1\nfrozen 0\n"
        assert outcome(lambda: fs.rmdir("a/b")) == "EBUSY"
        fs.write("a/b", "cgroup.kill", "1")
        fs.write("a", "memory.max", "4097")
    result = run_python(
        """
        import sys
        from memstate.host.sim.cgroupdir import DirCgroupFS
        with DirCgroupFS(sys.argv[1]) as fs:
            print(repr(fs.read("a", "memory.max")), repr(fs.read("a/b", "cgroup.procs")))
            print(fs.exit_status(1000))
        """,
        str(root),
    )
    assert result.stdout.split("\n")[:2] == ["'4096\\n' ''", "-9"]


def test_killed_writer_leaves_a_consistent_tree(scratch: Path) -> None:
    """SIGKILL at a random point of a busy writer, several times: each reopening shows a
    directory that matches the journal exactly, and no half-rendered file is mistaken for an
    edit made by hand."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory +cpuset")
    writer = """
        import sys
        from memstate.host.sim.cgroupdir import DirCgroupFS
        fs = DirCgroupFS(sys.argv[1])
        print("ready", flush=True)
        n = 0
        while True:
            n += 1
            path = f"p{n % 7}"
            # Each step checks first: an earlier round may have been killed between two.
            if not fs.exists(path):
                fs.mkdir(path)
            fs.write(path, "cgroup.subtree_control", "+memory")
            if not fs.exists(path + "/c"):
                fs.mkdir(path + "/c")
            fs.write(path + "/c", "memory.min", str(n * 4096))
            fs.write(path, "cpuset.cpus", "0-1" if n % 2 else "1")
            if n % 5 == 0:
                fs.rmdir(path + "/c")
                fs.rmdir(path)
    """
    for round_index in range(4):
        process = spawn_python(writer, str(root))
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        # Let it run for a number of operations that differs from round to round.
        target = 20 * (round_index + 1)
        while len(read_journal(root)) < target * (round_index + 1):
            if process.poll() is not None:
                raise AssertionError(process.stderr.read() if process.stderr else "died")
            time.sleep(0.005)  # polling pace only; nothing is asserted about time
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        with DirCgroupFS(root) as fs:
            fs.refresh()
        entries = read_journal(root)
        assert [entry.n for entry in entries] == list(range(1, len(entries) + 1))
        assert not [entry for entry in entries if entry.source == "outside"]
        assert_disk_matches(root, replay_reference(root))


def test_interrupted_render_is_repaired(scratch: Path) -> None:
    """A writer that dies after journaling but before rendering: the next instance renders the
    change instead of taking the stale file for an edit made by hand."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
    with pytest.raises(subprocess.CalledProcessError) as caught:
        run_python(
            """
            import os, signal, sys
            from memstate.host.sim import cgroupdir
            fs = cgroupdir.DirCgroupFS(sys.argv[1])
            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)
            cgroupdir.DirCgroupFS._write_file = die
            cgroupdir.DirCgroupFS._create_directory = die
            fs.write("a", "memory.min", "1G")
            """,
            str(root),
        )
    assert caught.value.returncode == -signal.SIGKILL
    assert (root / "a" / "memory.min").read_text() == "0\n"  # journaled, never rendered
    with DirCgroupFS(root) as fs:
        assert fs.read("a", "memory.min") == "1073741824\n"
    assert (root / "a" / "memory.min").read_text() == "1073741824\n"
    assert [entry.source for entry in read_journal(root)] == ["api", "api", "api"]


def test_torn_journal_line_is_cut_off(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.mkdir("a")
    with open(root / JOURNAL_NAME, "ab") as journal:
        journal.write(b'{"n":2,"op":"mkdir","source":"api","path":"b","wri')
    assert len(read_journal(root)) == 1
    with DirCgroupFS(root) as fs:
        assert fs.list_children("") == ["a"]
        fs.mkdir("c")
    assert [(entry.n, entry.path) for entry in read_journal(root)] == [(1, "a"), (2, "c")]


# --- edits by hand -------------------------------------------------------------------------------


@pytest.fixture
def memory_tree(scratch: Path, watch: bool) -> Iterator[tuple[DirCgroupFS, Path]]:
    root = scratch / "t"
    with DirCgroupFS(root, online_nodes="0-1", watch=watch) as fs:
        fs.write("", "cgroup.subtree_control", "+memory +cpuset")
        fs.mkdir("a")
        fs.write("a", "memory.min", "8192")
        yield fs, root


def test_valid_hand_edit_is_taken_as_a_write(memory_tree: tuple[DirCgroupFS, Path]) -> None:
    fs, root = memory_tree
    (root / "a" / "memory.min").write_text("1G\n")
    assert fs.read("a", "memory.min") == "1073741824\n"
    assert (root / "a" / "memory.min").read_text() == "1073741824\n"  # normalised on disk
    last = read_journal(root)[-1]
    assert (last.op, last.source, last.value, last.stored) == (
        "write",
        "outside",
        "1G\n",
        "1073741824\n",
    )


def test_refused_hand_edit_keeps_the_value(memory_tree: tuple[DirCgroupFS, Path]) -> None:
    fs, root = memory_tree
    count = len(read_journal(root))
    for text in ("garbage\n", "-1\n", "512MB"):
        (root / "a" / "memory.min").write_text(text)
        assert fs.read("a", "memory.min") == "8192\n"
        assert (root / "a" / "memory.min").read_text() == "8192\n"  # restored
    (root / "a" / "memory.current").write_text("5\n")  # read-only: EINVAL
    assert fs.read("a", "memory.current") == "0\n"
    assert (root / "a" / "memory.current").read_text() == "0\n"
    assert len(read_journal(root)) == count  # refused writes change nothing


def test_emptied_file_reads_its_value(memory_tree: tuple[DirCgroupFS, Path]) -> None:
    """An empty file is a zero-length write (never reaches the handler) and is left alone, so
    that a shell's ``>`` is not overwritten before its text arrives."""
    fs, root = memory_tree
    (root / "a" / "memory.min").write_text("")
    assert fs.read("a", "memory.min") == "8192\n"
    assert (root / "a" / "memory.min").read_text() == ""
    fs.write("a", "memory.min", "8192")
    assert (root / "a" / "memory.min").read_text() == "8192\n"  # rendered again by a write


def test_hand_made_directories_become_cgroups(memory_tree: tuple[DirCgroupFS, Path]) -> None:
    fs, root = memory_tree
    (root / "a" / "x" / "y").mkdir(parents=True)
    (root / "a" / "x" / "y" / "memory.max").write_text("1M\n")  # not a file of x/y yet
    assert fs.list_children("a") == ["x"]
    assert fs.list_children("a/x") == ["y"]
    assert (root / "a" / "x" / "cgroup.type").read_text() == "domain\n"
    assert (root / "a" / "memory.min").read_text() == "8192\n"
    assert (root / "a" / "x" / "y" / "cgroup.events").read_text() == "populated 0\nfrozen 0\n"
    assert fs.read("a", "cgroup.stat") == "nr_descendants 2\nnr_dying_descendants 0\n"
    # x has no +memory, so y has no memory files: the hand-made memory.max cannot exist there
    # and is removed when the new cgroup's files are put in.
    assert fs.list_files("a/x/y") == sorted(
        name for name in os.listdir(root / "a" / "x" / "y") if not name.startswith(".")
    )
    assert "memory.max" not in fs.list_files("a/x/y")
    (root / ".hidden").mkdir()
    (root / "not a name").mkdir()
    assert fs.list_children("") == ["a"]


def test_hand_removed_cgroup_disappears(memory_tree: tuple[DirCgroupFS, Path]) -> None:
    fs, root = memory_tree
    fs.mkdir("a/b")
    pid = fs.spawn("a/b")
    shutil.rmtree(root / "a" / "b")
    assert fs.list_children("a") == []
    assert fs.exit_status(pid) == -9
    assert fs.read("a", "cgroup.events") == "populated 0\nfrozen 0\n"
    assert (root / "a" / "cgroup.events").read_text() == "populated 0\nfrozen 0\n"
    assert read_journal(root)[-1].op == "remove"


def test_renamed_directory_is_a_removal_and_a_new_cgroup(
    memory_tree: tuple[DirCgroupFS, Path],
) -> None:
    fs, root = memory_tree
    pid = fs.spawn("a")
    os.rename(root / "a", root / "b")
    assert fs.list_children("") == ["b"]
    assert fs.exit_status(pid) == -9
    # The copied files are edits of the new cgroup: the value is taken, the pid is gone (ESRCH).
    assert fs.read("b", "memory.min") == "8192\n"
    assert fs.read("b", "cgroup.procs") == ""


def test_hand_kill_and_hand_move(memory_tree: tuple[DirCgroupFS, Path]) -> None:
    fs, root = memory_tree
    fs.mkdir("a/b")
    fs.mkdir("a/c")
    first, second = fs.spawn("a/b"), fs.spawn("a/b")
    (root / "a" / "c" / "cgroup.procs").write_text(f"{second}\n")
    assert fs.read("a/c", "cgroup.procs") == f"{second}\n"
    assert (root / "a" / "b" / "cgroup.procs").read_text() == f"{first}\n"
    (root / "a" / "b" / "cgroup.kill").write_text("1\n")
    assert fs.exit_status(first) == -9
    assert fs.exit_status(second) is None
    assert (root / "a" / "b" / "cgroup.kill").read_text() == ""
    assert (root / "a" / "b" / "cgroup.events").read_text() == "populated 0\nfrozen 0\n"


def test_deleted_interface_file_comes_back_at_a_full_scan(
    memory_tree: tuple[DirCgroupFS, Path],
) -> None:
    fs, root = memory_tree
    (root / "a" / "memory.low").unlink()
    assert fs.read("a", "memory.low") == "0\n"
    with DirCgroupFS(root):  # opening compares everything
        pass
    assert (root / "a" / "memory.low").read_text() == "0\n"


def test_edits_made_while_no_instance_runs(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
    (root / "a" / "memory.high").write_text("64M\n")
    (root / "cgroup.subtree_control").write_text("-memory\n")
    (root / "b").mkdir()
    with DirCgroupFS(root) as fs:
        # Applied in directory order: the root's subtree_control first, which drops memory.*
        # from its children before a/memory.high is looked at.
        assert fs.read("", "cgroup.subtree_control") == ""
        assert fs.list_children("") == ["a", "b"]
        assert outcome(lambda: fs.read("a", "memory.high")) == "ENOENT"
        assert not (root / "a" / "memory.high").exists()


def test_an_idle_instance_sees_edits_and_other_instances(scratch: Path, watch: bool) -> None:
    root = scratch / "t"
    with DirCgroupFS(root, watch=watch) as first, DirCgroupFS(root, watch=watch) as second:
        first.write("", "cgroup.subtree_control", "+memory")
        first.mkdir("a")
        (root / "a" / "memory.max").write_text("max\n")
        (root / "a" / "memory.min").write_text("4096\n")
        assert second.read("a", "memory.min") == "4096\n"
        assert first.read("a", "memory.min") == "4096\n"
        outside = [entry for entry in read_journal(root) if entry.source == "outside"]
        assert [(entry.file, entry.stored) for entry in outside] == [("memory.min", "4096\n")]
        second.rmdir("a")
        assert not first.exists("a")


# --- fake processes, journal ---------------------------------------------------------------------


def test_fake_processes_and_cgroup_kill(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.write("a", "cgroup.subtree_control", "+memory")
        fs.mkdir("a/b")
        inner = fs.spawn("a/b")
        assert outcome(lambda: fs.spawn("a")) == "EBUSY"  # no internal processes
        outside = fs.spawn(None)
        assert (root / "a" / "cgroup.events").read_text() == "populated 1\nfrozen 0\n"
        assert (root / "a" / "b" / "cgroup.procs").read_text() == f"{inner}\n"
        fs.write("a", "cgroup.kill", "1")
        assert fs.exit_status(inner) == -9
        assert fs.exit_status(outside) is None
        assert (root / "a" / "b" / "cgroup.procs").read_text() == ""
        fs.rmdir("a/b")
        with pytest.raises(KeyError):
            fs.exit(inner)
    spawns = [entry for entry in read_journal(root) if entry.op == "spawn"]
    assert [(entry.path, entry.process, entry.error) for entry in spawns] == [
        ("a/b", inner, None),
        ("a", None, "EBUSY"),
        (None, outside, None),
    ]
    assert outside == inner + 2  # the failed placement used up a pid, as in SimCgroupFS


def test_journal_records_every_change(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.write("a", "memory.min", "1000000")
        with contextlib.suppress(HostError):
            fs.write("a", "memory.min", "garbage")  # refused: not journaled
        fs.read("a", "memory.min")  # reads are not journaled
        fs.set_memory_usage("a", 4096)
        fs.add_memory_event("a", "oom_kill", 2)
        fs.rmdir("a")
    entries = read_journal(root)
    assert [(e.n, e.op, e.path, e.file) for e in entries] == [
        (1, "write", "", "cgroup.subtree_control"),
        (2, "mkdir", "a", None),
        (3, "write", "a", "memory.min"),
        (4, "memory_usage", "a", None),
        (5, "memory_event", "a", None),
        (6, "rmdir", "a", None),
    ]
    assert (entries[2].value, entries[2].stored) == ("1000000", "999424\n")
    assert entries[0].stored == "memory\n"
    assert all(entry.source == "api" and entry.writer == os.getpid() for entry in entries)
    raw = (root / JOURNAL_NAME).read_text().splitlines()[2]
    assert raw.startswith('{"n":3,"op":"write","source":"api","path":"a","file":"memory.min"')


def _entries(*changes: tuple[str, str, str, str]) -> list[JournalEntry]:
    return [
        JournalEntry(
            n=index + 1,
            op=op,
            source="api",
            path=path,
            file=file or None,
            stored=stored or None,
            writer=1,
            time_ns=0,
        )
        for index, (op, path, file, stored) in enumerate(changes)
    ]


def test_protection_violations_finds_a_lowering_write() -> None:
    setup = [
        ("write", "", "cgroup.subtree_control", "memory\n"),
        ("mkdir", "kubepods", "", ""),
        ("write", "kubepods", "cgroup.subtree_control", "memory\n"),
        ("mkdir", "kubepods/pod1", "", ""),
    ]
    safe = _entries(
        *setup,
        ("write", "kubepods", "memory.min", "2048\n"),
        ("write", "kubepods/pod1", "memory.min", "2048\n"),
        ("write", "kubepods/pod1", "memory.min", "0\n"),
        ("write", "kubepods", "memory.min", "0\n"),
    )
    assert protection_violations(safe) == []
    unsafe = _entries(
        *setup,
        ("write", "kubepods/pod1", "memory.low", "max\n"),
        ("write", "kubepods", "memory.low", "max\n"),
    )
    assert protection_violations(unsafe) == ["#5: kubepods/memory.low 0 < children max"]


def test_protection_violations_on_a_real_journal(scratch: Path) -> None:
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("k")
        fs.write("k", "cgroup.subtree_control", "+memory")
        fs.mkdir("k/p")
        fs.write("k", "memory.min", "8192")
        fs.write("k/p", "memory.min", "8192")
        assert protection_violations(read_journal(root)) == []
        (root / "k" / "memory.min").write_text("4096\n")  # lowered by hand
        fs.refresh()
    assert protection_violations(read_journal(root)) == ["#7: k/memory.min 4096 < children 8192"]


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_processes_never_show_torn_values(scratch: Path) -> None:
    """Two writer processes and this reader at once: every plain read of a file sees one of the
    complete values ever written; afterwards the journal and the directory agree."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
    writer = """
        import sys
        from memstate.host.sim.cgroupdir import DirCgroupFS
        fs = DirCgroupFS(sys.argv[1])
        values = sys.argv[2].split(",")
        print("ready", flush=True)
        sys.stdin.readline()
        for n in range(150):
            fs.write("a", "memory.max", values[n % len(values)])
            fs.read("a", "memory.max")
            if n % 10 == 0:
                fs.mkdir(f"a/{sys.argv[3]}{n}")
                fs.rmdir(f"a/{sys.argv[3]}{n}")
    """
    long_values = "9223372036854767616,1099511627776"
    short_values = "4096,max"
    writers = [
        spawn_python(writer, str(root), long_values, "x"),
        spawn_python(writer, str(root), short_values, "y"),
    ]
    for process in writers:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
    allowed = {"max\n", "4096\n", "9223372036854767616\n", "1099511627776\n"}
    seen: list[str] = []
    with DirCgroupFS(root) as fs:
        for process in writers:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        while True:
            running = any(process.poll() is None for process in writers)
            seen.append((root / "a" / "memory.max").read_text())
            assert fs.read("a", "memory.max") in allowed
            if not running:
                break
    for process in writers:
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    assert seen
    assert set(seen) <= allowed, set(seen) - allowed
    entries = read_journal(root)
    assert [entry.n for entry in entries] == list(range(1, len(entries) + 1))
    last_max = [entry for entry in entries if entry.file == "memory.max"][-1]
    assert (root / "a" / "memory.max").read_text() == last_max.stored
    assert_disk_matches(root, replay_reference(root))


def test_locked_block_hides_a_multi_file_edit(scratch: Path) -> None:
    """Inside `locked()` other processes wait: one reading both files under its own lock sees
    both hand edits or neither."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.mkdir("b")
        reader = spawn_python(
            """
            import sys
            from memstate.host.sim.cgroupdir import DirCgroupFS
            fs = DirCgroupFS(sys.argv[1])
            print("ready", flush=True)
            for _ in range(1_000_000):  # until the edit shows (bounded, not timed)
                with fs.locked():
                    pair = (fs.read("a", "memory.min"), fs.read("b", "memory.min"))
                if pair[0] != pair[1]:
                    print("torn", pair, flush=True)
                    break
                if pair[0] == "8192\\n":
                    print("both", flush=True)
                    break
            """,
            str(root),
        )
        assert reader.stdout is not None
        assert reader.stdout.readline() == "ready\n"
        with fs.locked():
            (root / "a" / "memory.min").write_text("8192\n")
            (root / "b" / "memory.min").write_text("8192\n")
            assert fs.read("a", "memory.min") == "8192\n"  # re-entrant for this instance
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        assert out == "both\n"


def test_an_operation_of_another_thread_waits_for_a_locked_block(scratch: Path) -> None:
    """The lock is re-entrant per thread, not per instance: while one thread holds `locked()`,
    a write by another thread through the same instance waits for the block to end (as the
    daemon's event loop reading through the reconciler's instance during a round must)."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        inside, written = threading.Event(), threading.Event()
        failures: list[BaseException] = []

        def other_thread() -> None:
            try:
                inside.wait(timeout=60)
                fs.write("a", "memory.min", "8192")
                written.set()
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        with fs.locked():
            journaled = len(read_journal(root))
            inside.set()
            # With a per-instance count the write would run now, inside this block.
            assert not written.wait(timeout=1.0), "another thread operated inside the block"
            assert fs.read("a", "memory.min") == "0\n"
            assert len(read_journal(root)) == journaled
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert failures == []
        assert fs.read("a", "memory.min") == "8192\n"
    assert_disk_matches(root, replay_reference(root))


def test_two_threads_share_an_instance(scratch: Path) -> None:
    """Two threads writing and reading through one instance at once: every operation is whole
    (the journal numbers follow each other, each thread reads back what it wrote, the directory
    is what the journal replays to)."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.mkdir("b")
        failures: list[BaseException] = []
        start = threading.Barrier(2)

        def churn(path: str) -> None:
            try:
                start.wait(timeout=60)
                for index in range(1, 151):
                    value = str(index * 4096)
                    fs.write(path, "memory.min", value)
                    if fs.read(path, "memory.min") != value + "\n":
                        raise AssertionError(f"{path}: read back something else than {value}")
                    fs.exists("a" if path == "b" else "b")
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        workers = [threading.Thread(target=churn, args=(path,)) for path in ("a", "b")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not any(worker.is_alive() for worker in workers)
        assert failures == []
        assert fs.read("a", "memory.min") == fs.read("b", "memory.min") == str(150 * 4096) + "\n"
    entries = read_journal(root)
    assert [entry.n for entry in entries] == list(range(1, len(entries) + 1))
    assert_disk_matches(root, replay_reference(root))


def test_snapshot_reads_the_tree_as_it_was_at_its_start(scratch: Path) -> None:
    """Inside `snapshot`, reads use the model as caught up at the start: another instance's
    write meanwhile shows only after the block; a write inside the block still catches up first
    (the journal numbers follow each other, nothing of the other instance's write is lost)."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs, DirCgroupFS(root) as other:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.mkdir("b")
        with fs.snapshot():
            assert fs.read("a", "memory.min") == "0\n"
            other.write("a", "memory.min", "8192")
            other.mkdir("c")
            assert fs.read("a", "memory.min") == "0\n"
            assert fs.list_children("") == ["a", "b"]
            fs.write("b", "memory.min", "4096")  # catches up with `other` first
            assert fs.read("a", "memory.min") == "8192\n"
            assert fs.exists("c")
        assert fs.read("b", "memory.min") == "4096\n"
        assert other.read("b", "memory.min") == "4096\n"
    entries = read_journal(root)
    assert [entry.n for entry in entries] == list(range(1, len(entries) + 1))
    assert_disk_matches(root, replay_reference(root))


def test_snapshot_is_per_thread(scratch: Path) -> None:
    """One thread's snapshot does not hold back another thread's calls on the same instance,
    and the other thread's reads still catch up (they are not inside a snapshot)."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs, DirCgroupFS(root) as other:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        seen: list[str] = []

        def other_thread() -> None:
            seen.append(fs.read("a", "memory.min"))
            fs.write("a", "memory.max", "1048576")

        with fs.snapshot():
            other.write("a", "memory.min", "8192")
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join(timeout=60)
            assert not worker.is_alive()
            # The other thread caught up and wrote through this instance: the model has both.
            assert seen == ["8192\n"]
            assert fs.read("a", "memory.max") == "1048576\n"
    entries = read_journal(root)
    assert [entry.n for entry in entries] == list(range(1, len(entries) + 1))
    assert_disk_matches(root, replay_reference(root))


def test_other_kernel_profile_is_kept(scratch: Path) -> None:
    with DirCgroupFS(scratch / "t", kernel=KERNEL_6_18, hugepage_sizes_bytes=(2 << 20,)) as fs:
        fs.write("", "cgroup.subtree_control", "+hugetlb")
        fs.mkdir("a")
    with DirCgroupFS(scratch / "t") as fs:
        assert fs.kernel == KERNEL_6_18
        assert fs.read("a", "hugetlb.2MB.max") == "9223372036854771712\n"


def test_parameters_round_trip() -> None:
    parameters = SimParameters(online_nodes="1,0", controllers=("memory", "cpuset")).normalised()
    assert parameters.online_nodes == "0-1"
    assert parameters.controllers == ("cpuset", "memory")


def test_deleted_journal_is_taken_in_as_edits_by_hand(scratch: Path) -> None:
    """Documented degradation: without its journal the tree starts from an empty model and the
    directory is taken in as edits by hand (cgroups and values come back, the enabled controllers
    and the fake processes do not)."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.mkdir("b")
        fs.write("a", "cgroup.max.depth", "3")
        fs.spawn("b")
    (root / JOURNAL_NAME).unlink()
    with DirCgroupFS(root) as fs:
        assert fs.list_children("") == ["a", "b"]
        assert fs.read("a", "cgroup.max.depth") == "3\n"
        assert fs.read("", "cgroup.subtree_control") == ""
        assert fs.read("b", "cgroup.procs") == ""
        assert not (root / "a" / "memory.min").exists()
    assert [entry.source for entry in read_journal(root)] == ["outside"] * 3


@pytest.mark.parametrize("failing", ["inotify_init", "add_watch"])
def test_without_inotify_every_call_compares(
    scratch: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """No inotify instance (EMFILE) or no watch left (ENOSPC): the instance falls back to
    comparing the whole directory at every call, and still sees edits by hand."""

    def refuse(*_args: object) -> None:
        code = errno.EMFILE if failing == "inotify_init" else errno.ENOSPC
        raise OSError(code, os.strerror(code))

    target = "__init__" if failing == "inotify_init" else "add_watch"
    monkeypatch.setattr(cgroupdir_inotify.Inotify, target, refuse)
    with DirCgroupFS(scratch / "t") as fs:
        assert fs.change_detection == "scan"
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        (scratch / "t" / "a" / "memory.high").write_text("1M\n")
        (scratch / "t" / "a" / "b").mkdir()
        assert fs.read("a", "memory.high") == "1048576\n"
        assert fs.list_children("a") == ["b"]


def test_a_rename_by_hand_right_after_a_render_is_an_edit(scratch: Path) -> None:
    """A file replaced by hand with a rename right after the instance rendered it is taken as
    an edit. Its IN_MOVED_TO is the same event as the render's, and inotify merges an event
    with an identical one still unread at the tail of the queue: the own renames' events must
    be read (`_drain_own_events`) before the operation ends, not at the next one."""
    root = scratch / "t"
    with DirCgroupFS(root) as fs:
        fs.write("", "cgroup.subtree_control", "+memory")
        fs.mkdir("a")
        fs.write("a", "memory.max", "8192")
        staged = scratch / "by-hand"
        staged.write_text("12288\n")
        os.rename(staged, root / "a" / "memory.max")
        assert fs.read("a", "memory.max") == "12288\n"
    assert [(entry.op, entry.source, entry.file) for entry in read_journal(root)][-2:] == [
        ("write", "api", "memory.max"),
        ("write", "outside", "memory.max"),
    ]
