"""The session's batched boot itself: status plumbing, guest environment, extra suites.

Theory of operation: these tests read the same single boot as test_kernel_probe.py
(``vm_batch``). They check that the three exit-status sources agree, that a suite's status,
stdout and stderr come back separately, that the guest sees the environment the harness
promises (host interpreter, repository on PYTHONPATH, fresh /tmp, read-only root, cgroup2),
and they run any further suite (the cgroupfs differential test once it exists).
"""

from __future__ import annotations

import sys

import pytest

from . import harness
from .suites import DIFFERENTIAL, SELFCHECK, SELFCHECK_STATUS, differential_available

pytestmark = pytest.mark.vm


def test_boot_status_sources_agree(vm_batch: harness.BatchResult) -> None:
    """rc file, console marker and isa-debug-exit all say 0 (qemu exits (0 << 1) | 1)."""
    assert vm_batch.vm.status == 0, vm_batch.vm.serial
    assert vm_batch.vm.qemu_returncode == 1
    assert vm_batch.vm.warnings == ()
    assert "[init] VMPROBE_EXIT=0" in vm_batch.vm.serial


def test_suite_status_and_streams_come_back_separately(vm_batch: harness.BatchResult) -> None:
    suite = vm_batch.suites[SELFCHECK]
    assert suite.rc == SELFCHECK_STATUS
    assert suite.stderr == "to stderr\n"
    assert "to stderr" not in suite.stdout


def test_guest_environment(vm_batch: harness.BatchResult) -> None:
    lines = dict(
        part.split("=", 1)
        for line in vm_batch.suites[SELFCHECK].stdout.splitlines()
        for part in line.split(" ")
    )
    assert lines["python"] == sys.executable
    assert lines["pwd"] == str(harness.REPO_ROOT)
    assert lines["pythonpath"] == str(harness.REPO_ROOT)
    assert (lines["home"], lines["bytecode"]) == ("/tmp", "1")
    assert (lines["tmp"], lines["cgroup"]) == ("tmpfs", "cgroup2fs")
    assert lines["root"] == "ro"


def test_job_directory_is_shared_read_write(vm_batch: harness.BatchResult) -> None:
    assert vm_batch.vm.files["selfcheck.txt"] == b"written\n"


if differential_available():

    def test_cgroupfs_differential_against_the_real_kernel(
        vm_batch: harness.BatchResult,
    ) -> None:
        """tests/host/differential.py, run inside the VM against the real cgroup2."""
        suite = vm_batch.suites[DIFFERENTIAL]
        assert suite.rc == 0, f"stdout:\n{suite.stdout[-4000:]}\nstderr:\n{suite.stderr[-4000:]}"
