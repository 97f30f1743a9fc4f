"""CPU of the pod sources' periodic recheck: what an idle node with kubelet pods pays a second.

    python -m benchmarks.sources_recheck_cpu [--pods 500] [--waiting 0] [--samples 200] [--rounds 3]

The real `PodTracker` holding `--pods` pods the kubelet's `/pods` lists (built by the test
stand-in's `kube_pod`, decoded and observed as the kubelet source does, running container ids
included), accepted; `--waiting` of them are then deleted while their pod cgroup stays populated
(the tracker holds them until it is gone). Per sample what the sources loop does every second
(memstate.node.loops.pods.sources_loop, `SOURCE_HEALTH_SECONDS`) when nothing happened:
`recheck()` and `accept()`, with a `cgroup_gone` that answers from a set (no file read: the daemon
reads one cgroup.events file per waiting pod); then what an unchanged `/pods` poll (every
`kubelet.pollSeconds`, 5 s) hands the tracker: `update("kubelet", ...)` with the same
observations (the source's `ObservationCache` keeps unchanged pods' objects) and `accept()`. The
poll's fetch and decode are not included. The clock is this thread's CPU time
(`time.thread_time`); no trio, no lock, no event log. Prints the median per round and, with
`--rounds` > 1, the median and range of the rounds. One recheck a second: 1 ms is 0.1 % of a core.

A/B: `python -m benchmarks.X` imports the `memstate` of the current directory, so run it from a
directory holding the other version (`git archive <rev> memstate tests | tar -x -C DIR`, and copy
`benchmarks/` there), alternating with a run from this one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from memstate.node.sources.kube import decode_pod_list, observe
from memstate.node.sources.observation import ObservedPod
from memstate.node.sources.tracker import PodTracker
from tests.sources.standins import kube_pod


def kubelet_pods(count: int) -> list[ObservedPod]:
    """`count` running pods as the kubelet source observes them."""
    items = [
        kube_pod(
            f"idle-{index:04d}",
            f"{index:08x}-0000-4000-8000-000000000000",
            memory="64Mi",
            container_id="containerd://" + f"{index:064x}",
        )
        for index in range(count)
    ]
    body = json.dumps({"kind": "PodList", "apiVersion": "v1", "items": items}).encode()
    return [observe(pod, "kubelet") for pod in decode_pod_list(body, where="bench").items or ()]


def one_round(pods: list[ObservedPod], waiting: int, samples: int) -> tuple[float, float]:
    """CPU microseconds per recheck and per unchanged poll's update, medians of `samples`."""
    populated = {pod.uid for pod in pods[:waiting]}
    tracker = PodTracker(cgroup_gone=lambda uid: uid not in populated)
    tracker.update("kubelet", pods)
    tracker.accept()
    if waiting:
        tracker.update("kubelet", pods[waiting:])  # deleted; their cgroups stay populated
        tracker.accept()
    listed = pods[waiting:]
    times: list[float] = []
    polls: list[float] = []
    for _ in range(samples):
        started = time.thread_time()
        events = tracker.recheck()
        tracker.accept()
        rechecked = time.thread_time()
        events += tracker.update("kubelet", list(listed))  # what a poll with no news hands over
        tracker.accept()
        times.append((rechecked - started) * 1e6)
        polls.append((time.thread_time() - rechecked) * 1e6)
        if events:
            raise SystemExit(f"an idle recheck or poll gave events: {events[:3]}")
    return statistics.median(times), statistics.median(polls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--waiting", type=int, default=0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pods = kubelet_pods(args.pods)
    rounds = [one_round(pods, args.waiting, args.samples) for _ in range(args.rounds)]
    for number, (recheck, poll) in enumerate(rounds, 1):
        print(
            f"round {number}: {recheck:.1f} us per recheck, {poll:.1f} us per unchanged "
            f"poll's update ({args.waiting} waiting)"
        )
    if len(rounds) > 1:
        for label, values, period in (
            ("recheck", [r for r, _ in rounds], 1.0),
            ("poll update", [p for _, p in rounds], 5.0),
        ):
            median = statistics.median(values)
            print(
                f"{label:<11} median {median:.1f} us (spread {min(values):.1f}.."
                f"{max(values):.1f}, {len(values)} rounds); {median / period / 1e4:.4f} % "
                f"of a core at one every {period:g} s"
            )


if __name__ == "__main__":
    main()
