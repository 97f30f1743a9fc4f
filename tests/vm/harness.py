"""Run commands inside a throwaway QEMU VM that boots a stock Debian kernel with cgroup v2.

Theory of operation (facts and measurements: shared/specs/real-kernel-vm.md):

* **Provisioning** (``provision``), idempotent and cached under
  ``~/.cache/memstate/cgvm/<kernel release>/`` (``CGVM_CACHE_DIR`` overrides the root): install
  ``qemu-system-x86`` and ``busybox-static`` with apt only when missing, resolve the current
  generic kernel ABI through ``apt-cache depends linux-image-amd64``, ``apt-get download`` that
  ``.deb`` (never installed), and pull ``vmlinuz`` plus the virtio/9p modules out of it in pure
  Python (ar + tar streaming; module load order from each module's ``depends=`` modinfo). The
  bzImage is decompressed to an ELF ``vmlinux`` when it carries an xz payload and a PVH note
  (QEMU then boots it directly, about 2.5 s faster under TCG). The initramfs (``/init`` =
  ``tests/vm/init.sh``, a static busybox, the modules) is a newc cpio written in Python; its
  file name carries a hash of its inputs, so editing ``init.sh`` rebuilds it.
* **Running** (``run_in_vm``): a job directory under the cache (never under /tmp, whose guest
  view is a fresh tmpfs) gets ``job.sh``; QEMU (TCG unless ``CGVM_ACCEL`` says otherwise) shares
  the host root read-only and the job directory read-write at the same absolute path; the guest
  runs ``job.sh`` with the host's own interpreter and ``PYTHONPATH`` at the repository. QEMU runs
  in its own session with stdin from /dev/null; threads read its console, and it is killed by
  PID on a failure marker (a KVM internal error pauses QEMU forever) or at the watchdog
  deadline. The status comes from the ``rc`` file, cross-checked against the console's
  ``VMPROBE_EXIT`` line and QEMU's ``(n << 1) | 1`` exit code.
* **Batching** (``run_suites``): boot cost dominates (5-9 s under TCG), so several guest
  programs ("suites") run one after another in a single boot, each with its own output files.

Errors: ``CgvmUnavailable`` means the VM can truly not be had here (wrong platform, no apt and
no QEMU, no network for apt); ``CgvmProvisionError`` is any other provisioning failure;
``CgvmRunError`` means a boot produced no exit status (the serial log is attached).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[2]
INIT_SCRIPT = Path(__file__).resolve().with_name("init.sh")

CACHE_ENV = "CGVM_CACHE_DIR"
ACCEL_ENV = "CGVM_ACCEL"

APT_PACKAGES = ("qemu-system-x86", "busybox-static")
QEMU_BINARY = "qemu-system-x86_64"
KERNEL_METAPACKAGE = "linux-image-amd64"

# Modules the guest needs to mount the 9p shares; their dependencies are found from modinfo.
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
# Directories in the kernel tree where those modules and their known dependencies live; only
# these are kept during the first pass over the (391 MB) module tree.
MODULE_DIRS = ("drivers/virtio/", "net/9p/", "fs/9p/", "fs/netfs/", "fs/fscache/")

# Console/stderr text after which QEMU will not make progress (it pauses on KVM errors).
FAILURE_MARKERS = (b"KVM internal error", b"emulation failure", b"failed to set MSR")
EXIT_MARKER_RE = re.compile(rb"\[init\] VMPROBE_EXIT=(\d+)")
# Console lines of init.sh whose arrival time is worth recording (seconds since QEMU start).
PHASE_RE = re.compile(rb"\[init\] (started|job start|VMPROBE_EXIT)")
INIT_FAILURE_STATUS = 125

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Packages of the repository whose bytecode is compiled on the host before a boot.
BYTECODE_PACKAGES = ("memstate", "tests")

# Host directories that the init script covers with fresh mounts in the guest: host paths
# under them need an extra read-only share to stay visible.
HIDDEN_IN_GUEST = ("/tmp", "/run", "/proc", "/sys", "/dev")


class CgvmUnavailable(Exception):
    """The VM harness can truly not run here (platform, no apt and no QEMU, no network)."""


class CgvmProvisionError(Exception):
    """Provisioning failed for a reason that should be fixed, not skipped over in CI."""


class CgvmRunError(Exception):
    """A VM run produced no exit status; ``serial`` holds the console log."""

    def __init__(self, message: str, serial: str = "") -> None:
        super().__init__(message)
        self.serial = serial

    def __str__(self) -> str:
        tail = "\n".join(self.serial.splitlines()[-40:])
        return f"{self.args[0]}\n--- serial log (tail) ---\n{tail}" if tail else str(self.args[0])


@dataclass(frozen=True)
class Assets:
    """Everything a boot needs, as cached on disk by ``provision``."""

    cache_root: Path
    kernel_release: str
    kernel: Path  # vmlinux (PVH) or vmlinuz (bzImage)
    boot_mode: str  # "pvh" or "bzimage"
    initrd: Path
    qemu: Path
    timings_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VmResult:
    """Outcome of one boot: the job's exit status, output and the evidence behind it."""

    status: int
    stdout: str
    stderr: str
    serial: str
    files: Mapping[str, bytes]
    wall_s: float
    accel: str
    qemu_returncode: int | None
    warnings: tuple[str, ...] = ()
    # When init.sh's "started", "job start" and "VMPROBE_EXIT" lines arrived (s after start).
    phases_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestSuite:
    """One guest program of a batched boot; ``argv`` runs with cwd = repository root."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float = 120.0
    env: Mapping[str, str] = field(default_factory=dict)
    expected_rc: int = 0  # what a passing run exits with (scripts/cgvm suites checks it)


@dataclass(frozen=True)
class SuiteResult:
    """Exit status and output of one guest suite (``rc`` None: the suite never finished)."""

    name: str
    rc: int | None
    stdout: str
    stderr: str
    elapsed_s: float | None = None  # guest wall time of the suite


@dataclass(frozen=True)
class BatchResult:
    """All suites of one batched boot plus the boot itself."""

    suites: Mapping[str, SuiteResult]
    vm: VmResult


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Small helpers


def default_cache_root() -> Path:
    """``$CGVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/memstate/cgvm``, else ``~/.cache/...``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base) / "memstate" / "cgvm").resolve()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    # An flock dies with its holder, so a crashed session never leaves a stale lock behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run(argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False, cwd=cwd)


