"""Fuzzing as a test: mutated input files through the daemon's own readers, and the worst of
them through the real daemon.

Goal: no input file — manifest (YAML or JSON), config, KubeletConfiguration, topology — makes a
reader raise anything but an `InputError` or take more than linear time, everything the daemon
would record encodes, and the real `memstate run` stays up and keeps deciding other pods when the
slowest of them land in its manifest directory. Method: `tests/fuzz/fuzzer.py` (seeded mutations,
per-input CPU budget linear in size); `tests/daemon/harness.Node` for the daemon.

Reproduce and soak:

    MEMSTATE_FUZZ_SEED=<seed> MEMSTATE_FUZZ_CASE=<n> .venv/bin/python -m pytest tests/fuzz -q
    MEMSTATE_FUZZ_ITERATIONS=100000 .venv/bin/python -m pytest tests/fuzz -q -s
    # the same soak in two processes (every second block of cases each):
    export MEMSTATE_FUZZ_ITERATIONS=100000
    MEMSTATE_FUZZ_SHARD=0/2 .venv/bin/python -m pytest tests/fuzz -q -s &
    MEMSTATE_FUZZ_SHARD=1/2 .venv/bin/python -m pytest tests/fuzz -q -s
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstate.core.events import (
    Envelope,
    ManifestInvalid,
    PodAdmissionRequested,
    PodAdmitted,
    PodRejected,
)
from tests.daemon.harness import Node, pod_manifest
from tests.fuzz.fuzzer import Report, describe, run

SEED = int(os.environ.get("MEMSTATE_FUZZ_SEED", "20261202"))
ITERATIONS = int(os.environ.get("MEMSTATE_FUZZ_ITERATIONS", "2000"))
ONLY = int(os.environ["MEMSTATE_FUZZ_CASE"]) if os.environ.get("MEMSTATE_FUZZ_CASE") else None
# "k/n": this process takes every n-th block of cases from block k, so n processes share a soak.
_SHARD = os.environ.get("MEMSTATE_FUZZ_SHARD", "0/1").split("/")
SHARD = (int(_SHARD[0]), int(_SHARD[1]))
WORST_THROUGH_DAEMON = 12


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    # Scratch files in memory when possible: the readers open real files either way, and a disk
    # shared with other jobs would make the run's wall-clock time depend on them.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        directory = Path(tempfile.mkdtemp(prefix="memstate-fuzz-", dir=shm))
    else:
        directory = tmp_path_factory.mktemp("fuzz")
    try:
        yield run(
            SEED,
            ITERATIONS,
            directory,
            only=ONLY,
            shard=SHARD,
            progress=lambda n: print(f"fuzz: {n} inputs", flush=True) if n else None,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def rerun_command(case: int | None) -> str:
    only = f" MEMSTATE_FUZZ_CASE={case}" if case is not None else ""
    if case is None and SHARD != (0, 1):
        only = f" MEMSTATE_FUZZ_SHARD={SHARD[0]}/{SHARD[1]}"
    return (
        f"MEMSTATE_FUZZ_SEED={SEED} MEMSTATE_FUZZ_ITERATIONS={ITERATIONS}{only} "
        ".venv/bin/python -m pytest tests/fuzz -q -p no:cacheprovider"
    )


def test_fuzzed_inputs_are_input_errors_in_linear_time(
    report: Report, tmp_path_factory: pytest.TempPathFactory
) -> None:
    print(
        f"fuzz: seed {report.seed}, {report.iterations} inputs, {report.outcomes}, "
        f"{len(report.findings)} findings, {report.cpu_seconds:.1f} s CPU, "
        f"{report.wall_seconds:.1f} s wall"
    )
    if report.findings:
        saved = tmp_path_factory.mktemp("fuzz-findings")
        for finding in report.findings:
            case = finding.case
            (saved / f"case-{case.number}-{case.kind}{case.suffix}").write_bytes(case.data)
        lines = [describe(finding) for finding in report.findings[:20]]
        pytest.fail(
            f"{len(report.findings)} of {report.iterations} fuzzed inputs failed (seed "
            f"{report.seed}); inputs saved in {saved}\n"
            + "\n".join(lines)
            + f"\nrerun all: {rerun_command(None)}"
            + f"\nrerun one: {rerun_command(report.findings[0].case.number)}",
            pytrace=False,
        )
    if ONLY is None and report.iterations >= 100:
        # A fuzzer that only produces garbage (or only valid input) tests nothing.
        assert report.outcomes.get("accepted", 0) >= report.iterations // 50, report.outcomes
        assert report.outcomes.get("rejected", 0) >= report.iterations // 4, report.outcomes


def decided(path: Path, records: list[Envelope]) -> bool:
    return any(
        isinstance(r.event, (ManifestInvalid, PodAdmissionRequested))
        and r.event.source == str(path)
        for r in records
    )


@pytest.mark.slow
def test_worst_inputs_through_the_real_daemon(report: Report, tmp_path: Path) -> None:
    worst = [m.case for m in report.measured if m.case.kind == "manifest"]
    worst = worst[:WORST_THROUGH_DAEMON]
    assert worst, "the run measured no manifest"
    node = Node(tmp_path / "node")
    try:
        node.start()
        paths = []
        for case in worst:  # bytes as fuzzed (not text), renamed into place like `admit` does
            path = node.manifest_dir / f"worst-{case.number}{case.suffix}"
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_bytes(case.data)
            temporary.replace(path)
            paths.append(path)
        node.drop("canary.yaml", pod_manifest("canary-after-fuzz", "1Gi"))
        node.wait_for(
            lambda records: (
                all(decided(path, records) for path in paths)
                and any(
                    isinstance(r.event, (PodAdmitted, PodRejected))
                    and r.event.uid == "canary-after-fuzz"
                    for r in records
                )
            ),
            timeout=120,
        )
        assert node.alive(), node.stderr()[-4000:]
        assert node.terminate() == 0
        assert "Traceback" not in node.stderr(), node.stderr()[-4000:]
    finally:
        if node.alive():
            node.kill()
