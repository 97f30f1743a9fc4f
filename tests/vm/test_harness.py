"""Host-side tests of the cgvm harness (no VM: QEMU is replaced by a small fake).

Theory of operation: the pure parts (cpio writer, module order, ELF checks, status
resolution, command lines, accelerator choice) are tested directly. The process handling of
run_in_vm / run_suites (watchdog, failure markers, kill by PID, rc file vs console vs exit
code) runs against a fake ``qemu-system-x86_64``: a Python script that reads ``vmjob=`` from
``-append``, runs job.sh on the host the way init.sh would, and then behaves as the mode in
its environment says (exit normally, hang, print a KVM error, panic, disagree).
"""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from . import guest_probe, harness
from .suites import default_suites, select
from .test_kernel_probe import (
    CPUS_TABLE,
    DEFAULTS,
    HUGETLB_TABLE,
    MEMORY_LIMIT_TABLE,
    MEMS_TABLE,
)


def test_probe_tables_match_what_the_guest_writes() -> None:
    """The host expectations and the guest's input lists cannot drift apart silently."""
    assert set(MEMORY_LIMIT_TABLE) == set(guest_probe.MEMORY_WRITES)
    assert set(HUGETLB_TABLE) == set(guest_probe.HUGETLB_WRITES)
    assert set(CPUS_TABLE) == set(guest_probe.CPUS_WRITES)
    assert set(MEMS_TABLE) == set(guest_probe.MEMS_WRITES)
    assert set(DEFAULTS) == set(guest_probe.DEFAULT_FILES)


# --- pure helpers ---------------------------------------------------------------------------


def _read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """An independent reader for the newc format (8-hex-digit fields, 4-byte alignment)."""
    entries: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize
        body += -body % 4
        content = data[body : body + size]
        pos = body + size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, content))


def test_newc_archive_round_trips() -> None:
    entries = [
        ("bin", 0o040755, b""),
        ("init", 0o100755, b"#!/bin/sh\necho hi\n"),
        ("bin/busybox", 0o100755, bytes(range(256)) * 3 + b"x"),
    ]
    assert _read_newc(harness.newc_archive(entries)) == entries


def test_module_depends_reads_modinfo() -> None:
    ko = b"\x7fELF...\x00license=GPL\x00depends=9pnet,netfs,fscache\x00retpoline=Y\x00"
    assert harness.module_depends(ko) == ("9pnet", "netfs", "fscache")
    assert harness.module_depends(b"\x00depends=\x00name=virtio\x00") == ()
    assert harness.module_depends(b"\x00depends=snd-pcm\x00") == ("snd_pcm",)


def test_load_order_puts_dependencies_first() -> None:
    deps = {
        "9p": ("9pnet", "netfs", "fscache"),
        "fscache": ("netfs",),
        "9pnet_virtio": ("9pnet", "virtio", "virtio_ring"),
        "virtio_pci": ("virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio", "virtio_ring"),
    }
    order = harness.load_order(deps, harness.ROOT_MODULES)
    assert sorted(order) == sorted({*deps, *(d for ds in deps.values() for d in ds)})
    for module, needs in deps.items():
        assert all(order.index(n) < order.index(module) for n in needs)


def test_load_order_rejects_cycles() -> None:
    with pytest.raises(harness.CgvmProvisionError, match="cycle"):
        harness.load_order({"a": ("b",), "b": ("a",)}, ["a"])


def _elf(*, interp: bool = False, notes: bytes = b"") -> bytes:
    """A minimal ELF64 image with an optional PT_INTERP and one PT_NOTE segment."""
    phnum = 2
    phoff = 64
    note_off = phoff + 56 * phnum
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0)
    first = harness.PT_INTERP if interp else 1
    phdrs = struct.pack("<IIQQQQQQ", first, 0, 0, 0, 0, 0, 0, 0)
    phdrs += struct.pack("<IIQQQQQQ", harness.PT_NOTE, 0, note_off, 0, 0, len(notes), 0, 4)
    return header + phdrs + notes


def _note(name: bytes, n_type: int, desc: bytes) -> bytes:
    name0 = name + b"\0"

    def pad(raw: bytes) -> bytes:
        return raw + b"\0" * (-len(raw) % 4)

    return struct.pack("<III", len(name0), len(desc), n_type) + pad(name0) + pad(desc)


def test_static_elf_detection(tmp_path: Path) -> None:
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    static.write_bytes(_elf())
    dynamic.write_bytes(_elf(interp=True))
    assert harness.is_static_elf(static)
    assert not harness.is_static_elf(dynamic)
    assert not harness.is_static_elf(tmp_path / "missing")
    (tmp_path / "text").write_text("#!/bin/sh\n" * 20)
    assert not harness.is_static_elf(tmp_path / "text")


