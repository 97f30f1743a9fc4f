"""The journal's text lines are byte for byte what `logging.Formatter(TEXT_FORMAT)` prints, and
its JSON lines carry the time they carried before.

`configure_logging` gives the text handler `TextFormatter`, the JSON one `JsonLineFormatter`,
both rendering each second's date and time once, and switches off the record fields neither
format prints (caller, thread, process): operators' `grep`s and log shippers' parsers must not
see a difference."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time

import pytest

from memstate.core.events import SCHEMA_VERSION, Envelope, PodRejected, PodRemoved
from memstate.node.journal import (
    TEXT_FORMAT,
    JsonLineFormatter,
    TextFormatter,
    configure_logging,
    log_committed,
)

# Whole seconds, the last millisecond of one, a second again after another, time going back
# (a clock step): each rendering must match the stdlib's for its own second.
CREATED = [
    1_796_300_000.0,
    1_796_300_000.0004,
    1_796_300_000.9996,
    1_796_300_001.25,
    1_796_300_001.5,
    1_796_300_000.75,
    1_796_303_600.001,
    1_796_303_600.001,
]


def _record(created: float, monkeypatch: pytest.MonkeyPatch) -> logging.LogRecord:
    """A record made at `created` (the stdlib reads time.time or time.time_ns by version)."""
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: created)
        patched.setattr(time, "time_ns", lambda: round(created * 1e9))
        return logging.LogRecord("memstate.node.daemon", logging.INFO, "", 0, "x %s", ("y",), None)


def test_text_formatter_prints_what_the_stdlib_formatter_prints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, stdlib = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for created in CREATED:
        record = _record(created, monkeypatch)
        assert ours.format(record) == stdlib.format(record)


def test_json_lines_carry_the_utc_time_to_the_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    formatter = JsonLineFormatter()
    for created in CREATED:
        record = _record(created, monkeypatch)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        line = json.loads(formatter.format(record))
        assert line["ts"] == f"{stamp}.{int(record.msecs):03d}Z"
        assert line["msg"] == "x y"


def test_a_date_format_is_the_stdlib_s(monkeypatch: pytest.MonkeyPatch) -> None:
    record = _record(CREATED[2], monkeypatch)
    assert TextFormatter().formatTime(record, "%H:%M") == logging.Formatter().formatTime(
        record, "%H:%M"
    )


def test_configured_text_lines_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `configure_logging` (its switches undone afterwards): the line as before."""
    for switch in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, switch, getattr(logging, switch))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("info", "text")
    events = [
        PodRejected(
            reason="OutOfmemory",
            message="not enough memory on NUMA node 0",
            uid="u7",
            name="web",
            namespace="shop",
            source="/m/web.yaml",
        ),
        PodRemoved(uid="u8", reason="requested"),
    ]
    envelopes = [
        Envelope(seq=7 + index, ts_ns=0, schema_v=SCHEMA_VERSION, event=event)
        for index, event in enumerate(events)
    ]
    log_committed(logging.getLogger("memstate.node.daemon"), envelopes)
    lines = stderr.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert len(lines) == 2
    assert all(re.match(stamp, line) for line in lines)
    assert [re.sub(stamp, "", line, count=1) for line in lines] == [
        "INFO memstate.node.daemon: pod_rejected seq=7 pod=shop/web uid=u7 "
        'source=/m/web.yaml reason=OutOfmemory message="not enough memory on NUMA node 0"',
        "INFO memstate.node.daemon: pod_removed seq=8 uid=u8 reason=requested",
    ]
