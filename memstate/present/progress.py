"""A progress bar for long replays and audits: one line on stderr, on a terminal only.

Why not a library: tqdm or rich would add a dependency to a daemon package for one line of
output. This is what we need and no more: drawn only when stderr is a TTY (so pipes, logs and
tests never see control characters), redrawn at most every `interval_seconds` (a replay step
takes microseconds; drawing each one would cost more than the replay), erased when done so the
command's own output starts on a clean line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 30


class Progress:
    """`update(done)` as work goes, `close()` at the end (also a context manager)."""

    def __init__(
        self,
        total: int,
        *,
        label: str,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(total, 0)
        self.label = label
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.started = clock()
        self.next_draw = self.started + interval_seconds
        self.drawn = False

    def update(self, done: int) -> None:
        """Record progress; draws only when enabled and the interval has passed."""
        if not self.enabled:
            return
        now = self.clock()
        if now < self.next_draw:
            return
        self.next_draw = now + self.interval_seconds
        self.stream.write("\r" + self.line(done, now - self.started))
        self.stream.flush()
        self.drawn = True

    def line(self, done: int, elapsed_seconds: float) -> str:
        """The text of the bar: label, bar, count, rate and time left."""
        rate = done / elapsed_seconds if elapsed_seconds > 0 else 0.0
        if self.total:
            fraction = min(done / self.total, 1.0)
            filled = int(fraction * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            left = (self.total - done) / rate if rate > 0 else 0.0
            return (
                f"{self.label} [{bar}] {done}/{self.total} {fraction:4.0%} "
                f"{rate:,.0f}/s, {left:.0f}s left "
            )
        return f"{self.label} {done} {rate:,.0f}/s "

    def close(self) -> None:
        """Erase the bar (if one was drawn)."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