def test_pvh_note_detection() -> None:
    gnu = _note(b"GNU", 3, b"\1" * 20)
    pvh = _note(b"Xen", harness.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x1000000))
    assert harness.has_pvh_note(_elf(notes=gnu + pvh))
    assert not harness.has_pvh_note(_elf(notes=gnu))
    assert not harness.has_pvh_note(b"MZ not an elf")


def test_extract_vmlinux_from_an_xz_payload() -> None:
    kernel = _elf(notes=_note(b"Xen", harness.XEN_ELFNOTE_PHYS32_ENTRY, b"\0" * 4))
    payload = lzma.compress(kernel, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    bzimage = b"MZ" + b"\x90" * 1000 + payload + struct.pack("<I", len(kernel))
    assert harness.extract_vmlinux(bzimage) == kernel
    assert harness.extract_vmlinux(b"MZ" + gzip.compress(kernel)) is None
    not_elf = b"MZ" + lzma.compress(b"plain data", format=lzma.FORMAT_XZ)
    assert harness.extract_vmlinux(not_elf) is None


@pytest.mark.parametrize(
    ("rc_text", "serial", "qemu_rc", "status", "n_warnings"),
    [
        ("0\n", "[init] VMPROBE_EXIT=0\n", 1, 0, 0),
        ("7\n", "\x1bc\x1b[2J[init] VMPROBE_EXIT=7\n", 15, 7, 0),  # SeaBIOS noise before
        (None, "[init] VMPROBE_EXIT=3\n", 7, 3, 0),  # rc file lost: console
        (None, "boot noise\n", 9, 4, 0),  # only isa-debug-exit: (4 << 1) | 1
        ("2\n", "[init] VMPROBE_EXIT=2\n", 0, 2, 0),  # sysrq poweroff fallback: exit 0
        ("5\n", "[init] VMPROBE_EXIT=6\n", 13, 5, 2),  # the rc file wins; both others noted
        (None, "Kernel panic - not syncing\n", 0, None, 0),  # panic: no status at all
        (None, "", None, None, 0),  # killed
        ("garbage", "", 134, None, 0),  # even qemu codes are not isa-debug-exit
    ],
)
def test_resolve_status(
    rc_text: str | None, serial: str, qemu_rc: int | None, status: int | None, n_warnings: int
) -> None:
    got, warnings = harness.resolve_status(rc_text, serial, qemu_rc)
    assert got == status
    assert len(warnings) == n_warnings


def _assets(tmp_path: Path, qemu: Path | None = None) -> harness.Assets:
    return harness.Assets(
        cache_root=tmp_path,
        kernel_release="6.1.0-99-amd64",
        kernel=tmp_path / "vmlinux",
        boot_mode="pvh",
        initrd=tmp_path / "initrd.gz",
        qemu=qemu or Path("/usr/bin/qemu-system-x86_64"),
    )


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_qemu_command_single_node(tmp_path: Path) -> None:
    argv = harness.qemu_command(_assets(tmp_path), Path("/job/x"))
    assert _option(argv, "-accel") == ["tcg"]
    assert _option(argv, "-cpu") == ["max"]
    assert _option(argv, "-kernel") == [str(tmp_path / "vmlinux")]
    (append,) = _option(argv, "-append")
    assert "vmjob=/job/x" in append.split()
    assert "hugepages" not in append
    assert "-numa" not in argv
    shares = _option(argv, "-virtfs")
    assert shares[0].startswith("local,path=/,mount_tag=hostroot,")
    assert "readonly=on" in shares[0] and "multidevs=remap" in shares[0]
    assert shares[-1] == "local,path=/job/x,mount_tag=job,security_model=none"
    assert "microvm" not in " ".join(argv)


def test_qemu_command_two_nodes_and_hugepages(tmp_path: Path) -> None:
    argv = harness.qemu_command(
        _assets(tmp_path), Path("/job/x"), numa_nodes=2, hugepages=8, memory_mib=1024
    )
    (append,) = _option(argv, "-append")
    assert "hugepages=8" in append.split()
    backends = _option(argv, "-object")
    assert backends == [
        "memory-backend-ram,id=m0,size=512M",
        "memory-backend-ram,id=m1,size=512M",
    ]
    assert _option(argv, "-numa") == [
        "node,nodeid=0,cpus=0-0,memdev=m0",
        "node,nodeid=1,cpus=1-1,memdev=m1",
        "dist,src=0,dst=1,val=20",
    ]


@pytest.mark.parametrize(("numa", "memory", "cpus"), [(3, 1024, 4), (2, 1023, 2), (2, 1024, 1)])
def test_qemu_command_rejects_impossible_layouts(
    tmp_path: Path, numa: int, memory: int, cpus: int
) -> None:
    with pytest.raises(ValueError):
        harness.qemu_command(
            _assets(tmp_path), Path("/j"), numa_nodes=numa, memory_mib=memory, cpus=cpus
        )


def test_kvm_uses_host_cpu_and_extra_shares(tmp_path: Path) -> None:
    argv = harness.qemu_command(_assets(tmp_path), Path("/j"), accel="kvm", ro_shares=["/tmp/r"])
    assert _option(argv, "-cpu") == ["host"]
    assert "local,path=/tmp/r,mount_tag=ro0,security_model=none,readonly=on" in argv
    assert "vmro=/tmp/r" in _option(argv, "-append")[0].split()


def test_paths_hidden_in_the_guest_get_shares() -> None:
    paths = [Path("/work/main"), Path("/tmp/clone"), Path("/tmp/clone/.venv"), Path("/run/x")]
    assert harness.guest_hidden_paths(paths) == ["/run/x", "/tmp/clone"]
    assert harness.guest_hidden_paths([Path("/root/.pyenv"), Path("/tmpfoo")]) == []
    with pytest.raises(ValueError):
        harness.guest_hidden_paths([Path("/tmp/a,b")])
    with pytest.raises(ValueError):
        harness.guest_hidden_paths([Path("/tmp/a b")])
    assert harness.guest_hidden_paths([Path("/work/a b")]) == []  # visible: no share needed


@pytest.mark.parametrize(
    ("env", "accel"),
    [({"CGVM_ACCEL": "tcg"}, "tcg"), ({"CGVM_ACCEL": "KVM"}, "kvm"), ({}, "tcg")],
)
def test_choose_accel(env: dict[str, str], accel: str) -> None:
    assert harness.choose_accel(env)[0] == accel


def test_choose_accel_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        harness.choose_accel({"CGVM_ACCEL": "hvf"})


def test_default_suites_run_the_probe_with_this_interpreter() -> None:
    suites = {s.name: s for s in default_suites()}
    assert suites["kernel_probe"].argv == (sys.executable, "tests/vm/guest_probe.py")
    assert (harness.REPO_ROOT / suites["kernel_probe"].argv[1]).is_file()


def test_suite_selection_by_name() -> None:
    suites = [harness.GuestSuite(n, ("true",)) for n in ("kernel_probe", "daemon", "nri")]
    assert [s.name for s in select(suites, "")] == ["kernel_probe", "daemon", "nri"]
    assert [s.name for s in select(suites, "nri, kernel_probe")] == ["kernel_probe", "nri"]
    with pytest.raises(ValueError, match="no suite nope"):
        select(suites, "nri,nope")


# --- process handling against a fake QEMU ----------------------------------------------------

FAKE_QEMU = textwrap.dedent(
    """\
    #!{python}
    import os, re, subprocess, sys, time
    mode = os.environ.get("FAKE_QEMU_MODE", "ok")
    append = sys.argv[sys.argv.index("-append") + 1]
    job = re.search(r"vmjob=(\\S+)", append).group(1)
    print("\\x1bc\\x1b[2J SeaBIOS noise", flush=True)
    print("[init] started", flush=True)
    if mode == "hang":
        time.sleep(600)
    if mode == "kvm-error":
        print("KVM internal error. Suberror: 1", file=sys.stderr, flush=True)
        print("emulation failure", file=sys.stderr, flush=True)
        time.sleep(600)
    if mode == "panic":
        print("Kernel panic - not syncing: Attempted to kill init!", flush=True)
        sys.exit(0)
    print("[init] job start", flush=True)
    with open(f"{{job}}/stdout", "wb") as out, open(f"{{job}}/stderr", "wb") as err:
        rc = subprocess.call(["sh", "./job.sh"], cwd=job, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
    with open(f"{{job}}/rc", "w") as fh:
        fh.write(f"{{rc}}\\n")
    print(f"[init] VMPROBE_EXIT={{rc}}", flush=True)
    sys.exit(((rc + (mode == "disagree")) << 1) | 1)
    """
)


@pytest.fixture
def fake_assets(tmp_path: Path) -> harness.Assets:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU.format(python=sys.executable))
    qemu.chmod(0o755)
    return _assets(tmp_path, qemu)


