"""The guest programs that the pytest session runs in its one batched VM boot.

Theory of operation: each suite is a command run inside the guest (cwd = repository root,
PYTHONPATH = repository, the host's interpreter as ``$CGVM_PYTHON``) whose stdout, stderr and
exit status come back to the host tests. The kernel probe always runs; further suites join
when their module exists in the tree, so a module written later is picked up without a change
here beyond its entry below. Keep the total well under a minute of TCG time.
"""

from __future__ import annotations

import os
import sys

from .harness import REPO_ROOT, GuestSuite

KERNEL_PROBE = "kernel_probe"
SELFCHECK = "harness_selfcheck"
SELFCHECK_STATUS = 7

# What the guest environment must look like to a suite; the host test asserts on its output.
SELFCHECK_SCRIPT = f"""
echo "python=$CGVM_PYTHON"
echo "pwd=$(pwd)"
echo "home=$HOME bytecode=$PYTHONDONTWRITEBYTECODE pythonpath=$PYTHONPATH"
echo "tmp=$(stat -f -c %T /tmp) cgroup=$(stat -f -c %T /sys/fs/cgroup)"
touch /cgvm-root-write-test 2>/dev/null && echo "root=rw" || echo "root=ro"
echo written > "$CGVM_JOB/selfcheck.txt"
echo "to stderr" >&2
exit {SELFCHECK_STATUS}
"""
DIFFERENTIAL = "differential"

# The cgroupfs adapter's differential test (memstate/host/sim/cgroupsim.py vs the kernel). It runs
# at the cgroup2 root of the VM, where every scenario applies (below a non-root directory the
# root_files scenario skips itself); it takes the mount as an argument and as
# MEMSTATE_TEST_CGROUP2, and prints one JSON report.
DIFFERENTIAL_MODULE = "tests.host.differential"
DIFFERENTIAL_MOUNT = "/sys/fs/cgroup"


# The reconciler converging real trees (tests/vm/guest_reconcile.py, asserted on by
# tests/vm/test_reconcile_vm.py): JSON lines, one per check.
RECONCILE = "reconcile"
RECONCILE_MODULE = "tests.vm.guest_reconcile"


# The differential again, with wrong beliefs planted in the simulator (tests/vm/guest_planted.py,
# asserted on by tests/vm/test_planted_vm.py): each must be reported as a mismatch.
PLANTED = "planted"
PLANTED_MODULE = "tests.vm.guest_planted"

# The daemon end to end on the real tree: start, admit, SIGKILL, restart in reverse order, with a
# watcher sampling the protections (tests/vm/guest_daemon.py, tests/vm/test_daemon_vm.py).
DAEMON = "daemon"
DAEMON_MODULE = "tests.vm.guest_daemon"

# Shadow mode on the real tree: memstate beside a kubelet-played tree changes not one file
# (tests/vm/guest_shadow.py, tests/vm/test_shadow_vm.py). It leaves the tree as it found it.
SHADOW = "shadow"
SHADOW_MODULE = "tests.vm.guest_shadow"


# memstate beside a kubelet the suite plays, both drivers (tests/vm/guest_beside_kubelet.py,
# tests/vm/test_beside_kubelet_vm.py).
BESIDE_KUBELET = "beside_kubelet"
BESIDE_KUBELET_MODULE = "tests.vm.guest_beside_kubelet"

# NRI: `memstate run` with `nri:`, the runtime stand-in creating real container cgroups and
# processes from its answers (tests/vm/guest_nri.py, tests/vm/test_nri_vm.py).
NRI = "nri"
NRI_MODULE = "tests.vm.guest_nri"

# RealCgroupFS on the real tree: one open per call, and the walk's answers when a cgroup is removed
# or replaced during an observation (tests/vm/guest_realfs.py, tests/vm/test_realfs_vm.py).
REALFS = "realfs"
REALFS_MODULE = "tests.vm.guest_realfs"

# A comma-separated list of suite names: only those run (one suite's tests without the whole
# boot, e.g. CGVM_SUITES=nri). Unset: every suite.
SELECT_ENV = "CGVM_SUITES"


def reconcile_available() -> bool:
    """True once tests/vm/guest_reconcile.py exists in the tree."""
    return (REPO_ROOT / "tests" / "vm" / "guest_reconcile.py").is_file()


def differential_available() -> bool:
    """True once tests/host/differential.py exists in the tree."""
    return (REPO_ROOT / "tests" / "host" / "differential.py").is_file()


# Hang guard of the suites that run the daemon. Under TCG the guest's wall time follows the
# host's load: on the shared 2-core machine at load 6.5, with the other pytest-xdist worker busy
# beside QEMU, beside_kubelet took 173 s and daemon 128 s. The guard only ends a hung suite; it
# is never what a check measures.
DAEMON_SUITE_TIMEOUT_S = 900


def default_suites(python: str | None = None) -> list[GuestSuite]:
    """The suites of the session boot, in the order they run."""
    py = python or sys.executable
    hang_guard = DAEMON_SUITE_TIMEOUT_S
    suites = [
        GuestSuite(
            SELFCHECK, ("sh", "-c", SELFCHECK_SCRIPT), timeout_s=30, expected_rc=SELFCHECK_STATUS
        ),
        GuestSuite(KERNEL_PROBE, (py, "tests/vm/guest_probe.py"), timeout_s=150),
    ]
    if differential_available():
        suites.append(
            GuestSuite(
                DIFFERENTIAL,
                (py, "-m", DIFFERENTIAL_MODULE, DIFFERENTIAL_MOUNT),
                timeout_s=180,
                env={"MEMSTATE_TEST_CGROUP2": DIFFERENTIAL_MOUNT},
            )
        )
        suites.append(
            GuestSuite(PLANTED, (py, "-m", PLANTED_MODULE, DIFFERENTIAL_MOUNT), timeout_s=120)
        )
    if reconcile_available():
        suites.append(
            GuestSuite(RECONCILE, (py, "-m", RECONCILE_MODULE, DIFFERENTIAL_MOUNT), timeout_s=120)
        )
        suites.append(
            GuestSuite(REALFS, (py, "-m", REALFS_MODULE, DIFFERENTIAL_MOUNT), timeout_s=120)
        )
    suites.append(
        GuestSuite(SHADOW, (py, "-m", SHADOW_MODULE, DIFFERENTIAL_MOUNT), timeout_s=hang_guard)
    )
    suites.append(
        GuestSuite(DAEMON, (py, "-m", DAEMON_MODULE, DIFFERENTIAL_MOUNT), timeout_s=hang_guard)
    )
    suites.append(
        GuestSuite(
            BESIDE_KUBELET,
            (py, "-m", BESIDE_KUBELET_MODULE, DIFFERENTIAL_MOUNT),
            timeout_s=hang_guard,
        )
    )
    suites.append(GuestSuite(NRI, (py, "-m", NRI_MODULE, DIFFERENTIAL_MOUNT), timeout_s=hang_guard))
    return select(suites, os.environ.get(SELECT_ENV, ""))


def select(suites: list[GuestSuite], names: str) -> list[GuestSuite]:
    """The suites named in `names` (comma-separated; empty: all); an unknown name is an error."""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    if not wanted:
        return suites
    unknown = wanted - {suite.name for suite in suites}
    if unknown:
        raise ValueError(
            f"{SELECT_ENV}: no suite {', '.join(sorted(unknown))}; "
            f"suites: {', '.join(suite.name for suite in suites)}"
        )
    return [suite for suite in suites if suite.name in wanted]
