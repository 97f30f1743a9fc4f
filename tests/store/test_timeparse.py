"""`memstate.cli.timeparse`: the time forms of `--since/--until`, against hand-computed values."""

from __future__ import annotations

import pytest

from memstate.cli.timeparse import TimeFormatError, parse_duration_ns, parse_time_ns

S = 1_000_000_000
NOW = 1_772_366_400 * S  # 2026-03-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-1h", NOW - 3600 * S),
        ("-30m", NOW - 1800 * S),
        ("-1h30m", NOW - 5400 * S),
        ("+10s", NOW + 10 * S),
        ("-1.5h", NOW - 5400 * S),
        ("-250ms", NOW - 250_000_000),
        ("2d ago", NOW - 2 * 86400 * S),
        ("-1w", NOW - 7 * 86400 * S),
        ("2026-03-01T12:00:00Z", NOW),
        ("2026-03-01T14:00:00+02:00", NOW),
        ("2026-03-01 12:00:00.25", NOW + 250_000_000),
        ("2026-03-01", NOW - 12 * 3600 * S),
        ("@1772366400", NOW),
        ("@1772366400.5", NOW + S // 2),
        ("  -1h  ", NOW - 3600 * S),
    ],
)
def test_accepted_forms(text: str, expected: int) -> None:
    assert parse_time_ns(text, now_ns=NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "-", "-1x", "-h", "1h", "@abc", "@nan", "-1h 30"]
)
def test_rejected_forms_name_the_accepted_ones(text: str) -> None:
    with pytest.raises(TimeFormatError) as error:
        parse_time_ns(text, now_ns=NOW)
    assert isinstance(error.value, ValueError)


def test_durations_add_up() -> None:
    assert parse_duration_ns("1d2h3m4s5ms6us7ns") == (
        86400 * S + 2 * 3600 * S + 3 * 60 * S + 4 * S + 5_000_000 + 6_000 + 7
    )