def _set_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)


def test_run_returns_status_streams_and_job_files(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_mode(monkeypatch, "ok")
    script = 'echo "py=$CGVM_PYTHON home=$HOME"; echo oops >&2; cat "$CGVM_JOB/in.txt"; exit 7'
    result = harness.run_in_vm(fake_assets, script, files={"in.txt": "from host\n"}, accel="tcg")
    assert result.status == 7
    assert result.qemu_returncode == 15
    assert result.warnings == ()
    assert result.stdout == f"py={sys.executable} home=/tmp\nfrom host\n"
    assert result.stderr == "oops\n"
    assert result.files["in.txt"] == b"from host\n"
    assert set(result.phases_s) == {"started", "job start", "VMPROBE_EXIT"}
    assert not list((fake_assets.cache_root / "jobs").iterdir())  # job dir cleaned up


def test_run_argv_is_exec_ed_in_the_working_directory(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _set_mode(monkeypatch, "ok")
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = harness.run_in_vm(fake_assets, ["sh", "-c", 'pwd; echo "$1"', "x", "a b"], cwd=workdir)
    assert (result.status, result.stdout) == (0, f"{workdir}\na b\n")


def test_disagreeing_exit_code_is_reported(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_mode(monkeypatch, "disagree")
    result = harness.run_in_vm(fake_assets, "exit 2")
    assert result.status == 2  # the rc file wins
    assert len(result.warnings) == 1 and "isa-debug-exit says 3" in result.warnings[0]


def test_watchdog_kills_a_hung_vm(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_mode(monkeypatch, "hang")
    with pytest.raises(harness.CgvmRunError, match="watchdog") as info:
        harness.run_in_vm(fake_assets, "true", timeout_s=1.0)
    assert "[init] started" in info.value.serial


def test_kvm_internal_error_kills_qemu_at_once(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_mode(monkeypatch, "kvm-error")
    # The watchdog is far away: only the console marker can end this run.
    with pytest.raises(harness.CgvmRunError, match="KVM internal error") as info:
        harness.run_in_vm(fake_assets, "true", timeout_s=600)
    # QEMU is killed as soon as the first marker is read, so later lines may be missing.
    assert "KVM internal error" in info.value.serial


def test_panic_without_status_is_an_error(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_mode(monkeypatch, "panic")
    with pytest.raises(harness.CgvmRunError, match="no exit status") as info:
        harness.run_in_vm(fake_assets, "true")
    assert "Kernel panic" in str(info.value)


def test_suites_run_in_one_boot_with_separate_results(
    fake_assets: harness.Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_mode(monkeypatch, "ok")
    suites = [
        harness.GuestSuite("first", ("sh", "-c", "echo one; echo e1 >&2; exit 3")),
        harness.GuestSuite(
            "second", ("sh", "-c", 'echo "$GREETING from $(pwd)"'), env={"GREETING": "hello there"}
        ),
        harness.GuestSuite("slow", ("sleep", "30"), timeout_s=1),
    ]
    batch = harness.run_suites(fake_assets, suites)
    assert batch.vm.status == 0
    first, second, slow = (batch.suites[n] for n in ("first", "second", "slow"))
    assert (first.rc, first.stdout, first.stderr) == (3, "one\n", "e1\n")
    assert (second.rc, second.stdout) == (0, f"hello there from {harness.REPO_ROOT}\n")
    assert slow.rc == 137  # killed by its own timeout, the next suites still run


def test_suite_names_must_be_unique_and_simple(fake_assets: harness.Assets) -> None:
    with pytest.raises(ValueError):
        harness.run_suites(fake_assets, [harness.GuestSuite("a", ("true",))] * 2)
    with pytest.raises(ValueError):
        harness.run_suites(fake_assets, [harness.GuestSuite("a b", ("true",))])


def test_parse_json_lines_skips_noise() -> None:
    text = 'boot noise\n{"id": "a", "v": 1}\n{broken\n[1, 2]\n  {"id": "b"}\n'
    assert harness.parse_json_lines(text) == [{"id": "a", "v": 1}, {"id": "b"}]


def test_truthy() -> None:
    assert all(harness.truthy(v) for v in ("1", "true", "TRUE", " yes "))
    assert not any(harness.truthy(v) for v in (None, "", "0", "false", "no"))


def test_cache_root_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CGVM_CACHE_DIR", str(tmp_path / "c"))
    assert harness.default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("CGVM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert harness.default_cache_root() == tmp_path / "x" / "memstate" / "cgvm"


def test_initrd_is_rebuilt_when_init_sh_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kdir = tmp_path / "6.1.0-99-amd64"
    (kdir / "modules").mkdir(parents=True)
    (kdir / "modules" / "order").write_text("virtio\n9p\n")
    (kdir / "modules" / "virtio.ko").write_bytes(b"ko-virtio")
    (kdir / "modules" / "9p.ko").write_bytes(b"ko-9p")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(_elf())
    init = tmp_path / "init.sh"
    init.write_text("#!/bin/busybox sh\necho one\n")
    monkeypatch.setattr(harness, "INIT_SCRIPT", init)

    first = harness._build_initrd(kdir, busybox)
    assert harness._build_initrd(kdir, busybox) == first  # cached
    files = {
        name: (mode, data) for name, mode, data in _read_newc(gzip.decompress(first.read_bytes()))
    }
    assert files["init"] == (0o100755, init.read_bytes())
    assert files["bin/busybox"][1] == busybox.read_bytes()
    assert files["lib/modules/order"][1] == b"virtio\n9p\n"
    assert files["lib/modules/9p.ko"][1] == b"ko-9p"
    assert {"proc", "sys", "dev", "newroot"} <= set(files)

    init.write_text("#!/bin/busybox sh\necho two\n")
    second = harness._build_initrd(kdir, busybox)
    assert second != first
    assert not first.exists()  # the stale image is removed
    assert harness.INIT_SCRIPT.name == "init.sh"


def test_versioned_init_script_reads_what_the_harness_passes() -> None:
    text = (Path(harness.__file__).parent / "init.sh").read_text()
    assert text.startswith("#!/bin/busybox sh\n")
    for needle in ("vmjob=", "vmro=", "hostroot", "cgroup2", "VMPROBE_EXIT", "seek=244"):
        assert needle in text


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return out


def _tar_xz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _ko(name: str, depends: str) -> bytes:
    return f"\x7fELF fake\x00name={name}\x00depends={depends}\x00vermagic=x\x00".encode()


def test_extract_kernel_from_a_synthetic_package(tmp_path: Path) -> None:
    release = "6.1.0-99-amd64"
    mods = f"./lib/modules/{release}/kernel"
    data = _tar_xz(
        {
            f"./boot/vmlinuz-{release}": b"MZ kernel image",
            f"./boot/config-{release}": b"CONFIG_9P_FS=m\n",
            f"./lib/modules/{release}/modules.builtin": b"kernel/drivers/virtio/virtio_ring.ko\n",
            f"{mods}/drivers/virtio/virtio.ko": _ko("virtio", ""),
            f"{mods}/drivers/virtio/virtio_pci.ko": _ko("virtio_pci", "virtio,virtio_ring"),
            f"{mods}/net/9p/9pnet.ko": _ko("9pnet", ""),
            f"{mods}/net/9p/9pnet_virtio.ko.xz": lzma.compress(
                _ko("9pnet_virtio", "9pnet,virtio,virtio_ring")
            ),
            # outside the directories kept on the first pass: needs the second pass
            f"{mods}/fs/9p/9p.ko": _ko("9p", "9pnet,sha-helper"),
            f"{mods}/lib/sha-helper.ko": _ko("sha_helper", ""),
            f"{mods}/sound/unrelated.ko": _ko("unrelated", ""),
        }
    )
    deb = tmp_path / f"linux-image-{release}_1_amd64.deb"
    deb.write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", data)])
    )
    out = tmp_path / "out"
    out.mkdir()
    passes: list[str] = []
    harness._extract_kernel(deb, release, out, passes.append)

    order = (out / "modules" / "order").read_text().split()
    assert sorted(order) == ["9p", "9pnet", "9pnet_virtio", "sha_helper", "virtio", "virtio_pci"]
    assert order.index("sha_helper") < order.index("9p")
    assert order.index("virtio") < order.index("virtio_pci")
    assert (out / "modules" / "9pnet_virtio.ko").read_bytes().startswith(b"\x7fELF")  # unpacked
    assert not (out / "modules" / "unrelated.ko").exists()
    assert (out / "vmlinuz").read_bytes() == b"MZ kernel image"
    assert len(passes) == 1 and "sha_helper" in passes[0]


def test_extract_kernel_reports_missing_modules(tmp_path: Path) -> None:
    release = "6.1.0-99-amd64"
    data = _tar_xz({f"./boot/vmlinuz-{release}": b"MZ"})
    deb = tmp_path / "k.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar.xz", data)]))
    with pytest.raises(harness.CgvmProvisionError, match="lacks modules"):
        harness._extract_kernel(deb, release, tmp_path, lambda _: None)