def truthy(value: str | None) -> bool:
    """True for the usual spellings of yes in environment variables ("1", "true", ...)."""
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF64 executable without a program interpreter."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            if len(head) < 64 or head[:4] != ELF_MAGIC or head[4] != 2:
                return False
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, i * phentsize)
        if p_type == PT_INTERP:
            return False
    return True


def has_pvh_note(elf: bytes) -> bool:
    """True when an ELF64 image has the Xen PHYS32_ENTRY note QEMU needs for a PVH boot."""
    if elf[:4] != ELF_MAGIC or elf[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, base
        )
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside an xz-compressed bzImage, or None if it is not one."""
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        return None
    try:
        # The kernel appends the uncompressed size after the stream: stop at the stream's end.
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    except lzma.LZMAError:
        return None
    return out if out[:4] == ELF_MAGIC else None


def module_depends(ko: bytes) -> tuple[str, ...]:
    """Module names from the ``depends=`` modinfo string of a ``.ko`` image."""
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko)
    if match is None or not match.group(1):
        return ()
    return tuple(d.decode().replace("-", "_") for d in match.group(1).split(b","))


def load_order(deps: Mapping[str, Sequence[str]], roots: Sequence[str]) -> list[str]:
    """Dependencies-first order of ``roots`` and everything they need (depth-first)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise CgvmProvisionError(f"module dependency cycle through {name}")
        state[name] = "active"
        for dep in sorted(deps.get(name, ())):
            visit(dep)
        state[name] = "done"
        order.append(name)

    for root in roots:
        visit(root)
    return order


