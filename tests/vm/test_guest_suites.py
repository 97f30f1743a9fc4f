"""The session's batched boot itself: status plumbing, guest environment, extra suites.

Theory of operation: these tests read the same single boot as test_kernel_probe.py
(``vm_batch``). They check that the three exit-status sources agree, that a suite's status,
stdout and stderr come back separately, that the guest sees the environment the harness
promises (host interpreter, repository on PYTHONPATH, fresh /tmp, read-only root, cgroup2),
and they run any further suite (the cgroupfs differential test once it exists).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from . import harness
from .suites import (
    DIFFERENTIAL,
    DIFFERENTIAL_MOUNT,
    SELFCHECK,
    SELFCHECK_STATUS,
    differential_available,
)

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
    # The scenario names are known without a VM; their outcomes come from the session boot.
    from tests.host import differential as _differential

    @pytest.fixture(scope="module")
    def differential_report(vm_batch: harness.BatchResult) -> dict[str, Any]:
        suite = vm_batch.suites[DIFFERENTIAL]
        try:
            report: dict[str, Any] = json.loads(suite.stdout)
        except ValueError:
            pytest.fail(
                f"the differential suite printed no JSON report (rc {suite.rc})\n"
                f"stdout:\n{suite.stdout[-2000:]}\nstderr:\n{suite.stderr[-4000:]}",
                pytrace=False,
            )
        return report

    def test_differential_suite_exit_status(vm_batch: harness.BatchResult) -> None:
        """tests/host/differential.py exits 0 when every scenario matched the kernel."""
        suite = vm_batch.suites[DIFFERENTIAL]
        assert suite.rc == 0, f"stderr:\n{suite.stderr[-4000:]}"

    def test_differential_ran_on_the_vm_kernel(differential_report: dict[str, Any]) -> None:
        facts = differential_report["facts"]
        assert differential_report["mount"] == DIFFERENTIAL_MOUNT
        assert {"memory", "cpuset", "hugetlb"} <= set(facts["mount_controllers"])
        assert differential_report["planted_bugs"] == []

    @pytest.mark.parametrize("scenario", sorted(_differential.BUILDERS))
    def test_sim_matches_real_kernel(differential_report: dict[str, Any], scenario: str) -> None:
        """SimCgroupFS and the VM's kernel give identical outcomes for every step."""
        results = {r["name"]: r for r in differential_report["results"]}
        assert scenario in results, f"scenario {scenario} did not run in the VM"
        result = results[scenario]
        detail = json.dumps(result["mismatches"] or result["reason"], indent=1)
        assert result["status"] == "match", detail
        assert result["steps"], "a scenario that ran must have steps"
