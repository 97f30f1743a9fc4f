"""The pure cgroup value helpers against the measured kernel tables, plus their properties.

Goal: the planner's normalisation predicts exactly what the kernel reads back, so desired and
observed values compare equal after one write and never cause endless rewrites.
Method: every row of kernel_tables goes through the pure parsers; hypothesis checks the algebra
(idempotence, round trips, agreement with a plain arithmetic model).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstate.core.cgroup_values import (
    CgroupValueError,
    cpuset_values_equal,
    format_bitmap_list,
    format_controller_list,
    hugetlb_file,
    hugetlb_size_name,
    hugetlb_values_equal,
    memory_values_equal,
    memparse,
    normalise_cpuset_value,
    normalise_hugetlb_value,
    normalise_memory_value,
    page_counter_max,
    parse_bitmap_list,
    parse_flat_keyed,
    parse_hugetlb_size_name,
    parse_kstrtoint,
    parse_procs,
    parse_subtree_control,
)
from tests.host import kernel_tables as kt

MIB = 1 << 20
GIB = 1 << 30


@pytest.mark.parametrize(("written", "errno_name", "read_back", "source"), kt.MEMORY_WRITE_ROWS)
def test_memory_rows(
    written: str, errno_name: str | None, read_back: str | None, source: str
) -> None:
    """Each measured memory.* write normalises to the measured read-back or fails alike."""
    if errno_name is None:
        assert normalise_memory_value(written, page_size_bytes=kt.PAGE_SIZE_BYTES) == read_back
    else:
        with pytest.raises(CgroupValueError) as caught:
            normalise_memory_value(written, page_size_bytes=kt.PAGE_SIZE_BYTES)
        assert caught.value.errno_name == errno_name


@pytest.mark.parametrize(
    ("size", "row"),
    [(2 * MIB, row) for row in kt.HUGETLB_2MB_WRITE_ROWS]
    + [(GIB, row) for row in kt.HUGETLB_1GB_WRITE_ROWS],
)
def test_hugetlb_rows(size: int, row: kt.Row) -> None:
    """hugetlb.<size>.max rows: memparse, then rounding down to the huge page."""
    written, errno_name, read_back, _source = row
    if errno_name is None:
        assert normalise_hugetlb_value(written, huge_page_size_bytes=size) == read_back
    else:
        with pytest.raises(CgroupValueError) as caught:
            normalise_hugetlb_value(written, huge_page_size_bytes=size)
        assert caught.value.errno_name == errno_name


def test_hugetlb_unset_limit_of_newer_kernels_means_max() -> None:
    """6.18 prints an unset limit as a number; desired "max" must still match it."""
    assert normalise_hugetlb_value(kt.HUGETLB_UNSET_MAX_6_18, huge_page_size_bytes=2 * MIB) == "max"
    assert hugetlb_values_equal("max", kt.HUGETLB_UNSET_MAX_6_18 + "\n", huge_page_size_bytes=GIB)
    assert not hugetlb_values_equal("max", "4194304\n", huge_page_size_bytes=2 * MIB)


@pytest.mark.parametrize(("written", "errno_name", "read_back", "source"), kt.CPUSET_CPUS_ROWS)
def test_cpuset_cpus_rows(
    written: str, errno_name: str | None, read_back: str | None, source: str
) -> None:
    """cpu lists with 2 possible CPUs (nbits = nr_cpu_ids = 2)."""
    if errno_name is None:
        assert normalise_cpuset_value(written, nbits=2) == read_back
    else:
        with pytest.raises(CgroupValueError) as caught:
            normalise_cpuset_value(written, nbits=2)
        assert caught.value.errno_name == errno_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-7:2/4", "0-1,4-5"),
        ("N", "7"),
        ("all", "0-7"),
        ("ALL", "0-7"),
        ("0,,1", "0-1"),
        (" 0 , 2-3 ", "0,2-3"),
        ("0\n1", "0"),  # a newline right after a plain region ends the list
        ("0,\n1", "0-1"),  # but is just a separator after a comma
        ("0-3:1/2\n5", "0,2,5"),
        ("", ""),
    ],
)
def test_bitmap_list_syntax(text: str, expected: str) -> None:
    """The rarer bitmap_parselist forms, as in lib/bitmap-str.c."""
    assert format_bitmap_list(parse_bitmap_list(text, nbits=8)) == expected


@pytest.mark.parametrize(
    ("text", "errno_name"),
    [
        ("4294967296", "EOVERFLOW"),
        ("0-3:5/4", "EINVAL"),
        ("0-3:1/0", "EINVAL"),
        ("0-3x", "EINVAL"),
        ("0-3:1/2x", "EINVAL"),
        ("3:1/2", "EINVAL"),
        ("9,garbage", "ERANGE"),  # regions are checked in order: the first error wins
        ("garbage,5", "EINVAL"),
    ],
)
def test_bitmap_list_errors(text: str, errno_name: str) -> None:
    """Errors of bitmap_parselist, the first bad region deciding."""
    with pytest.raises(CgroupValueError) as caught:
        parse_bitmap_list(text, nbits=8)
    assert caught.value.errno_name == errno_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("1\n", 1),
        ("+1", 1),
        ("-0", 0),
        ("0x10", 16),
        ("0100", 64),
        ("-2147483648", -(2**31)),
        ("2147483647", 2**31 - 1),
    ],
)
def test_kstrtoint_accepts(text: str, expected: int) -> None:
    """kstrtoint base 0: sign, hex, octal, one trailing newline."""
    assert parse_kstrtoint(text) == expected


@pytest.mark.parametrize(
    ("text", "errno_name"),
    [
        ("", "EINVAL"),
        (" 1", "EINVAL"),
        ("1 ", "EINVAL"),
        ("1\n\n", "EINVAL"),
        ("1e3", "EINVAL"),
        ("0x", "EINVAL"),
        ("08", "EINVAL"),
        ("-+1", "EINVAL"),
        ("2147483648", "ERANGE"),
        ("-2147483649", "ERANGE"),
        ("99999999999", "ERANGE"),
        ("99999999999999999999999", "ERANGE"),
    ],
)
def test_kstrtoint_refuses(text: str, errno_name: str) -> None:
    """kstrtoint errors: EINVAL for syntax, ERANGE for size (callers strip first)."""
    with pytest.raises(CgroupValueError) as caught:
        parse_kstrtoint(text)
    assert caught.value.errno_name == errno_name


@pytest.mark.parametrize(
    ("text", "expected_bytes", "rest"),
    [
        ("16E", 0, ""),  # 16 << 60 wraps to 0 modulo 2^64
        ("0x1E", 30, ""),  # E is a hex digit, not a suffix, after 0x
        ("1e", 1 << 60, ""),
        ("0X10", 16, ""),
        ("", 0, ""),
        ("12abc", 12, "abc"),
        ("4kB", 4096, "B"),
    ],
)
def test_memparse(text: str, expected_bytes: int, rest: str) -> None:
    """memparse corner cases: wrap-around, hex digits versus suffixes."""
    assert memparse(text) == (expected_bytes, rest)


@pytest.mark.parametrize(
    ("size", "name"),
    [(2 * MIB, "2MB"), (GIB, "1GB"), (64 << 10, "64KB"), (16 * GIB, "16GB"), (32 * MIB, "32MB")],
)
def test_hugetlb_naming(size: int, name: str) -> None:
    """mem_fmt: the largest unit the size reaches, integer division."""
    assert hugetlb_size_name(size) == name
    assert hugetlb_file(size) == f"hugetlb.{name}.max"
    assert hugetlb_file(size, "rsvd.max") == f"hugetlb.{name}.rsvd.max"
    assert parse_hugetlb_size_name(name) == size


@pytest.mark.parametrize("bad", ["2mb", "MB", "02MB", "2TB", "x"])
def test_hugetlb_size_name_refuses(bad: str) -> None:
    """Only names the kernel prints parse back."""
    with pytest.raises(CgroupValueError):
        parse_hugetlb_size_name(bad)


def test_int_values_and_comparisons() -> None:
    """Ints are byte counts; comparisons normalise both sides."""
    assert normalise_memory_value(2**63 - 1) == "max"
    assert normalise_memory_value(1_000_000) == "999424"
    with pytest.raises(CgroupValueError):
        normalise_memory_value(-1)
    with pytest.raises(TypeError):
        normalise_memory_value(True)
    assert memory_values_equal(1_000_000, "999424\n")
    assert memory_values_equal("9223372036854775807", "max\n")
    assert not memory_values_equal("1000000", "1003520\n")
    assert normalise_memory_value("1000000", page_size_bytes=65536) == "983040"
    assert cpuset_values_equal("0,1,2", "0-2\n")
    assert cpuset_values_equal([2, 0, 1], "0-2")
    assert not cpuset_values_equal("0-1", "0-2\n")
    assert normalise_cpuset_value("\n") == ""


def test_core_file_parsers() -> None:
    """cgroup.events / cgroup.procs / controller lists / subtree_control tokens."""
    assert parse_flat_keyed("populated 1\nfrozen 0\n") == {"populated": 1, "frozen": 0}
    with pytest.raises(CgroupValueError):
        parse_flat_keyed("populated\n")
    assert parse_procs("12\n3\n") == (12, 3)
    assert format_controller_list(["memory", "cpuset", "hugetlb"]) == "cpuset memory hugetlb\n"
    assert format_controller_list([]) == ""
    known = ["memory", "hugetlb", "cpuset"]
    assert parse_subtree_control(" +memory  -hugetlb\t", known=known) == (
        frozenset({"memory"}),
        frozenset({"hugetlb"}),
    )
    assert parse_subtree_control("+memory -memory", known=known) == (
        frozenset(),
        frozenset({"memory"}),
    )
    for bad in ("memory", "+foo", "+memory\t+cpuset"):
        with pytest.raises(CgroupValueError) as caught:
            parse_subtree_control(bad, known=known)
        assert caught.value.errno_name == "EINVAL"


# --- properties ----------------------------------------------------------------------------------

page_sizes = st.sampled_from([4096, 16384, 65536])
byte_counts = st.integers(min_value=0, max_value=2**64 + 2**20)


@given(byte_counts, page_sizes)
def test_memory_normalisation_matches_arithmetic(value_bytes: int, page_size: int) -> None:
    """Read-back = floor(bytes mod 2^64 / page) * page, or max at PAGE_COUNTER_MAX pages."""
    pages = min((value_bytes % 2**64) // page_size, page_counter_max(page_size))
    expected = "max" if pages == page_counter_max(page_size) else str(pages * page_size)
    assert normalise_memory_value(str(value_bytes), page_size_bytes=page_size) == expected
    assert normalise_memory_value(hex(value_bytes), page_size_bytes=page_size) == expected


@given(byte_counts, page_sizes, st.sampled_from([2 * MIB, 32 * MIB, GIB]))
def test_normalisation_is_idempotent(value_bytes: int, page_size: int, huge: int) -> None:
    """Writing back what was read back changes nothing (no endless rewrites)."""
    once = normalise_memory_value(value_bytes, page_size_bytes=page_size)
    assert normalise_memory_value(once + "\n", page_size_bytes=page_size) == once
    if huge >= page_size:
        hugetlb_once = normalise_hugetlb_value(
            value_bytes, huge_page_size_bytes=huge, page_size_bytes=page_size
        )
        again = normalise_hugetlb_value(
            hugetlb_once, huge_page_size_bytes=huge, page_size_bytes=page_size
        )
        assert again == hugetlb_once
        if hugetlb_once != "max":
            assert int(hugetlb_once) % huge == 0


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_bitmap_list_round_trip(ids: set[int]) -> None:
    """format then parse gives the same set; the format is canonical (no '0,1')."""
    text = format_bitmap_list(ids)
    assert parse_bitmap_list(text, nbits=301) == frozenset(ids)
    assert format_bitmap_list(parse_bitmap_list(text, nbits=301)) == text
    parts = text.split(",") if text else []
    # Canonical: no two adjacent parts could have been merged into one range.
    ends = [int(part.split("-")[-1]) for part in parts]
    starts = [int(part.split("-")[0]) for part in parts]
    assert all(start > end + 1 for end, start in zip(ends, starts[1:], strict=False))


@given(st.lists(st.integers(min_value=0, max_value=63), max_size=12))
def test_bitmap_list_any_spelling(ids: list[int]) -> None:
    """Any comma-joined spelling of singletons normalises to the canonical ranges."""
    spelled = ",".join(str(i) for i in ids)
    assert normalise_cpuset_value(spelled, nbits=64) == format_bitmap_list(ids)