def newc_archive(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A cpio "newc" archive of (path, mode, data) entries (directories: empty data)."""
    out = io.BytesIO()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Provisioning


_NETWORK_ERRORS = (
    "Could not resolve",
    "Temporary failure resolving",
    "Failed to fetch",
    "Network is unreachable",
    "Connection failed",
    "Connection timed out",
    "Unable to connect",
    "Unable to locate package",
    "has no installation candidate",
)


def _apt(argv: Sequence[str], what: str, cwd: Path | None = None) -> None:
    """Run an apt command, refreshing the lists once on failure; classify the final error."""
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    cmd = [argv[0], *lock, *argv[1:]]
    proc = _run(cmd, cwd=cwd)
    if proc.returncode != 0:
        update = _run(["apt-get", *lock, "update"])
        proc = _run(cmd, cwd=cwd)
        if proc.returncode != 0:
            text = (update.stdout + update.stderr + proc.stdout + proc.stderr).strip()
            tail = "\n".join(text.splitlines()[-12:])
            message = f"{what} failed: {shlex.join(cmd)} (exit {proc.returncode})\n{tail}"
            if any(marker in text for marker in _NETWORK_ERRORS):
                raise CgvmUnavailable(message)
            raise CgvmProvisionError(message)


def _find_busybox(cache_root: Path) -> Path | None:
    for path in (Path("/bin/busybox"), Path("/usr/bin/busybox"), cache_root / "busybox"):
        if is_static_elf(path):
            return path
    return None


def _ensure_host_tools(cache_root: Path, log: Log) -> tuple[Path, Path]:
    """Paths of qemu-system-x86_64 and a static busybox, installing packages when missing."""
    qemu = shutil.which(QEMU_BINARY)
    busybox = _find_busybox(cache_root)
    install = [] if qemu else ["qemu-system-x86"]
    # With the dynamic busybox package installed, busybox-static would replace it: take the
    # static binary out of the package file instead of changing the host.
    download_busybox = busybox is None and Path("/bin/busybox").exists()
    if busybox is None and not download_busybox:
        install.append("busybox-static")
    if install or download_busybox:
        wanted = " ".join(install + ["busybox-static"] * download_busybox)
        if shutil.which("apt-get") is None:
            raise CgvmUnavailable(
                f"{QEMU_BINARY} or a static busybox is missing and there is no apt-get for {wanted}"
            )
        if os.geteuid() != 0:
            raise CgvmUnavailable(
                f"missing {wanted} and not root; install with: "
                f"sudo apt-get install --no-install-recommends {wanted}"
            )
    if install:
        log(f"cgvm: installing {' '.join(install)} with apt-get")
        _apt(["apt-get", "install", "-y", "--no-install-recommends", *install], "installing QEMU")
        qemu = shutil.which(QEMU_BINARY)
        busybox = _find_busybox(cache_root)
    if download_busybox:
        busybox = _busybox_from_deb(cache_root, log)
    if qemu is None or busybox is None:
        raise CgvmProvisionError(f"after installing {install}: qemu={qemu} busybox={busybox}")
    return Path(qemu), busybox


def _busybox_from_deb(cache_root: Path, log: Log) -> Path:
    target = cache_root / "busybox"
    log("cgvm: fetching busybox-static (the dynamic busybox package stays installed)")
    with tempfile.TemporaryDirectory(dir=cache_root) as tmp:
        _apt(["apt-get", "download", "busybox-static"], "downloading busybox-static", Path(tmp))
        for deb in Path(tmp).glob("busybox-static_*.deb"):
            with _deb_data(deb) as tar:
                for member in tar:
                    if member.name.endswith("bin/busybox") and member.isfile():
                        fh = tar.extractfile(member)
                        assert fh is not None
                        _atomic_write(target, fh.read())
                        break
    if not is_static_elf(target):
        raise CgvmProvisionError("the busybox-static package held no static bin/busybox")
    target.chmod(0o755)
    return target


APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_stamp() -> str:
    """A digest of the apt lists' names, sizes and mtimes: it changes with every apt-get update."""
    digest = hashlib.sha256()
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(APT_LISTS), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                digest.update(f"{entry.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolve_cached(cache_root: Path, log: Log) -> str:
    """resolve_kernel_release, remembered until the apt lists change (apt-cache costs ~1.5 s)."""
    memo = cache_root / "resolved.json"
    stamp = _apt_lists_stamp()
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp:
            return str(saved["release"])
    release = resolve_kernel_release(log)
    _atomic_write(memo, json.dumps({"stamp": _apt_lists_stamp(), "release": release}).encode())
    return release


def resolve_kernel_release(log: Log = _quiet) -> str:
    """The ABI of the generic kernel that ``linux-image-amd64`` depends on, e.g. 6.1.0-56-amd64."""
    if shutil.which("apt-cache") is None:
        raise CgvmUnavailable("no apt-cache to resolve the guest kernel package")

    def ask() -> str | None:
        text = _run(["apt-cache", "depends", KERNEL_METAPACKAGE]).stdout
        for match in re.finditer(r"Depends:\s*linux-image-(\S+)", text):
            release = match.group(1)
            # The cloud flavour has no 9p; rt and dbg are not what we want either.
            if release.endswith("-amd64") and not re.search(r"cloud|rt|dbg|unsigned", release):
                return release
        return None

    release = ask()
    if release is None:
        log("cgvm: apt-get update (kernel package not in the lists)")
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"])
        release = ask()
    if release is None:
        raise CgvmUnavailable(f"apt-cache depends {KERNEL_METAPACKAGE} names no generic kernel")
    return release


class _Slice(io.RawIOBase):
    """A read-only window [start, start+size) of a binary file."""

    def __init__(self, fh: BinaryIO, start: int, size: int) -> None:
        self._fh, self._pos, self._end = fh, start, start + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        self._fh.seek(self._pos)
        data = self._fh.read(want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextlib.contextmanager
def _deb_data(deb: Path) -> Iterator[tarfile.TarFile]:
    """Stream the data.tar.* member of a .deb (an ar archive) as a tarfile."""
    with deb.open("rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise CgvmProvisionError(f"{deb} is not a Debian package")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                raise CgvmProvisionError(f"{deb} has no data.tar member")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            start = fh.tell()
            if name.startswith("data.tar"):
                stream = io.BufferedReader(_Slice(fh, start, size), buffer_size=1 << 20)
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    yield tar
                return
            fh.seek(start + size + (size & 1))


def _module_name(member_name: str) -> str:
    base = member_name.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", base)
    return base.replace("-", "_")


def _module_bytes(name: str, data: bytes) -> bytes:
    if name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if name.endswith(".ko.zst"):
        raise CgvmProvisionError(f"{name}: zstd-compressed modules are not supported")
    return data


def _member_of(names: frozenset[str]) -> Callable[[str, str], bool]:
    return lambda mod, _rel: mod in names


def _extract_kernel(deb: Path, release: str, out: Path, log: Log) -> None:
    """Write vmlinuz, modules/<name>.ko and modules/order under ``out``."""
    mod_re = re.compile(rf"(?:^|/)lib/modules/{re.escape(release)}/kernel/(.+\.ko(?:\.\w+)?)$")
    vmlinuz_re = re.compile(rf"(?:^|/)boot/vmlinuz-{re.escape(release)}$")
    builtin_re = re.compile(rf"(?:^|/)lib/modules/{re.escape(release)}/modules\.builtin$")
    kept: dict[str, bytes] = {}
    builtin: set[str] = set()
    vmlinuz: bytes | None = None

    def scan(wanted: Callable[[str, str], bool]) -> set[str]:
        nonlocal vmlinuz
        seen: set[str] = set()
        with _deb_data(deb) as tar:
            for member in tar:
                name = member.name
                if not member.isfile():
                    continue
                if vmlinuz is None and vmlinuz_re.search(name):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    vmlinuz = fh.read()
                elif builtin_re.search(name):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    for line in fh.read().decode().splitlines():
                        builtin.add(_module_name(line.strip()))
                elif (match := mod_re.search(name)) is not None:
                    mod = _module_name(name)
                    seen.add(mod)
                    if mod not in kept and wanted(mod, match.group(1)):
                        fh = tar.extractfile(member)
                        assert fh is not None
                        kept[mod] = _module_bytes(name, fh.read())
        return seen

    present = scan(lambda _mod, rel: rel.startswith(MODULE_DIRS))
    if vmlinuz is None:
        raise CgvmProvisionError(f"{deb.name} has no boot/vmlinuz-{release}")
    roots = [r for r in ROOT_MODULES if r not in builtin]
    # Dependencies outside MODULE_DIRS (other kernels may move things) need another pass.
    for _ in range(5):
        deps = {name: module_depends(data) for name, data in kept.items()}
        order = [m for m in load_order(deps, roots) if m not in builtin]
        missing = {m for m in order if m not in kept}
        if not missing:
            break
        unknown = missing - present
        if unknown:
            raise CgvmProvisionError(f"kernel {release} lacks modules {sorted(unknown)}")
        log(f"cgvm: another pass over the package for modules {sorted(missing)}")
        scan(_member_of(frozenset(missing)))
    else:
        raise CgvmProvisionError(f"could not collect the modules for {release}")
    mod_dir = out / "modules"
    mod_dir.mkdir(parents=True, exist_ok=True)
    for name in order:
        _atomic_write(mod_dir / f"{name}.ko", kept[name])
    _atomic_write(mod_dir / "order", "".join(f"{m}\n" for m in order).encode())
    _atomic_write(out / "vmlinuz", vmlinuz)


def _provision_kernel(cache_root: Path, release: str, log: Log, timings: dict[str, float]) -> Path:
    kdir = cache_root / release
    ready = kdir / "kernel.json"
    if ready.exists():
        return kdir
    kdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kdir) as tmp:
        t0 = time.monotonic()
        log(f"cgvm: downloading linux-image-{release}")
        _apt(["apt-get", "download", f"linux-image-{release}"], "kernel download", Path(tmp))
        debs = sorted(Path(tmp).glob(f"linux-image-{release}_*.deb"))
        if not debs:
            raise CgvmProvisionError(f"apt-get download left no linux-image-{release} .deb")
        timings["kernel_download"] = time.monotonic() - t0
        t0 = time.monotonic()
        _extract_kernel(debs[-1], release, kdir, log)
        timings["kernel_extract"] = time.monotonic() - t0
        deb_name = debs[-1].name
    t0 = time.monotonic()
    vmlinux = extract_vmlinux((kdir / "vmlinuz").read_bytes())
    boot = "bzimage"
    if vmlinux is not None and has_pvh_note(vmlinux):
        _atomic_write(kdir / "vmlinux", vmlinux)
        boot = "pvh"
    timings["vmlinux_extract"] = time.monotonic() - t0
    info = {"release": release, "deb": deb_name, "boot": boot}
    _atomic_write(ready, json.dumps(info, indent=1).encode())
    return kdir


def _build_initrd(kdir: Path, busybox: Path) -> Path:
    init = INIT_SCRIPT.read_bytes()
    bb = busybox.read_bytes()
    order = (kdir / "modules" / "order").read_text().split()
    modules = [(m, (kdir / "modules" / f"{m}.ko").read_bytes()) for m in order]
    digest = hashlib.sha256()
    for part in (init, bb, *(data for _, data in modules)):
        digest.update(hashlib.sha256(part).digest())
    target = kdir / f"initrd-{digest.hexdigest()[:16]}.gz"
    if target.exists():
        return target
    directory = 0o040755
    entries: list[tuple[str, int, bytes]] = [
        (d, directory, b"") for d in ("bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys")
    ]
    entries += [("init", 0o100755, init), ("bin/busybox", 0o100755, bb)]
    entries += [(f"lib/modules/{m}.ko", 0o100644, data) for m, data in modules]
    entries.append(("lib/modules/order", 0o100644, "".join(f"{m}\n" for m in order).encode()))
    _atomic_write(target, gzip.compress(newc_archive(entries), compresslevel=1, mtime=0))
    for old in kdir.glob("initrd-*.gz"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def _cached_releases(cache_root: Path) -> list[str]:
    return sorted(p.parent.name for p in cache_root.glob("*/kernel.json"))


def provision(cache_root: Path | None = None, *, log: Log = _quiet) -> Assets:
    """Make sure QEMU, the guest kernel and the initramfs are ready; return their paths.

    Idempotent: a second call only checks the cache (and asks apt-cache for the current ABI).
    Raises CgvmUnavailable when this host can truly not run the VM, CgvmProvisionError otherwise.
    """
    if sys.platform != "linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise CgvmUnavailable(f"needs Linux on x86_64, this is {sys.platform}/{platform.machine()}")
    root = cache_root or default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _flock(root / ".provision.lock"):
        t0 = time.monotonic()
        qemu, busybox = _ensure_host_tools(root, log)
        timings["host_tools"] = time.monotonic() - t0
        t0 = time.monotonic()
        try:
            release = _resolve_cached(root, log)
        except CgvmUnavailable:
            cached = _cached_releases(root)
            if not cached:
                raise
            release = cached[-1]  # offline: keep using what we have
        timings["resolve_kernel"] = time.monotonic() - t0
        try:
            kdir = _provision_kernel(root, release, log, timings)
        except (CgvmProvisionError, CgvmUnavailable):
            # Old ABIs leave the archive; _apt has refreshed the lists by now: ask again.
            fresh = resolve_kernel_release(log)
            if fresh == release:
                raise
            log(f"cgvm: {release} is gone from the archive, using {fresh}")
            release = fresh
            kdir = _provision_kernel(root, release, log, timings)
            _atomic_write(
                root / "resolved.json",
                json.dumps({"stamp": _apt_lists_stamp(), "release": release}).encode(),
            )
        for stale in _cached_releases(root):
            if stale != release:  # 75 MB each; only the current kernel is ever booted
                shutil.rmtree(root / stale, ignore_errors=True)
        t0 = time.monotonic()
        initrd = _build_initrd(kdir, busybox)
        timings["initrd"] = time.monotonic() - t0
    info = json.loads((kdir / "kernel.json").read_text())
    boot = info["boot"] if (kdir / "vmlinux").exists() else "bzimage"
    kernel = kdir / ("vmlinux" if boot == "pvh" else "vmlinuz")
    return Assets(root, release, kernel, boot, initrd, qemu, timings)


# --------------------------------------------------------------------------------------------
# Running


def choose_accel(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(accelerator, reason). ``CGVM_ACCEL=tcg|kvm|auto`` wins; the default is TCG.

    "auto" uses KVM only where /dev/kvm opens read-write and the host is not a kvm_pvm
    (nested PVM) machine, whose KVM emulates stock kernels slowly and then fails.
    """
    env = os.environ if environ is None else environ
    wanted = env.get(ACCEL_ENV, "").strip().lower()
    if wanted in {"tcg", "kvm"}:
        return wanted, f"{ACCEL_ENV}={wanted}"
    if wanted not in {"", "auto"}:
        raise ValueError(f"{ACCEL_ENV} must be tcg, kvm or auto, not {wanted!r}")
    pvm = Path("/sys/module/kvm_pvm").exists()
    if wanted == "auto":
        if pvm:
            return "tcg", "auto: kvm_pvm loaded (nested PVM: stock kernels fail under its KVM)"
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
        except OSError as exc:
            return "tcg", f"auto: /dev/kvm unusable ({exc.strerror})"
        return "kvm", "auto: /dev/kvm usable and no kvm_pvm"
    note = "; kvm_pvm loaded, KVM unusable" if pvm else ""
    return "tcg", f"default (set {ACCEL_ENV}=kvm or auto to try KVM){note}"


def guest_hidden_paths(paths: Sequence[Path]) -> list[str]:
    """The outermost of ``paths`` that the guest's fresh mounts would hide (need a share)."""

    def under(path: str, top: str) -> bool:
        return path == top or path.startswith(top + "/")

    hidden: list[str] = []
    for path in sorted({str(p) for p in paths}):  # a parent sorts before its children
        if any(under(path, h) for h in HIDDEN_IN_GUEST) and not any(under(path, h) for h in hidden):
            _check_cmdline_path(path)
            hidden.append(path)
    return hidden


def precompile_bytecode(root: Path = REPO_ROOT, packages: Sequence[str] = BYTECODE_PACKAGES) -> int:
    """Write hash-checked ``.pyc`` files for ``packages`` under ``root``; returns how many.

    The guest sees the repository read-only and never writes bytecode, so without these every
    interpreter start compiles memstate from source: about 5 s of TCG time per start. A
    hash-checked pyc is validated against the source's hash at import, so a file edited since
    (another session, the same second) is compiled afresh, never served stale. Files whose pyc
    already matches are left alone; a read-only checkout just gets no pycs.
    """
    import importlib.util
    import py_compile

    flags = (0b11).to_bytes(4, "little")  # hash-based, checked
    tag = sys.implementation.cache_tag
    written = 0
    for package in packages:
        for source in sorted((root / package).rglob("*.py")):
            cfile = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
            try:
                expected = (
                    importlib.util.MAGIC_NUMBER
                    + flags
                    + importlib.util.source_hash(source.read_bytes())
                )
                with contextlib.suppress(OSError), cfile.open("rb") as fh:
                    if fh.read(16) == expected:
                        continue
                py_compile.compile(
                    str(source),
                    cfile=str(cfile),
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
                )
                written += 1
            except (OSError, py_compile.PyCompileError, SyntaxError, ValueError):
                continue  # unreadable, read-only or being edited: the guest compiles it itself
    return written


def _check_cmdline_path(path: str) -> None:
    # The path travels on the kernel command line (vmjob=, vmro=a,b): no blanks, no commas.
    if not path.startswith("/") or "," in path or any(c.isspace() for c in path):
        raise ValueError(
            f"cannot pass {path!r} to the guest (no spaces or commas; set {CACHE_ENV} "
            "or move the checkout)"
        )


def kernel_cmdline(
    job_dir: Path, *, hugepages: int = 0, ro_shares: Sequence[str] = (), debug: bool = False
) -> str:
    """The guest kernel command line (``vmjob=``/``vmro=`` are read by init.sh)."""
    parts = ["console=ttyS0", "panic=-1", "cgroup_no_v1=all", f"vmjob={job_dir}"]
    if debug:
        parts += ["earlyprintk=serial,ttyS0,115200", "ignore_loglevel"]
    else:
        parts = ["quiet", "loglevel=3", *parts]
    if hugepages:
        parts.append(f"hugepages={hugepages}")
    if ro_shares:
        parts.append("vmro=" + ",".join(ro_shares))
    return " ".join(parts)


def qemu_command(
    assets: Assets,
    job_dir: Path,
    *,
    accel: str = "tcg",
    numa_nodes: int = 1,
    hugepages: int = 0,
    memory_mib: int = 1024,
    cpus: int = 2,
    ro_shares: Sequence[str] = (),
    debug: bool = False,
) -> list[str]:
    """The QEMU argv for one boot (spec "QEMU command line"; pc machine, never microvm)."""
    if numa_nodes not in (1, 2):
        raise ValueError(f"numa_nodes must be 1 or 2, not {numa_nodes}")
    if memory_mib % numa_nodes or cpus < numa_nodes:
        raise ValueError("memory must split evenly and each NUMA node needs a CPU")
    cpu = "max" if accel == "tcg" else "host"
    argv = [str(assets.qemu), "-accel", accel, "-m", f"{memory_mib}M", "-smp", str(cpus)]
    argv += ["-cpu", cpu, "-kernel", str(assets.kernel), "-initrd", str(assets.initrd)]
    argv += [
        "-append",
        kernel_cmdline(job_dir, hugepages=hugepages, ro_shares=ro_shares, debug=debug),
    ]
    argv += ["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none"]
    argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    share = "security_model=none"
    argv += ["-virtfs", f"local,path=/,mount_tag=hostroot,{share},readonly=on,multidevs=remap"]
    for i, path in enumerate(ro_shares):
        argv += ["-virtfs", f"local,path={path},mount_tag=ro{i},{share},readonly=on"]
    argv += ["-virtfs", f"local,path={job_dir},mount_tag=job,{share}"]
    if numa_nodes == 2:
        half = memory_mib // 2
        node_cpus = [f"0-{cpus // 2 - 1}", f"{cpus // 2}-{cpus - 1}"]
        for node in range(2):
            argv += ["-object", f"memory-backend-ram,id=m{node},size={half}M"]
            argv += ["-numa", f"node,nodeid={node},cpus={node_cpus[node]},memdev=m{node}"]
        argv += ["-numa", "dist,src=0,dst=1,val=20"]
    return argv


def resolve_status(
    rc_text: str | None, serial: str, qemu_returncode: int | None
) -> tuple[int | None, tuple[str, ...]]:
    """The job's exit status from the rc file, else the console marker, else QEMU's code.

    Returns (status or None, disagreements among the sources that were present).
    """
    sources: dict[str, int] = {}
    if rc_text is not None and rc_text.strip().isdigit():
        sources["rc file"] = int(rc_text.strip())
    markers = EXIT_MARKER_RE.findall(serial.encode(errors="replace"))
    if markers:
        sources["console"] = int(markers[-1])
    if qemu_returncode is not None and qemu_returncode > 0 and qemu_returncode & 1:
        sources["isa-debug-exit"] = qemu_returncode >> 1
    status = next(iter(sources.values()), None)
    warnings = tuple(
        f"{name} says {value}, rc file/console says {status}"
        for name, value in sources.items()
        if value != status
    )
    return status, warnings


class _ConsoleReader(threading.Thread):
    """Collects one QEMU output stream and flags failure markers as they appear."""

    def __init__(
        self, stream: IO[bytes], failed: threading.Event, echo: IO[str] | None, t0: float
    ) -> None:
        super().__init__(daemon=True)
        self._stream, self._failed, self._echo, self._t0 = stream, failed, echo, t0
        self.chunks: list[bytes] = []
        self.marker: bytes | None = None
        self.phases: dict[str, float] = {}

    def run(self) -> None:
        for line in iter(self._stream.readline, b""):
            self.chunks.append(line)
            if (match := PHASE_RE.search(line)) is not None:
                self.phases.setdefault(match.group(1).decode(), time.monotonic() - self._t0)
            if self._echo is not None:
                self._echo.write(line.decode(errors="replace"))
                self._echo.flush()
            for marker in FAILURE_MARKERS:
                if marker in line:
                    self.marker = marker
                    self._failed.set()

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def run_in_vm(
    assets: Assets,
    script: str | Sequence[str],
    *,
    numa_nodes: int = 1,
    hugepages: int = 0,
    memory_mib: int = 1024,
    cpus: int = 2,
    timeout_s: float = 120.0,
    accel: str | None = None,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    python: str | None = None,
    extra_paths: Sequence[Path] = (),
    debug: bool = False,
    echo: IO[str] | None = None,
) -> VmResult:
    """Boot a VM, run ``script`` (shell text, or an argv to exec) and return its outcome.

    The guest command runs in ``cwd`` (default: the repository root) with the host's
    interpreter first on PATH (``$CGVM_PYTHON`` names it), ``PYTHONPATH`` at the repository,
    ``PYTHONDONTWRITEBYTECODE=1`` and ``HOME=/tmp``. ``files`` are written into the job directory
    (``$CGVM_JOB``) first; every regular file found there afterwards is returned in
    ``VmResult.files``. Raises CgvmRunError when the boot produced no exit status.
    """
    if accel is None:
        accel, _ = choose_accel()
    python = python or sys.executable
    workdir = cwd or REPO_ROOT
    jobs = assets.cache_root / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=jobs))
    try:
        _check_cmdline_path(str(job_dir))
        if Path(python).resolve() == Path(sys.executable).resolve():
            precompile_bytecode()  # another interpreter would not read this one's pycs
        shares = guest_hidden_paths(
            [
                REPO_ROOT,
                Path(sys.prefix),
                Path(sys.base_prefix),
                Path(python).parent,
                workdir,
                *extra_paths,
            ]
        )
        # The job share is mounted last, over whatever is there; it must not sit in a share.
        for rel, content in (files or {}).items():
            target = job_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        (job_dir / "job.sh").write_text(
            _job_script(script, python=python, job_dir=job_dir, cwd=workdir, env=env or {})
        )
        argv = qemu_command(
            assets,
            job_dir,
            accel=accel,
            numa_nodes=numa_nodes,
            hugepages=hugepages,
            memory_mib=memory_mib,
            cpus=cpus,
            ro_shares=shares,
            debug=debug,
        )
        with _flock(assets.cache_root / ".run.lock"):
            returncode, serial, wall_s, why, phases = _run_qemu(argv, timeout_s, echo)
        rc_text = _read_text(job_dir / "rc") if (job_dir / "rc").exists() else None
        status, warnings = resolve_status(rc_text, serial, returncode)
        if why:
            raise CgvmRunError(f"VM run aborted: {why}", serial)
        if status is None:
            raise CgvmRunError(
                f"VM produced no exit status (qemu exit {returncode}: 0 means panic/poweroff)",
                serial,
            )
        if status == INIT_FAILURE_STATUS and "[init] FAIL" in serial:
            raise CgvmRunError("the guest init failed before the job ran", serial)
        collected = {
            str(p.relative_to(job_dir)): p.read_bytes()
            for p in sorted(job_dir.rglob("*"))
            if p.is_file()
        }
        return VmResult(
            status=status,
            stdout=_read_text(job_dir / "stdout"),
            stderr=_read_text(job_dir / "stderr"),
            serial=serial,
            files=collected,
            wall_s=wall_s,
            accel=accel,
            qemu_returncode=returncode,
            warnings=warnings,
            phases_s=phases,
        )
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _job_script(
    script: str | Sequence[str], *, python: str, job_dir: Path, cwd: Path, env: Mapping[str, str]
) -> str:
    exports = {
        "CGVM_JOB": str(job_dir),
        "CGVM_REPO": str(REPO_ROOT),
        "CGVM_PYTHON": python,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PATH": f"{Path(python).parent}:{GUEST_PATH}",
        **env,
    }
    lines = ["# written by tests/vm/harness.py"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines.append(f'cd {shlex.quote(str(cwd))} 2>/dev/null || cd "$CGVM_REPO"')
    if isinstance(script, str):
        lines.append(script)
    else:
        lines.append("exec " + shlex.join(script))
    return "\n".join(lines) + "\n"


def _run_qemu(
    argv: Sequence[str], timeout_s: float, echo: IO[str] | None
) -> tuple[int | None, str, float, str, dict[str, float]]:
    """Run QEMU under the watchdog.

    Returns (returncode or None if killed, console, wall seconds, abort reason, phase times).
    """
    t0 = time.monotonic()
    failed = threading.Event()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        _ConsoleReader(proc.stdout, failed, echo, t0),
        _ConsoleReader(proc.stderr, failed, echo, t0),
    ]
    for reader in readers:
        reader.start()
    why = ""
    deadline = t0 + timeout_s
    try:
        while proc.poll() is None:
            if failed.wait(0.1):
                marker = next(r.marker for r in readers if r.marker is not None)
                why = f"failure marker {marker.decode()!r} on the console"
                break
            if time.monotonic() > deadline:
                why = f"watchdog: no exit after {timeout_s:.0f} s"
                break
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for reader in readers:
            reader.join(5)
    wall_s = time.monotonic() - t0
    returncode = None if why else proc.returncode
    serial = readers[0].text()
    stderr = readers[1].text()
    if stderr.strip():
        serial += "\n--- qemu stderr ---\n" + stderr
    return returncode, serial, wall_s, why, readers[0].phases


def _suite_script(suites: Sequence[GuestSuite]) -> str:
    lines = ['out="$CGVM_JOB/suites"', 'mkdir -p "$out"']
    for suite in suites:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", suite.name):
            raise ValueError(f"bad suite name {suite.name!r}")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in suite.env.items())
        command = f"env {env} {shlex.join(suite.argv)}" if env else shlex.join(suite.argv)
        n = suite.name
        lines += [
            f'date +%s.%N > "$out/{n}.time"',
            f'(cd "$CGVM_REPO" && exec timeout -s KILL {suite.timeout_s:.0f} {command}) '
            f'< /dev/null > "$out/{n}.out" 2> "$out/{n}.err"',
            f'echo $? > "$out/{n}.rc"',
            f'date +%s.%N >> "$out/{n}.time"',
        ]
    lines.append("exit 0")
    return "\n".join(lines)


def run_suites(assets: Assets, suites: Sequence[GuestSuite], **options: object) -> BatchResult:
    """Run several guest suites one after another in ONE boot; options as for run_in_vm.

    The boot's own status is 0 when every suite was started; each suite's exit status
    (124/137 after its own timeout) is in its SuiteResult.
    """
    if len({s.name for s in suites}) != len(suites):
        raise ValueError("suite names must be unique")
    if "timeout_s" not in options:
        options["timeout_s"] = 60.0 + sum(s.timeout_s for s in suites)
    vm = run_in_vm(assets, _suite_script(suites), **options)  # type: ignore[arg-type]
    results: dict[str, SuiteResult] = {}
    for suite in suites:
        rc_raw = vm.files.get(f"suites/{suite.name}.rc", b"").decode().strip()
        times = vm.files.get(f"suites/{suite.name}.time", b"").split()
        results[suite.name] = SuiteResult(
            name=suite.name,
            rc=int(rc_raw) if rc_raw.isdigit() else None,
            elapsed_s=float(times[1]) - float(times[0]) if len(times) == 2 else None,
            stdout=vm.files.get(f"suites/{suite.name}.out", b"").decode(errors="replace"),
            stderr=vm.files.get(f"suites/{suite.name}.err", b"").decode(errors="replace"),
        )
    return BatchResult(results, vm)


def parse_json_lines(text: str) -> list[dict[str, object]]:
    """The JSON objects of a guest's stdout, one per line (other lines are ignored)."""
    records: list[dict[str, object]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    records.append(value)
    return records


__all__ = [
    "ACCEL_ENV",
    "CACHE_ENV",
    "REPO_ROOT",
    "Assets",
    "BatchResult",
    "CgvmProvisionError",
    "CgvmRunError",
    "CgvmUnavailable",
    "GuestSuite",
    "SuiteResult",
    "VmResult",
    "choose_accel",
    "default_cache_root",
    "guest_hidden_paths",
    "kernel_cmdline",
    "load_order",
    "module_depends",
    "newc_archive",
    "parse_json_lines",
    "precompile_bytecode",
    "provision",
    "qemu_command",
    "resolve_status",
    "run_in_vm",
    "run_suites",
    "truthy",
]
