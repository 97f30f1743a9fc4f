"""The journal skips what its logger's level would drop, and still prints what it would not.

`log_committed` and `log_drift` check the level before formatting (the commit path calls them
once per batch); the lines printed at each level must be exactly those a logger at that level
prints when every line is formatted."""

from __future__ import annotations

import logging

import pytest

from memstate.core.events import (
    SCHEMA_VERSION,
    Envelope,
    ManifestInvalid,
    NodeReconfigurationDeferred,
    PodRemoved,
)
from memstate.node.journal import log_committed, log_drift


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


def _envelopes() -> list[Envelope]:
    events = [
        PodRemoved(uid="u1", reason="requested"),
        NodeReconfigurationDeferred(message="topology and config disagree"),
        ManifestInvalid(source="/m/a.yaml", error="bad"),
    ]
    return [
        Envelope(seq=index + 1, ts_ns=0, schema_v=SCHEMA_VERSION, event=event)
        for index, event in enumerate(events)
    ]


def _printed(level: int) -> list[tuple[str, str]]:
    logger = logging.getLogger(f"memstate.test.journal.{level}")
    logger.propagate = False
    collect = _Collect()
    logger.handlers[:] = [collect]
    logger.setLevel(level)
    log_committed(logger, _envelopes())
    log_drift(logger, "kubepods/pod1", "memory.min", "0", "1048576")
    return collect.lines


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (
            logging.DEBUG,
            ["pod_removed", "config_deferred", "file_rejected", "drift_corrected"],
        ),
        (
            logging.INFO,
            ["pod_removed", "config_deferred", "file_rejected", "drift_corrected"],
        ),
        (logging.WARNING, ["config_deferred", "drift_corrected"]),
        (logging.ERROR, []),
    ],
)
def test_each_level_prints_exactly_its_lines(level: int, expected: list[str]) -> None:
    lines = _printed(level)
    assert [message.split(" ", 1)[0] for _, message in lines] == expected
    # Formatted as before: every field as key=value.
    for _, message in lines:
        assert "=" in message


def test_a_line_carries_its_fields() -> None:
    lines = _printed(logging.INFO)
    assert ("INFO", "pod_removed seq=1 uid=u1 reason=requested") in lines
    assert ("WARNING", 'config_deferred seq=2 message="topology and config disagree"') in lines


def test_every_described_kind_has_its_level_listed() -> None:
    """`log_committed` looks a record's level up before describing it: the table must name
    every kind of the catalogue `decision_fields` describes, at the level it gives."""
    from memstate.core import events
    from memstate.node.journal import _LEVELS, decision_fields
    from tests.factories import container, pod_of

    samples: dict[str, object] = {
        "pod": pod_of("u1", [container("c", "1Gi")]),
        "revoked": (),
        "allocation": None,
        "targets": None,
        "restored": False,
    }
    described = {}
    for kind in events.AnyEvent.__args__:  # type: ignore[attr-defined]
        event = kind(**{name: samples.get(name, "x") for name in kind.__struct_fields__})
        answer = decision_fields(Envelope(seq=1, ts_ns=0, schema_v=SCHEMA_VERSION, event=event))
        if answer is not None:
            described[kind] = answer[1]
    assert described == _LEVELS
