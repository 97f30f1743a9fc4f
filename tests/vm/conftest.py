"""pytest fixtures for the real-kernel VM tests (marker ``vm``; see docs/testing-vm.md).

Theory of operation: ``cgvm_assets`` provisions once per session (QEMU, kernel, initramfs;
about 20 s the first time on a machine, then cached). ``cgroup_vm`` exposes ``run(...)`` for a
test that needs its own boot. Boots cost 5-9 s under TCG, so the probe tests share ONE boot:
``vm_batch`` runs every guest suite of tests/vm/suites.py in a single 2-node, hugepages=8 VM,
and ``kernel_probe`` indexes the probe's JSON records for the host-side assertions.

Skip policy: when the VM can truly not be had here (not Linux x86_64, no apt and no QEMU, no
network for apt) the tests skip with the reason. Any other provisioning problem skips locally
but FAILS when the environment variable CI is true, so CI can never pass by skipping. A boot
that yields no exit status always fails, with the serial log in the message.

At the end of the session a line "vm: N real-kernel checks ran ..." is printed (under
pytest-xdist by the controller, from the worker that ran the group "vm": tests/conftest.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import WORKER_SUMMARY_KEY

from . import harness
from .suites import KERNEL_PROBE, default_suites


@dataclass
class _SessionState:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    xfailed: int = 0  # strict xfails: known bugs the check found, not passes
    xfail_reasons: list[str] = field(default_factory=list)
    skip_reason: str = ""
    boots: list[harness.VmResult] = field(default_factory=list)
    accel: str = ""
    kernel: str = ""
    provision_s: dict[str, float] = field(default_factory=dict)
    suites: dict[str, float | None] = field(default_factory=dict)
    # When this process finished collecting and when it asked for the session boot (monotonic):
    # under xdist the boot should begin as soon as the worker gets the "vm" group.
    collected_at: float | None = None
    batch_requested_at: float | None = None


_STATE = _SessionState()


def _in_ci() -> bool:
    return harness.truthy(os.environ.get("CI"))


@pytest.fixture(scope="session")
def cgvm_assets() -> harness.Assets:
    """Provisioned VM assets, or a skip (a failure under CI unless truly impossible)."""
    try:
        assets = harness.provision()
    except harness.CgvmUnavailable as exc:
        _STATE.skip_reason = f"QEMU VM unavailable on this host: {exc}"
        pytest.skip(_STATE.skip_reason)
    except harness.CgvmProvisionError as exc:
        _STATE.skip_reason = f"QEMU VM provisioning failed: {exc}"
        if _in_ci():
            pytest.fail(f"{_STATE.skip_reason} (CI is set: a skip would hide this)", pytrace=False)
        pytest.skip(_STATE.skip_reason)
    _STATE.kernel = f"{assets.kernel_release} ({assets.boot_mode})"
    _STATE.provision_s = dict(assets.timings_s)
    return assets


class CgroupVm:
    """Boots throwaway VMs on the session's assets; one boot per call, never two at once."""

    def __init__(self, assets: harness.Assets) -> None:
        self.assets = assets
        self.accel, self.accel_reason = harness.choose_accel()

    def run(
        self,
        script_or_command: str | Sequence[str],
        *,
        numa: int = 1,
        hugepages: int = 0,
        timeout: float = 120.0,
        **options: Any,
    ) -> harness.VmResult:
        """Run shell text or an argv in a fresh VM; see harness.run_in_vm for ``options``."""
        try:
            result = harness.run_in_vm(
                self.assets,
                script_or_command,
                numa_nodes=numa,
                hugepages=hugepages,
                timeout_s=timeout,
                accel=self.accel,
                **options,
            )
        except harness.CgvmRunError as exc:
            pytest.fail(f"VM boot failed: {exc}", pytrace=False)
        self._record(result)
        return result

    def run_suites(
        self,
        suites: Sequence[harness.GuestSuite],
        *,
        numa: int = 1,
        hugepages: int = 0,
        **options: Any,
    ) -> harness.BatchResult:
        """Run several guest suites in ONE boot (see harness.run_suites)."""
        try:
            batch = harness.run_suites(
                self.assets,
                suites,
                numa_nodes=numa,
                hugepages=hugepages,
                accel=self.accel,
                **options,
            )
        except harness.CgvmRunError as exc:
            pytest.fail(f"VM boot failed: {exc}", pytrace=False)
        self._record(batch.vm)
        _STATE.suites.update({n: r.elapsed_s for n, r in batch.suites.items()})
        return batch

    def _record(self, result: harness.VmResult) -> None:
        _STATE.boots.append(result)
        _STATE.accel = result.accel


@pytest.fixture(scope="session")
def cgroup_vm(cgvm_assets: harness.Assets) -> CgroupVm:
    """The session's VM runner: ``cgroup_vm.run(script, numa=, hugepages=, timeout=)``."""
    return CgroupVm(cgvm_assets)


@pytest.fixture(scope="session")
def vm_batch(cgroup_vm: CgroupVm) -> harness.BatchResult:
    """Every suite of tests/vm/suites.py, run in one boot with 2 NUMA nodes and hugepages=8."""
    _STATE.batch_requested_at = time.monotonic()
    return cgroup_vm.run_suites(default_suites(), numa=2, hugepages=8)


