"""A soak of the deterministic simulation: many seeds, every failure printed as it is found.

    nice -n 19 .venv/bin/python -m tests.sim.soak 0 10000 > /tmp/soak.log 2>&1

runs seeds [0, 10000) in one process and, unlike the pytest chunks (which stop a chunk at its
first failure and print at the end), keeps going after a failure and prints it at once with the
command that reruns it; a progress line every 100 seeds says how far it got, so a soak cut off
by a deadline still tells how many seeds ran. Exit status 1 if any seed failed.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

from tests.sim.world import CONFIG_YAML, SimFailure, simulate


def main(argv: list[str]) -> int:
    """Run seeds `argv[0]` (inclusive) to `argv[1]` (exclusive); print failures and progress."""
    start, stop = int(argv[0]), int(argv[1])
    logging.disable(logging.ERROR)  # the daemon logs every fault it meets: they drown the log
    failed: list[int] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="memstate-soak-") as directory:
        config_file = Path(directory) / "config.yaml"
        config_file.write_text(CONFIG_YAML)
        for seed in range(start, stop):
            try:
                simulate(seed, config_file)
            except SimFailure as failure:
                failed.append(seed)
                print(f"FAIL {failure}", flush=True)
            done = seed + 1 - start
            if done % 100 == 0 or seed + 1 == stop:
                elapsed = time.monotonic() - began
                print(
                    f"progress: seeds {start}..{seed} ran ({done}), {len(failed)} failed, "
                    f"{elapsed:.0f} s",
                    flush=True,
                )
    print(f"done: {stop - start} seeds, failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
