"""Guest-side probe of the real cgroup v2 files: runs inside the cgvm VM, stdlib only.

Theory of operation: this script only *observes*. It creates cgroups under /sys/fs/cgroup,
performs writes, moves forked children in, lets the kernel OOM-kill or SIGBUS them, and prints
one JSON object per observation (``{"id": ..., ...}``) on stdout. It decides nothing: the
expected values live in the host-side tests (tests/vm/test_kernel_probe.py), which assert on
the collected records. A check that raises emits an ``error`` record and the others go on.

Children are ``os.fork()``-ed from this process rather than started as new interpreters,
because a Python start costs about 1.6 s under TCG. Memory experiments stay small (the VM has
1 GiB and no swap) and never push anonymous memory over ``memory.high``.

Run by hand in a VM: ``scripts/cgvm run --numa 2 --hugepages 8 -- python tests/vm/guest_probe.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

CG = "/sys/fs/cgroup"
MAP_HUGETLB = 0x40000  # x86_64; the mmap module does not export it in 3.11
HUGE_2M = 2 << 20

MEMORY_LIMIT_FILES = ("memory.min", "memory.low", "memory.high", "memory.max")
# Inputs written to each of MEMORY_LIMIT_FILES after a baseline of MEMORY_BASELINE.
MEMORY_BASELINE = "8192"
MEMORY_WRITES = (
    "536870912",
    "536870912\n",
    "1000000",
    "4097",
    "4095",
    "max",
    "max\n",
    "512M",
    "512m",
    "1G",
    "1T",
    "2k",
    "0x1000",
    "010",
    " 4096",
    "4096 ",
    "4096\n\n",
    "",
    "\n",
    "18446744073709551615",
    "9223372036854775807",
    "99999999999999999999999",
    "-1",
    "garbage",
    "512MB",
    "1.5G",
    "+4096",
)
HUGETLB_BASELINE = "2097152"
HUGETLB_WRITES = ("4194304", "1000000", "2M", "max", "-1", "garbage")
CPUS_BASELINE = "0"
CPUS_WRITES = ("0-1", "1", "0", "0,1", "5", "0-63", "garbage", "-1", "1-0", "", "\n")
MEMS_BASELINE = "0"
MEMS_WRITES = ("1", "0-1", "0,1", "0", "2", "3", "garbage", "", "\n")
DEFAULT_FILES = (
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.max",
    "memory.oom.group",
    "memory.current",
    "memory.events",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpus.effective",
    "cpuset.mems.effective",
    "cpuset.cpus.partition",
    "hugetlb.2MB.max",
    "hugetlb.1GB.max",
    "hugetlb.2MB.events",
    "cgroup.type",
    "cgroup.procs",
)

_emitted = [0]  # records printed so far (a list: no module-level rebinding)


def emit(check_id: str, **observed: object) -> None:
    """Print one observation as a JSON line."""
    _emitted[0] += 1
    print(json.dumps({"id": check_id, **observed}, sort_keys=True), flush=True)


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def path(cgroup: str, name: str = "") -> str:
    return f"{CG}/{cgroup}/{name}" if name else f"{CG}/{cgroup}"


def read(file: str) -> str:
    with open(file, encoding="ascii") as fh:
        return fh.read()


def try_read(file: str) -> dict[str, object]:
    """{"value": text} or {"errno": name}."""
    try:
        return {"value": read(file)}
    except OSError as exc:
        return {"errno": errname(exc)}


def write(file: str, data: str) -> dict[str, object]:
    """One open(O_WRONLY) and one os.write() of exactly ``data``; the errno if either fails."""
    try:
        fd = os.open(file, os.O_WRONLY)
    except OSError as exc:
        return {"errno": errname(exc), "at": "open"}
    try:
        written = os.write(fd, data.encode())
    except OSError as exc:
        return {"errno": errname(exc), "at": "write"}
    finally:
        os.close(fd)
    return {"errno": None, "written": written}


def must_write(file: str, data: str) -> None:
    result = write(file, data)
    if result["errno"] is not None:
        raise OSError(f"setup write {data!r} to {file}: {result['errno']}")


def mkcg(name: str) -> str:
    os.makedirs(path(name), exist_ok=True)
    return name


def rmcg(name: str) -> None:
    """Remove a cgroup tree, children first (best effort: the VM is thrown away anyway)."""
    top = path(name)
    if not os.path.isdir(top):
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def events(file: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(file).splitlines())}


def numa_stat(cgroup: str) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for line in read(path(cgroup, "memory.numa_stat")).splitlines():
        key, *nodes = line.split()
        stats[key] = {n.split("=")[0]: int(n.split("=")[1]) for n in nodes}
    return stats


# --- forked children ----------------------------------------------------------------------


def fork_child(body: Callable[[int], None]) -> tuple[int, int]:
    """Fork; the child runs body(write_fd) and exits 0 (or 70 on an exception).

    Returns (pid, read_fd) for the parent; the child reports progress through the pipe.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            body(wfd)
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    os.close(wfd)
    return pid, rfd


