"""RealCgroupFS on a temporary directory: path safety and plain I/O semantics.

Goal: whatever path or file name the reconciler passes (pod UIDs and container ids come from
outside), RealCgroupFS never touches anything outside its root, and fails with HostError(EINVAL)
or ENOTDIR instead. Method: a temp dir as root, a "secret" file and directory next to it, and
escape attempts through every operation: traversal components, absolute paths, NUL, odd
characters, and symlinks planted inside the root (which cgroupfs never has, but a test root can).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from memstate.core.errors import HostError
from memstate.host import (
    EMPTY_WRITE,
    RealCgroupFS,
    cgroupfs,
    openat2,
    parse_cgroup2_mounts,
    split_cgroup_path,
)

ESCAPES = [
    "..",
    "../outside",
    "a/../../outside",
    ".",
    "./a",
    "/abs",
    "a/",
    "/",
    "a//b",
    "a\0b",
    "a\nb",
    "-rf",
    ".hidden",
    "a\\x2db",
    "a b",
    "a*",
    "x" * 256,
    "/".join(["d"] * 40),
]


@pytest.fixture(params=["openat2", "walk"])
def layout(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[RealCgroupFS, Path]:
    """root/ (the adapter's root) next to outside/ holding a secret file; the adapter opens
    paths with openat2 (skipped where the kernel has none) or with its walk alone."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "memory.max").write_text("secret\n")
    (root / "a").mkdir()
    (root / "a" / "memory.max").write_text("max\n")
    with monkeypatch.context() as patch:
        if request.param == "walk":
            patch.setattr(cgroupfs, "_openat2", lambda: None)
        fs = RealCgroupFS(root)
    if request.param == "openat2" and fs._open_no_symlinks is None:
        pytest.skip("openat2 is not available here")
    return fs, outside


def _expect_einval(call: object, *args: str) -> None:
    with pytest.raises(HostError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.errno == errno.EINVAL


@pytest.mark.parametrize("bad", ESCAPES, ids=repr)
def test_escaping_paths_are_refused_by_every_operation(
    layout: tuple[RealCgroupFS, Path], bad: str
) -> None:
    """Each unsafe path fails with EINVAL before any system call, for all six operations."""
    fs, outside = layout
    _expect_einval(fs.exists, bad)
    _expect_einval(fs.list_children, bad)
    _expect_einval(fs.read, bad, "memory.max")
    _expect_einval(fs.write, bad, "memory.max", "1")
    _expect_einval(fs.mkdir, bad)
    _expect_einval(fs.rmdir, bad)
    assert (outside / "memory.max").read_text() == "secret\n"
    assert sorted(p.name for p in outside.iterdir()) == ["memory.max"]


@pytest.mark.parametrize(
    "bad_file",
    ["../outside/memory.max", "memory", "", ".", "a/memory.max", "memory.max\0", "Memory.max"],
)
def test_escaping_file_names_are_refused(layout: tuple[RealCgroupFS, Path], bad_file: str) -> None:
    """File names must look like cgroup interface files."""
    fs, _outside = layout
    _expect_einval(fs.read, "a", bad_file)
    _expect_einval(fs.write, "a", bad_file, "1")


def test_symlinks_inside_the_root_are_never_followed(layout: tuple[RealCgroupFS, Path]) -> None:
    """A symlinked directory or file under the root fails with ENOTDIR/ELOOP, never escapes."""
    fs, outside = layout
    (fs.root / "link").symlink_to(outside, target_is_directory=True)
    (fs.root / "a" / "memory.low").symlink_to(outside / "memory.max")
    for call, args in [
        (fs.read, ("link", "memory.max")),
        (fs.write, ("link", "memory.max", "1")),
        (fs.list_children, ("link",)),
        (fs.mkdir, ("link/new",)),
        (fs.rmdir, ("link/x",)),
    ]:
        with pytest.raises(HostError) as caught:
            call(*args)  # type: ignore[operator]
        assert caught.value.errno == errno.ENOTDIR
    assert fs.exists("link") is False
    with pytest.raises(HostError) as caught:
        fs.read("a", "memory.low")
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(HostError) as caught:
        fs.rmdir("link")  # unlinkat(AT_REMOVEDIR) on a symlink: ENOTDIR, the link stays
    assert caught.value.errno == errno.ENOTDIR
    assert (outside / "memory.max").read_text() == "secret\n"
    assert sorted(p.name for p in outside.iterdir()) == ["memory.max"]
    assert fs.list_children("") == ["a"]  # the symlink is not listed as a child


def test_plain_operations(layout: tuple[RealCgroupFS, Path]) -> None:
    """mkdir/rmdir/read/write/list with errno mapping; values are written verbatim, once."""
    fs, _outside = layout
    assert fs.exists("") and fs.exists("a")
    assert not fs.exists("a/memory.max")  # a file is not a cgroup
    fs.mkdir("a/b")
    assert fs.list_children("a") == ["b"]
    assert fs.read("a", "memory.max") == "max\n"
    fs.write("a", "memory.max", "1048576")
    assert fs.read("a", "memory.max") == "1048576"
    fs.write("a", "memory.max", EMPTY_WRITE)
    assert fs.read("a", "memory.max") == "\n"
    cases = [
        (fs.mkdir, ("a",), errno.EEXIST, "mkdir", "a"),
        (fs.mkdir, ("x/y",), errno.ENOENT, "mkdir", "x/y"),
        (fs.rmdir, ("zz",), errno.ENOENT, "rmdir", "zz"),
        (fs.read, ("a", "memory.min"), errno.ENOENT, "read", "a/memory.min"),
        (fs.write, ("a", "memory.min", "1"), errno.ENOENT, "write", "a/memory.min"),
        (fs.read, ("gone", "cgroup.procs"), errno.ENOENT, "read", "gone/cgroup.procs"),
        (fs.list_children, ("gone",), errno.ENOENT, "list_children", "gone"),
        (fs.rmdir, ("",), errno.EPERM, "rmdir", ""),
    ]
    for call, args, code, op, path in cases:
        with pytest.raises(HostError) as caught:
            call(*args)  # type: ignore[operator]
        assert (caught.value.errno, caught.value.op, caught.value.path) == (code, op, path)
    with pytest.raises(HostError) as caught:
        fs.write("a", "memory.max", "")
    assert caught.value.errno == errno.EINVAL
    assert caught.value.value == ""
    fs.rmdir("a/b")
    assert fs.list_children("a") == []


def test_root_must_be_an_absolute_directory(tmp_path: Path) -> None:
    """Construction checks the root; a symlinked root is resolved once."""
    with pytest.raises(HostError):
        RealCgroupFS(Path("relative"))
    with pytest.raises(HostError):
        RealCgroupFS(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(HostError):
        RealCgroupFS(tmp_path / "file")
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert RealCgroupFS(tmp_path / "alias").root == tmp_path / "real"


def test_no_file_descriptors_leak(layout: tuple[RealCgroupFS, Path]) -> None:
    """Every path walk closes what it opened, on success and on failure."""
    fs, _outside = layout
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        fs.read("a", "memory.max")
        fs.list_children("a")
        fs.exists("nope/deeper")
        with pytest.raises(HostError):
            fs.read("nope", "memory.max")
    assert len(os.listdir("/proc/self/fd")) == before


def test_path_helpers() -> None:
    """split_cgroup_path accepts realistic kubelet/systemd/runtime names."""
    assert split_cgroup_path("") == ()
    names = (
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c4d.slice/"
        "cri-containerd-0123abcd.scope"
    )
    assert len(split_cgroup_path(names)) == 4
    assert split_cgroup_path("kubepods/besteffort/pod0f-1e/user@1000.service") == (
        "kubepods",
        "besteffort",
        "pod0f-1e",
        "user@1000.service",
    )
    mounts = (
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup2 /mnt/with\\040space cgroup2 rw 0 0\n"
    )
    assert parse_cgroup2_mounts(mounts) == ["/sys/fs/cgroup/unified", "/mnt/with space"]


def test_openat2_follows_no_symlink_anywhere_on_the_path(tmp_path: Path) -> None:
    """open_no_symlinks opens a plain path and refuses (ELOOP) a symlink as a middle or last
    component, where os.open with O_NOFOLLOW would follow the middle one."""
    open_no_symlinks = openat2.load()
    if open_no_symlinks is None:
        pytest.skip("openat2 cannot be called on this platform")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_text("x\n")
    (tmp_path / "link").symlink_to(tmp_path / "dir", target_is_directory=True)
    (tmp_path / "dir" / "filelink").symlink_to(tmp_path / "dir" / "file")
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        fd = open_no_symlinks(os.fsencode(tmp_path / "dir" / "file"), flags)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"openat2 refused here: {exc}")
        raise
    assert os.read(fd, 10) == b"x\n"
    os.close(fd)
    for path in (tmp_path / "link" / "file", tmp_path / "dir" / "filelink"):
        with pytest.raises(OSError) as caught:
            open_no_symlinks(os.fsencode(path), flags | os.O_NOFOLLOW)
        assert caught.value.errno == errno.ELOOP
    os.close(os.open(tmp_path / "link" / "file", flags | os.O_NOFOLLOW))  # what it guards against
