"""CPU of the pod-source half of an admission: a new manifest read and turned into its events.

    python -m benchmarks.manifest_source_cpu [--pods 500] [--samples 200] [--rounds 5]

The real `ManifestDirectory` and `PodTracker` over a directory of `--pods` resident manifests
(admitted first, accepted), then per sample what the daemon's manifest loop does for one new
file the watch reported: `hint` its name, read the directory (only the hinted file is looked
at), hand the observations to the tracker (`update`, with the directory's account of what
changed where the version has one) and `accept`. Writing the file is outside the clock; the
clock is this thread's CPU time (`time.thread_time`) around the read and the tracker, split
into the two. No event log, no reducer, no reconciler: those are `benchmarks.admission_cpu`'s.
Prints the median per round and, with `--rounds` > 1, the median and range of the rounds.

Run another version with its own directory first on the path (e.g. from a `git archive` of it);
a version without `ManifestDirectory.read_changes` reads and delivers the whole list.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from memstate.node.manifests import ManifestDirectory
from tests.daemon.harness import pod_manifest


def write(directory: Path, uid: str) -> str:
    """One manifest, written as a daemon's neighbours do (a temporary file renamed)."""
    temporary = directory / f".{uid}.tmp"
    temporary.write_text(yaml.safe_dump(pod_manifest(uid, "64Mi")))
    temporary.replace(directory / f"{uid}.yaml")
    return f"{uid}.yaml"


def run(root: Path, pods: int, samples: int) -> tuple[list[float], list[float]]:
    """(read CPU seconds, tracker CPU seconds) of each sample."""
    source = ManifestDirectory(root, order="listing", node_name="bench", full_rescan_seconds=1e9)
    for index in range(pods):
        write(root, f"resident-{index:04d}")
    source.scan()  # the first read is a full one
    source.accept()
    accounts = hasattr(source, "read_changes")
    reads: list[float] = []
    tracks: list[float] = []
    for index in range(samples):
        name = write(root, f"sample-{index:04d}")
        started = time.thread_time()
        source.hint({name})
        changes: Any = None
        if accounts:
            observed, changes = source.read_changes()
        else:
            observed = source.read()
        read = time.thread_time()
        if accounts:
            events = source.tracker.update(source.name, observed, changes=changes)
        else:
            events = source.tracker.update(source.name, observed)
        source.tracker.accept()
        ended = time.thread_time()
        if len(events) != 1:
            raise RuntimeError(f"expected one admission request, got {events}")
        reads.append(read - started)
        tracks.append(ended - read)
    return reads, tracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    totals = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="memstate-source-cpu-", dir="/var/tmp") as tmp:
            reads, tracks = run(Path(tmp), args.pods, args.samples)
        read = statistics.median(reads) * 1e6
        track = statistics.median(tracks) * 1e6
        total = statistics.median(r + t for r, t in zip(reads, tracks, strict=True)) * 1e6
        totals.append(total)
        print(
            f"{args.pods} resident manifests, {args.samples} new ones: CPU per admission "
            f"{total:.0f} us (median), of which read {read:.0f} us, tracker {track:.0f} us"
        )
    if args.rounds > 1:
        print(f"median {statistics.median(totals):.0f} us ({min(totals):.0f}..{max(totals):.0f})")


if __name__ == "__main__":
    main()
