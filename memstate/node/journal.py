"""The daemon's journal: one structured line per decision, per rejected file, per reload and per
drift correction, as text for people or JSON lines for log shippers (`memstate run
--log-format json`).

Every line carries its fields twice: in the text (`key=value`, so `journalctl | grep` works) and
as a `fields` dict on the log record, which the JSON formatter puts at the top level of the line.
The daemon calls `log_committed` once per committed batch, after the records are durable, so the
journal never reports a decision the log does not hold.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from memstate.core.events import (
    Envelope,
    ManifestInvalid,
    NodeReconfigurationDeferred,
    NodeReconfigured,
    PodAdmitted,
    PodRejected,
    PodRemoved,
    ReadmissionDeferred,
)

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ISO_SECOND = "%Y-%m-%dT%H:%M:%S"  # the JSON lines' time, UTC, before its milliseconds


class _PerSecond:
    """A record's whole second as `render` gives it, kept for the records of the same second: a
    journal line per decision would otherwise convert and format the same second each time."""

    def __init__(self, render: Callable[[float], str]) -> None:
        self._render = render
        # (whole second, its rendering); one attribute, replaced whole: threads may log too.
        self._held: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second, text = self._held
        if int(created) != second:
            text = self._render(created)
            self._held = (int(created), text)
        return text


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message, and the record's
    structured `fields` (if any) at the top level."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _PerSecond(lambda created: time.strftime(_ISO_SECOND, time.gmtime(created)))

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        stamp = self._stamp(record.created)
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                line.setdefault(str(key), value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, as `logging.Formatter(TEXT_FORMAT)` prints it, with the date and time of
    each second rendered once (the milliseconds are added per line, as the stdlib does)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._stamp = _PerSecond(
            lambda created: time.strftime(self.default_time_format, self.converter(created))
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The stdlib's default `asctime` ("%Y-%m-%d %H:%M:%S,mmm"; `datefmt` as it does)."""
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        return self.default_msec_format % (self._stamp(record.created), record.msecs)


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Root logging on stderr at `level` ("info", ...), as text or JSON lines.

    Neither format prints where a line was logged from (file, function, line), nor the thread
    or process: the records skip finding them (the stdlib's documented switches,
    "Optimization" in the logging HOWTO): some microseconds of each journal line. The frame walk
    also serves `stack_info=True`, which nothing here uses (its stack would be left out)."""
    logging._srcfile = None  # no frame walk per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def _line(logger: logging.Logger, level: int, what: str, fields: dict[str, Any]) -> None:
    if not logger.isEnabledFor(level):
        return  # nothing would print it: skip formatting the fields (once per decision)
    text = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
    logger.log(level, "%s %s", what, text, extra={"fields": {"event": what, **fields}})


def _text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def decision_fields(envelope: Envelope) -> tuple[str, int, dict[str, Any]] | None:
    """What the journal says about one committed record: (what, level, fields), or None for a
    record it does not report."""
    event = envelope.event
    seq = envelope.seq
    if isinstance(event, PodAdmitted):
        pod = event.pod
        numa = list(event.allocation.numa_nodes) if event.allocation is not None else []
        return (
            "pod_admitted",
            logging.INFO,
            {
                "seq": seq,
                "pod": pod.key,
                "uid": pod.uid,
                "qos": event.qos_class,
                "numa": numa,
                "restored": event.restored,
            },
        )
    if isinstance(event, PodRejected):
        pod_key = f"{event.namespace}/{event.name}" if event.name else ""
        return (
            "pod_rejected",
            logging.INFO,
            {
                "seq": seq,
                "pod": pod_key,
                "uid": event.uid,
                "source": event.source,
                "reason": event.reason,
                "message": event.message,
            },
        )
    if isinstance(event, ManifestInvalid):
        return (
            "file_rejected",
            logging.INFO,
            {"seq": seq, "source": event.source, "error": event.error},
        )
    if isinstance(event, PodRemoved):
        return ("pod_removed", logging.INFO, {"seq": seq, "uid": event.uid, "reason": event.reason})
    if isinstance(event, ReadmissionDeferred):
        return (
            "readmission_deferred",
            logging.INFO,
            {"seq": seq, "pod": event.pod.key, "uid": event.uid, "reason": event.reason},
        )
    if isinstance(event, NodeReconfigured):
        return (
            "config_applied",
            logging.INFO,
            {
                "seq": seq,
                "revoked": [r.uid for r in event.revoked],
                "reasons": [f"{r.uid}: {r.reason}" for r in event.revoked],
            },
        )
    if isinstance(event, NodeReconfigurationDeferred):
        return ("config_deferred", logging.WARNING, {"seq": seq, "message": event.message})
    return None


# The level of each kind of record `decision_fields` describes (checked before describing it).
_LEVELS: dict[type, int] = {
    PodAdmitted: logging.INFO,
    PodRejected: logging.INFO,
    ManifestInvalid: logging.INFO,
    PodRemoved: logging.INFO,
    ReadmissionDeferred: logging.INFO,
    NodeReconfigured: logging.INFO,
    NodeReconfigurationDeferred: logging.WARNING,
}


def log_committed(logger: logging.Logger, envelopes: Iterable[Envelope]) -> None:
    """One line per decision (and rejected file, and applied reload) of a committed batch."""
    for envelope in envelopes:
        level = _LEVELS.get(type(envelope.event))
        if level is None or not logger.isEnabledFor(level):
            continue  # not journalled, or not at this logger's level: not even described
        described = decision_fields(envelope)
        if described is not None:
            what, level, fields = described
            _line(logger, level, what, fields)


def log_drift(logger: logging.Logger, path: str, file: str, found: str, expected: str) -> None:
    """A cgroup file someone else changed, written back to its target."""
    _line(
        logger,
        logging.WARNING,
        "drift_corrected",
        {"cgroup": path, "file": file, "found": found, "expected": expected},
    )
