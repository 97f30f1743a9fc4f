"""CPU of the idle daemon's periodic manifest rescan: a full read of an unchanged directory.

    python -m benchmarks.manifest_rescan_cpu [--pods 500] [--samples 30] [--rounds 3]

The real `ManifestDirectory` and `PodTracker` over a directory of `--pods` manifests (read and
accepted first), then per sample what the manifest loop does every `rescanSeconds` when nothing
happened: a read without hints (a full rescan: the listing and one stat per file, no file read),
the tracker's `update` with what the read returns, and `accept`. The clock is this thread's CPU
time (`time.thread_time`) around the read and around the tracker. No worker-thread hand-off (the
daemon makes one per rescan), no event log. Prints the median per round and, with `--rounds` > 1,
the median and range of the rounds. At the default period (30 s) a millisecond per rescan is
0.0033 % of a core (docs/performance.md, "Idle CPU").

A/B: `python -m benchmarks.X` imports the `memstate` of the current directory, so run it from a
directory holding the other version (`git archive <rev> memstate tests | tar -x -C DIR`, and copy
`benchmarks/` there), alternating with a run from this one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from memstate.node.manifests import ManifestDirectory
from tests.daemon.harness import pod_manifest


def one_round(directory: Path, samples: int) -> tuple[float, float]:
    """(read, tracker) CPU milliseconds per rescan, medians of `samples`."""
    source = ManifestDirectory(directory, node_name="bench")
    pods, changes = source.read_changes()
    source.tracker.update("manifests", pods, changes=changes)
    source.tracker.accept()
    reads: list[float] = []
    tracks: list[float] = []
    for _ in range(samples):
        started = time.thread_time()
        pods, changes = source.read_changes()  # no hint since the last read: a full rescan
        read = time.thread_time()
        events = source.tracker.update("manifests", pods, changes=changes)
        source.tracker.accept()
        done = time.thread_time()
        if events:
            raise SystemExit(f"an unchanged directory gave events: {events[:3]}")
        reads.append((read - started) * 1e3)
        tracks.append((done - read) * 1e3)
    return statistics.median(reads), statistics.median(tracks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memstate-rescan-", dir="/var/tmp") as name:
        directory = Path(name)
        for index in range(args.pods):
            text = yaml.safe_dump(pod_manifest(f"idle-{index:04d}", "64Mi"))
            (directory / f"idle-{index:04d}.yaml").write_text(text)
        rounds = [one_round(directory, args.samples) for _ in range(args.rounds)]
    for number, (read, track) in enumerate(rounds, 1):
        print(f"round {number}: read {read:.3f} ms, tracker {track:.3f} ms per rescan")
    if len(rounds) > 1:
        columns = (("read", [r for r, _ in rounds]), ("tracker", [t for _, t in rounds]))
        for label, values in columns:
            print(
                f"{label:<8} median {statistics.median(values):.3f} ms "
                f"(spread {min(values):.3f}..{max(values):.3f}, {len(values)} rounds)"
            )


if __name__ == "__main__":
    main()
