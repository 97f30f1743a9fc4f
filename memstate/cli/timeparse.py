"""Parsing the times operators type: `--since -1h`, `--until 2026-03-01T12:00:00Z`, `@1767225600`.

Pure (the caller passes `now_ns`; nothing here reads a clock), so every command that filters by
time accepts the same forms and tests need no clock:

- `now`;
- relative: a sign and one or more `<number><unit>` parts, units `ns us ms s m h d w`
  (`-1h`, `-30m`, `-1h30m`, `+10s`), or the same without sign followed by ` ago` (`2h ago`);
- absolute: ISO 8601 as `datetime.fromisoformat` reads it (`2026-03-01`, `2026-03-01T12:00:00Z`,
  `2026-03-01 12:00:00.250+02:00`); without an offset it means UTC;
- `@<seconds since the epoch>` with an optional fraction (`@1767225600.5`).

The result is integer nanoseconds since the Unix epoch, like every `ts_ns` in the log. Errors
are `ValueError`s with a message that lists the accepted forms (argparse shows it as is).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from memstate.core.errors import ScenarioError
from memstate.core.scenario import parse_timestamp

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3_600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
    "w": 7 * 86_400 * 1_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)")
FORMS = "now, -1h / -30m / -1h30m / '2h ago', ISO 8601 (2026-03-01T12:00:00Z), or @<epoch seconds>"


class TimeFormatError(ValueError):
    """A time that none of the accepted forms matches."""


def parse_time_ns(text: str, *, now_ns: int) -> int:
    """`text` as integer nanoseconds since the epoch; relative forms count from `now_ns`."""
    stripped = text.strip()
    if not stripped:
        raise TimeFormatError(f"empty time; use {FORMS}")
    if stripped == "now":
        return now_ns
    if stripped.startswith("@"):
        return _epoch_seconds(stripped[1:], text)
    if stripped[0] in "+-":
        return now_ns + (1 if stripped[0] == "+" else -1) * parse_duration_ns(stripped[1:])
    if stripped.endswith(" ago"):
        return now_ns - parse_duration_ns(stripped.removesuffix(" ago"))
    return _iso(stripped, text)


def parse_duration_ns(text: str) -> int:
    """`1h30m` → nanoseconds. Fractions are allowed per part (`1.5h`)."""
    compact = text.replace(" ", "")
    position, total = 0, Decimal(0)
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        total += Decimal(match.group(1)) * _UNIT_NS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(compact):
        raise TimeFormatError(f"{text!r} is not a duration like 1h30m (units ns us ms s m h d w)")
    return int(total)


def _epoch_seconds(digits: str, original: str) -> int:
    try:
        value = Decimal(digits)
    except InvalidOperation:
        raise TimeFormatError(f"{original!r}: expected @<seconds since the epoch>") from None
    if not value.is_finite():
        raise TimeFormatError(f"{original!r}: expected @<seconds since the epoch>")
    return int(value * 1_000_000_000)


def _iso(text: str, original: str) -> int:
    try:
        return parse_timestamp(text)
    except ScenarioError:
        raise TimeFormatError(f"{original!r} is not a time; use {FORMS}") from None