@dataclass(frozen=True)
class Probe:
    """The kernel probe's records by id, with the guest's output for failure messages."""

    suite: harness.SuiteResult
    records: Mapping[str, Mapping[str, Any]]

    def get(self, check_id: str) -> Mapping[str, Any]:
        """The record ``check_id``; fails the test (with the guest's stderr) if it is missing."""
        record = self.records.get(check_id)
        if record is None:
            errors = [r["traceback"] for k, r in self.records.items() if k.startswith("error ")]
            pytest.fail(
                f"the guest probe reported no {check_id!r} (rc {self.suite.rc})\n"
                f"guest errors: {errors}\nguest stderr tail:\n{self.suite.stderr[-3000:]}",
                pytrace=False,
            )
        return record


@pytest.fixture(scope="session")
def kernel_probe(vm_batch: harness.BatchResult) -> Probe:
    """Records of tests/vm/guest_probe.py from the session boot."""
    suite = vm_batch.suites[KERNEL_PROBE]
    records = {str(r["id"]): r for r in harness.parse_json_lines(suite.stdout)}
    return Probe(suite, records)


_VM_ITEMS: set[str] = set()


# trylast: after pytest-xdist's --dist loadgroup has appended "@group" to the node ids, which
# the reports then carry.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # report.keywords also holds package names, and this package is called "vm": use markers.
    _VM_ITEMS.update(item.nodeid for item in items if item.get_closest_marker("vm"))


def pytest_collection_finish() -> None:
    _STATE.collected_at = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _VM_ITEMS:
        return
    if hasattr(report, "wasxfail"):
        if report.skipped:  # failed as expected: a known bug, reported apart from the passes
            _STATE.xfailed += 1
            if report.wasxfail not in _STATE.xfail_reasons:
                _STATE.xfail_reasons.append(report.wasxfail)
        return  # an unexpected pass of a strict xfail is reported by pytest as a failure
    if report.when == "call":
        if report.passed:
            _STATE.passed += 1
        elif report.failed:
            _STATE.failed += 1
    if report.skipped:
        _STATE.skipped += 1
    elif report.failed and report.when == "setup":
        _STATE.errors += 1  # the VM never produced data for this check


def summary_lines() -> list[str]:
    """The "vm: ..." lines of this process's VM checks (none when it ran none)."""
    ran = _STATE.passed + _STATE.failed + _STATE.xfailed
    if not ran and not _STATE.skipped and not _STATE.errors:
        return []
    line = f"vm: {ran} real-kernel checks ran ({_STATE.passed} passed, {_STATE.failed} failed"
    line += f", {_STATE.xfailed} known bug(s))" if _STATE.xfailed else ")"
    if _STATE.errors:
        line += f", {_STATE.errors} errored in setup (no VM data)"
    if _STATE.boots:
        walls = ", ".join(
            f"{b.wall_s:.1f}s, job started at {b.phases_s.get('job start', -1):.1f}s"
            for b in _STATE.boots
        )
        line += (
            f"; {len(_STATE.boots)} VM boot(s) [{walls}], {_STATE.accel}, kernel {_STATE.kernel}"
        )
    if _STATE.provision_s:
        spent = sum(_STATE.provision_s.values())
        line += f"; provisioning {spent:.1f}s"
    if _STATE.collected_at is not None and _STATE.batch_requested_at is not None:
        line += (
            f"; session boot asked for {_STATE.batch_requested_at - _STATE.collected_at:.1f}s"
            " after collection"
        )
    lines = [line]
    if _STATE.suites:
        times = ", ".join(
            f"{name} {'?' if t is None else f'{t:.1f}s'}" for name, t in _STATE.suites.items()
        )
        lines.append(f"vm: guest suites: {times}")
    lines += [f"vm: known bug (strict xfail): {reason}" for reason in _STATE.xfail_reasons]
    if _STATE.skipped:
        lines.append(f"vm: {_STATE.skipped} skipped: {_STATE.skip_reason}")
    return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    # An xdist worker has no terminal: it hands its lines to the controller, which prints them
    # (tests/conftest.py).
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[WORKER_SUMMARY_KEY] = summary_lines()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in summary_lines():
        terminalreporter.write_line(line)


Records = Mapping[str, Mapping[str, Any]]


def suite_records(
    batch: harness.BatchResult, name: str, *, daemon_stderr: str | None = None
) -> Records:
    """A JSON-lines guest suite's records by id; the test fails (with the guest's traceback and
    the tail of the daemon's stderr, `daemon_stderr` being its path among the VM's files, or
    else the suite's own stderr) when the suite skipped, raised or exited non-zero."""
    suite = batch.suites[name]
    found = {str(r["id"]): r for r in harness.parse_json_lines(suite.stdout)}
    if "skip" in found:
        pytest.fail(f"the VM lacks controllers the suite needs: {found['skip']}", pytrace=False)
    if "error" in found or suite.rc != 0:
        where = "daemon" if daemon_stderr is not None else "guest"
        raw = batch.vm.files.get(daemon_stderr, b"") if daemon_stderr is not None else b""
        stderr = raw.decode(errors="replace") if daemon_stderr is not None else suite.stderr
        detail = found.get("error", {}).get("traceback", f"exit {suite.rc}")
        pytest.fail(
            f"the guest suite failed:\n{detail}\n{where} stderr (tail):\n{stderr[-3000:]}",
            pytrace=False,
        )
    return found


def get_record(records: Records, check_id: str) -> Mapping[str, Any]:
    """The record `check_id`; a test fails naming the ones the guest printed if it is missing."""
    record = records.get(check_id)
    if record is None:
        pytest.fail(f"the guest printed no {check_id!r}; it printed {sorted(records)}")
    return record
