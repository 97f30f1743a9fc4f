"""What is wrong with a log and what recovery did: the reports that scanning, start-up,
`verify` and repair share, and the hint every refusal carries.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from memstate.core.errors import (
    MemstateError,
    MidLogCorruption,
    SchemaError,
    TornTail,
)
from memstate.core.events import (
    LogTailTruncated,
)

REPAIR_HINT = (
    "run `memstate log verify` for details; `memstate log repair --point-in-time` keeps "
    "everything before this point (with .broken copies of the rest)"
)

# --- reports --------------------------------------------------------------------------------------

ProblemKind = Literal[
    "torn_tail",  # recoverable: an incomplete write at the end of the last segment
    "incomplete_transaction",  # recoverable: an input whose decisions are not all there
    "corruption",  # refuse
    "newer_format",  # refuse: written by a newer build
    "schema",  # refuse: a record that does not decode (newer schema_v, or damage)
]


class LogProblem(msgspec.Struct, frozen=True):
    """The first thing wrong with a log, located precisely.

    `offset` is the byte offset in `file` where the bad frame (or header) starts, `seq` the
    sequence number expected there. `segment_level` problems (bad header, missing or swapped
    segment) concern the whole file rather than a frame in it.
    """

    kind: ProblemKind
    file: str
    offset: int
    seq: int
    message: str
    segment_level: bool = False

    @property
    def recoverable(self) -> bool:
        """True when truncation loses nothing acknowledged (torn tail, incomplete txn)."""
        return self.kind in ("torn_tail", "incomplete_transaction")

    def to_error(self) -> MemstateError:
        """The exception memstate raises for this problem (exit 65 in every case)."""
        if self.kind in ("newer_format", "schema"):
            return SchemaError(f"{self.file}: offset {self.offset}: seq {self.seq}: {self.message}")
        if self.recoverable:
            return TornTail(self.message, file=self.file, offset=self.offset, seq=self.seq)
        return MidLogCorruption(
            f"{self.message}; {REPAIR_HINT}", file=self.file, offset=self.offset, seq=self.seq
        )


class RecoveryReport(msgspec.Struct, frozen=True):
    """What `EventLog.open` did to the tail. `truncated=False` means the log ended cleanly."""

    truncated: bool = False
    segment: str = ""  # file name of the truncated segment
    offset: int = 0  # its new length: where the dropped bytes started
    bytes_dropped: int = 0
    broken_copy: str = ""  # path of the `.broken-*` copy of the segment before truncation
    reason: str = ""
    incomplete_transaction_seq: int | None = None  # seq of a dropped, incomplete input
    records_dropped: int = 0  # complete frames dropped with that transaction
    removed_temp_files: tuple[str, ...] = ()  # leftovers of an interrupted rotation/checkpoint

    def tail_truncated_event(self) -> LogTailTruncated | None:
        """The note the daemon appends after a truncation (None if nothing was cut)."""
        if not self.truncated:
            return None
        return LogTailTruncated(
            segment=self.segment,
            offset=self.offset,
            bytes_dropped=self.bytes_dropped,
            broken_copy=self.broken_copy,
        )


class SegmentInfo(msgspec.Struct, frozen=True):
    """One segment as found by a scan (`end_offset`: end of its last valid frame)."""

    name: str
    base_seq: int
    prev_chain_crc: int
    last_seq: int  # base_seq - 1 when empty
    chain_crc: int
    end_offset: int
    size_bytes: int
    format_version: int = 1
    sealed: bool = False  # closed at rotation; checked from its seal unless a full check
    acked_seq: int = 0  # the segment's mark: records up to here were acknowledged
    mark_generation: int = 0
    body_crc: int = 0  # plain CRC32C of its frames (valid prefix); 0 if not read

    @property
    def record_count(self) -> int:
        return self.last_seq - self.base_seq + 1