def join_child(pid: int, timeout_s: float = 60.0) -> dict[str, object]:
    """Wait for a child; {"exit": code} or {"signal": name}, killing it at the deadline."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)
    outcome: dict[str, object] = {"elapsed_s": round(time.monotonic() - started, 2)}
    if os.WIFSIGNALED(status):
        outcome["signal"] = signal.Signals(os.WTERMSIG(status)).name
    else:
        outcome["exit"] = os.WEXITSTATUS(status)
    return outcome


def drain(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def enter(cgroup: str) -> None:
    """Move the calling process into ``cgroup``."""
    must_write(path(cgroup, "cgroup.procs"), str(os.getpid()))


# --- checks -------------------------------------------------------------------------------


def check_env() -> None:
    nodes = read("/sys/devices/system/node/online").strip()
    huge: dict[str, int] = {}
    for entry in sorted(os.listdir("/sys/devices/system/node")):
        file = f"/sys/devices/system/node/{entry}/hugepages/hugepages-2048kB/nr_hugepages"
        if entry.startswith("node") and os.path.exists(file):
            huge[entry] = int(read(file))
    meminfo = dict(line.split(":", 1) for line in read("/proc/meminfo").splitlines())
    emit(
        "env",
        page_size=os.sysconf("SC_PAGE_SIZE"),
        release=os.uname().release,
        nodes_online=nodes,
        cpus_online=read("/sys/devices/system/cpu/online").strip(),
        hugepages_per_node=huge,
        swap_total=meminfo["SwapTotal"].strip(),
        root_controllers=read(f"{CG}/cgroup.controllers").split(),
        root_subtree_control=read(f"{CG}/cgroup.subtree_control").split(),
        python=sys.version.split()[0],
    )


def check_defaults() -> None:
    cg = mkcg("probe-defaults")
    for name in DEFAULT_FILES:
        emit(f"default {name}", **try_read(path(cg, name)))
    rmcg(cg)


def check_root_files() -> None:
    for name in (*MEMORY_LIMIT_FILES, "memory.stat", "memory.numa_stat", "memory.pressure"):
        emit(f"root {name}", exists=os.path.exists(f"{CG}/{name}"))
    # A child whose parent lacks +memory in cgroup.subtree_control has no memory.* files.
    parent = mkcg("probe-nomem")
    child = mkcg("probe-nomem/child")
    emit(
        "nomem child memory.max",
        parent_subtree_control=read(path(parent, "cgroup.subtree_control")),
        **try_read(path(child, "memory.max")),
    )
    rmcg(parent)


def probe_writes(cg: str, name: str, baseline: str, inputs: tuple[str, ...], kind: str) -> None:
    """For each input: write the baseline, then the input; record errno and the read-back."""
    for value in inputs:
        must_write(path(cg, name), baseline)
        before = read(path(cg, name))
        result = write(path(cg, name), value)
        record: dict[str, object] = {"before": before, **result, "read": read(path(cg, name))}
        if name.startswith("cpuset."):
            record["effective"] = read(path(cg, f"{name}.effective"))
        emit(f"{kind} {name} {value!r}", **record)


def check_memory_writes() -> None:
    cg = mkcg("probe-parse")
    for name in MEMORY_LIMIT_FILES:
        probe_writes(cg, name, MEMORY_BASELINE, MEMORY_WRITES, "write")
    probe_writes(cg, "hugetlb.2MB.max", HUGETLB_BASELINE, HUGETLB_WRITES, "write")
    for name, value in (("memory.current", "0"), ("memory.events", "0"), ("memory.reclaim", "1M")):
        emit(f"other {name} {value!r}", **write(path(cg, name), value))
    emit(
        "other memory.swap.max '0'",
        **write(path(cg, "memory.swap.max"), "0"),
        read=read(path(cg, "memory.swap.max")),
    )
    rmcg(cg)


def check_cpuset_writes() -> None:
    cg = mkcg("probe-cpuset")
    probe_writes(cg, "cpuset.cpus", CPUS_BASELINE, CPUS_WRITES, "write")
    probe_writes(cg, "cpuset.mems", MEMS_BASELINE, MEMS_WRITES, "write")
    # A child may ask for CPUs/nodes outside its parent's: accepted, effective falls back.
    must_write(path(cg, "cgroup.subtree_control"), "+cpuset")
    must_write(path(cg, "cpuset.cpus"), "0")
    must_write(path(cg, "cpuset.mems"), "0")
    child = mkcg(f"{cg}/child")
    emit(
        "cpuset child outside parent",
        cpus=write(path(child, "cpuset.cpus"), "1"),
        mems=write(path(child, "cpuset.mems"), "1"),
        cpus_read=read(path(child, "cpuset.cpus")),
        cpus_effective=read(path(child, "cpuset.cpus.effective")),
        mems_read=read(path(child, "cpuset.mems")),
        mems_effective=read(path(child, "cpuset.mems.effective")),
    )
    rmcg(cg)


def check_no_cross_checks() -> None:
    parent = mkcg("probe-nest")
    must_write(path(parent, "cgroup.subtree_control"), "+memory")
    child = mkcg(f"{parent}/child")
    writes = [
        (parent, "memory.min", "100M"),
        (child, "memory.min", "200M"),  # above the parent's min
        (child, "memory.max", "50M"),  # below its own min
        (child, "memory.high", "130M"),  # above its own max
        (child, "memory.low", "300M"),  # above everything
    ]
    for cg, name, value in writes:
        emit(
            f"nest {cg} {name} {value!r}", **write(path(cg, name), value), read=read(path(cg, name))
        )
    rmcg(parent)


def _sleeper(wfd: int) -> None:
    os.write(wfd, b"up")
    time.sleep(120)


def check_membership() -> None:
    cg = mkcg("probe-member")
    pid, rfd = fork_child(_sleeper)
    os.read(rfd, 2)
    emit(
        "procs move",
        **write(path(cg, "cgroup.procs"), str(pid)),
        proc_cgroup=read(f"/proc/{pid}/cgroup"),
        procs=read(path(cg, "cgroup.procs")),
        events=read(path(cg, "cgroup.events")),
    )
    emit("procs nonexistent pid", **write(path(cg, "cgroup.procs"), "4194303"))
    emit("procs garbage", **write(path(cg, "cgroup.procs"), "abc"))
    emit(
        "subtree_control +memory populated", **write(path(cg, "cgroup.subtree_control"), "+memory")
    )
    try:
        os.rmdir(path(cg))
        emit("rmdir populated", errno=None)
    except OSError as exc:
        emit("rmdir populated", errno=errname(exc))
    try:
        os.mkdir(path(cg))
        emit("mkdir existing", errno=None)
    except OSError as exc:
        emit("mkdir existing", errno=errname(exc))
    kill = write(path(cg, "cgroup.kill"), "1")
    outcome = join_child(pid, timeout_s=20)
    time.sleep(0.1)
    emit("cgroup.kill", **kill, child=outcome, events=read(path(cg, "cgroup.events")))
    os.close(rfd)

    # No internal processes: a pid into a cgroup with a domain controller in subtree_control.
    mkcg(f"{cg}/leaf")
    emit("subtree_control +memory empty", **write(path(cg, "cgroup.subtree_control"), "+memory"))
    pid, rfd = fork_child(_sleeper)
    os.read(rfd, 2)
    emit("procs into inner node", **write(path(cg, "cgroup.procs"), str(pid)))
    emit("procs into leaf", **write(path(cg, "leaf/cgroup.procs"), str(pid)))
    try:
        os.rmdir(path(cg))
        emit("rmdir with child cgroup", errno=None)
    except OSError as exc:
        emit("rmdir with child cgroup", errno=errname(exc))
    os.kill(pid, signal.SIGKILL)
    join_child(pid)
    os.close(rfd)
    rmcg(cg)
    try:
        os.rmdir(path(cg))
        emit("rmdir missing", errno=None)
    except OSError as exc:
        emit("rmdir missing", errno=errname(exc))


def _hog(cgroup: str, total_mib: int) -> Callable[[int], None]:
    def body(wfd: int) -> None:
        enter(cgroup)
        hold = []
        for i in range(total_mib):
            hold.append(b"\x01" * (1 << 20))  # touched: the memset faults every page in
            if i % 16 == 15:
                os.write(wfd, b".")

    return body


def check_oom_kill() -> None:
    cg = mkcg("probe-oom")
    must_write(path(cg, "memory.max"), "64M")
    pid, rfd = fork_child(_hog(cg, 256))
    outcome = join_child(pid, timeout_s=90)
    progress = drain(rfd)
    emit(
        "oom kill",
        child=outcome,
        mib_reported=16 * len(progress),
        events=events(path(cg, "memory.events")),
        events_local=events(path(cg, "memory.events.local")),
        peak=try_read(path(cg, "memory.peak")),
        current_after=int(read(path(cg, "memory.current"))),
        max=read(path(cg, "memory.max")),
    )
    rmcg(cg)


def check_lower_max_under_load() -> None:
    cg = mkcg("probe-lower")
    rfd_go, wfd_go = os.pipe()

    def body(wfd: int) -> None:
        os.close(wfd_go)  # so that the parent closing its end means "exit"
        enter(cg)
        hold = b"\x01" * (48 << 20)
        os.write(wfd, b"ready")
        os.read(rfd_go, 1)  # wait until told to exit
        del hold

    pid, rfd = fork_child(body)
    ready = os.read(rfd, 5)
    current = int(read(path(cg, "memory.current")))
    result = write(path(cg, "memory.max"), "16M")
    os.close(wfd_go)
    outcome = join_child(pid, timeout_s=30)
    os.close(rfd_go)
    os.close(rfd)
    emit(
        "lower memory.max under load",
        ready=ready.decode(),
        current_before=current,
        write=result,
        child=outcome,
        events=events(path(cg, "memory.events")),
        read=read(path(cg, "memory.max")),
    )
    rmcg(cg)


def check_numa_placement() -> None:
    cg = mkcg("probe-numa")
    mems = write(path(cg, "cpuset.mems"), "1")
    rfd_go, wfd_go = os.pipe()

    def body(wfd: int) -> None:
        os.close(wfd_go)
        enter(cg)
        hold = b"\x01" * (64 << 20)
        os.write(wfd, b"ready")
        os.read(rfd_go, 1)
        del hold

    pid, rfd = fork_child(body)
    ready = os.read(rfd, 5)
    stat = numa_stat(cg)
    effective = read(path(cg, "cpuset.mems.effective"))
    os.close(wfd_go)
    outcome = join_child(pid, timeout_s=30)
    os.close(rfd_go)
    os.close(rfd)
    emit(
        "numa placement",
        mems_write=mems,
        ready=ready.decode(),
        mems_effective=effective,
        anon=stat.get("anon", {}),
        child=outcome,
    )
    rmcg(cg)


def check_hugetlb_sigbus() -> None:
    cg = mkcg("probe-huge")
    limit = write(path(cg, "hugetlb.2MB.max"), "4194304")

    def body(wfd: int) -> None:
        enter(cg)
        area = mmap.mmap(-1, 4 * HUGE_2M, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
        os.write(wfd, b"m")
        for page in range(4):
            area[page * HUGE_2M] = 1
            os.write(wfd, b"t")  # one "t" per huge page touched successfully

    pid, rfd = fork_child(body)
    outcome = join_child(pid, timeout_s=30)
    progress = drain(rfd)
    emit(
        "hugetlb sigbus",
        limit_write=limit,
        child=outcome,
        mapped="m" in progress,
        pages_touched=progress.count("t"),
        events=events(path(cg, "hugetlb.2MB.events")),
        max=read(path(cg, "hugetlb.2MB.max")),
    )
    rmcg(cg)


CHECKS: tuple[Callable[[], None], ...] = (
    check_env,
    check_defaults,
    check_root_files,
    check_memory_writes,
    check_cpuset_writes,
    check_no_cross_checks,
    check_membership,
    check_oom_kill,
    check_lower_max_under_load,
    check_numa_placement,
    check_hugetlb_sigbus,
)


def main() -> int:
    """Run every check (or those named on the command line); print one JSON line each."""
    wanted = set(sys.argv[1:])
    errors = 0
    for check in CHECKS:
        if wanted and check.__name__ not in wanted:
            continue
        started = time.monotonic()
        try:
            check()
        except Exception:
            errors += 1
            emit(f"error {check.__name__}", traceback=traceback.format_exc())
        emit(f"timing {check.__name__}", seconds=round(time.monotonic() - started, 2))
    emit("done", records=_emitted[0] + 1, errors=errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
