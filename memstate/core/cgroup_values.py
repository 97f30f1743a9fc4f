"""cgroup v2 file values exactly as the kernel parses and prints them (pure; no I/O).

Theory of operation
-------------------
The reconciler must compare what it wants with what the kernel reads back. The two differ in
predictable ways: byte counts are rounded down to a page (or a huge page), anything at or above
``PAGE_COUNTER_MAX`` pages reads back as ``max``, cpu lists are re-printed in range form
(``0,1`` → ``0-1``), and written text is whitespace-stripped. If the planner compared raw text it
would rewrite ``memory.min`` on every pass. So every comparison goes through the functions here,
which replay the kernel's parsers on the *desired* value and on the *observed* text alike:

* `memparse` / `parse_page_counter` — ``lib/cmdline.c:memparse`` and
  ``mm/page_counter.c:page_counter_memparse``: C base-0 integers (``0x`` hex, a leading ``0`` means
  octal), one optional K/M/G/T/P/E suffix in either case, wrap-around modulo 2^64 instead of an
  overflow error, ``max`` as the only keyword.
* `parse_kstrtoint` — ``lib/kstrtox.c:kstrtoint`` (cgroup.procs, cgroup.freeze, cgroup.kill,
  cgroup.max.*, memory.oom.group).
* `parse_bitmap_list` / `format_bitmap_list` — ``lib/bitmap-str.c:bitmap_parselist`` and the
  ``%*pbl`` printer (cpuset.cpus, cpuset.mems).
* `parse_subtree_control` — the token loop of ``cgroup_subtree_control_write``.
* `hugetlb_size_name` — ``mm/hugetlb_cgroup.c:mem_fmt`` (``hugetlb.2MB.max``).

Everything was checked against the tables in real-kernel-vm.md (6.1) and against 6.18 on the
development host. A value the kernel would refuse raises `CgroupValueError` carrying the errno
*name* the kernel returns (``"EINVAL"``, ``"ERANGE"``, ``"EOVERFLOW"``); the core does not import
`errno`, the host layer maps names to numbers.

Normalised values are returned *without* the trailing newline the kernel prints; observed text
can be passed in as read (the newline is whitespace and stripped like on a write).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from memstate.core.errors import MemstateError

U64_MODULUS = 2**64
LONG_MAX = 2**63 - 1
UINT_MAX = 2**32 - 1
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
DEFAULT_PAGE_SIZE_BYTES = 4096
# The kernel's isspace() for ASCII: what strstrip() removes around a written value.
KERNEL_WHITESPACE = " \t\n\v\f\r"
# What to write to set a file to the empty value (cpuset.cpus, cpuset.mems): a zero-length write
# changes nothing, and the kernel strips this to "", which means "empty".
EMPTY_WRITE = "\n"
# Longest text any parser here accepts; cgroup writes are capped at one page by kernfs anyway.
MAX_VALUE_LENGTH = 4096

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB
# memparse suffixes and the power of 1024 each stands for.
_MEMPARSE_SHIFTS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}

# Controllers cgroup v2 knows by name, in the kernel's subsystem order (the order cgroup.controllers
# and cgroup.subtree_control print in). perf_event is implicit: known, never listed.
CONTROLLER_ORDER = (
    "cpuset",
    "cpu",
    "io",
    "memory",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
)
# Controllers that tolerate processes next to child cgroups (the "threaded" controllers); all
# others are domain controllers and fall under the no-internal-process rule.
THREADED_CONTROLLERS = frozenset({"cpuset", "cpu", "perf_event", "pids"})


class CgroupValueError(MemstateError):
    """A cgroup value the kernel would refuse, or read-back text that is not a cgroup value.

    `errno_name` is the kernel's answer to a write of `value` (``"EINVAL"``, ``"ERANGE"``,
    ``"EOVERFLOW"``); it is None when the text came from a read and does not parse.
    """

    def __init__(self, message: str, *, value: str, errno_name: str | None) -> None:
        self.message = message
        self.value = value
        self.errno_name = errno_name
        super().__init__(f"{message}: {value!r}" + (f" ({errno_name})" if errno_name else ""))


def _reject(errno_name: str, message: str, value: str) -> CgroupValueError:
    return CgroupValueError(message, value=value, errno_name=errno_name)


def _check_length(text: str) -> None:
    if len(text) > MAX_VALUE_LENGTH:
        raise _reject("E2BIG", f"value longer than {MAX_VALUE_LENGTH} characters", text[:64])


def kernel_strip(text: str) -> str:
    """Remove leading and trailing whitespace the way the kernel's strstrip() does."""
    return text.strip(KERNEL_WHITESPACE)


def page_counter_max(page_size_bytes: int) -> int:
    """PAGE_COUNTER_MAX on a 64-bit kernel: LONG_MAX / PAGE_SIZE pages."""
    _check_page_size(page_size_bytes)
    return LONG_MAX // page_size_bytes


def _check_page_size(page_size_bytes: int) -> None:
    # A page size is a power of two; anything else is a caller bug, not kernel behaviour.
    if page_size_bytes <= 0 or page_size_bytes & (page_size_bytes - 1):
        raise ValueError(f"page size {page_size_bytes} is not a positive power of two")


# --- integers -----------------------------------------------------------------------------------


def _fixup_radix(text: str) -> tuple[int, int]:
    """Base and prefix length of a C base-0 number (``_parse_integer_fixup_radix``)."""
    if text[:1] == "0":
        if text[1:2].lower() == "x" and text[2:3] != "" and text[2] in "0123456789abcdefABCDEF":
            return 16, 2
        return 8, 0
    return 10, 0


def _parse_digits(text: str, base: int) -> tuple[int, int, bool]:
    """(value mod 2^64, digits consumed, overflowed) like the kernel's ``_parse_integer``."""
    value = 0
    count = 0
    for char in text:
        lower = char.lower()
        if "0" <= lower <= "9":
            digit = ord(lower) - ord("0")
        elif "a" <= lower <= "f":
            digit = ord(lower) - ord("a") + 10
        else:
            break
        if digit >= base:
            break
        value = value * base + digit
        count += 1
    # The kernel keeps multiplying modulo 2^64 after an overflow and only raises a flag.
    return value % U64_MODULUS, count, value >= U64_MODULUS


def simple_strtoull(text: str) -> tuple[int, str]:
    """``simple_strtoull(s, &end, 0)``: (value mod 2^64, unparsed rest). Never fails."""
    base, prefix_length = _fixup_radix(text)
    value, count, _overflowed = _parse_digits(text[prefix_length:], base)
    if count == 0:
        return 0, text
    return value, text[prefix_length + count :]


def memparse(text: str) -> tuple[int, str]:
    """``memparse()``: a base-0 integer with an optional binary K/M/G/T/P/E suffix.

    Returns (bytes mod 2^64, unparsed rest). Like the kernel it never fails by itself; the
    caller decides that a non-empty rest is an error.
    """
    value, rest = simple_strtoull(text)
    shift = _MEMPARSE_SHIFTS.get(rest[:1].lower())
    if shift is not None:
        value = (value << (10 * shift)) % U64_MODULUS
        rest = rest[1:]
    return value, rest


def parse_kstrtoint(text: str) -> int:
    """``kstrtoint(s, 0, &v)``: a signed base-0 int, one optional trailing newline, nothing else.

    Callers that strip first (most cgroup write handlers do) pass the stripped text.
    Raises CgroupValueError with EINVAL (syntax) or ERANGE (does not fit an int).
    """
    _check_length(text)
    negative = text.startswith("-")
    body = text[1:] if negative else (text[1:] if text.startswith("+") else text)
    base, prefix_length = _fixup_radix(body)
    value, count, overflowed = _parse_digits(body[prefix_length:], base)
    if overflowed:
        raise _reject("ERANGE", "integer overflows 64 bits", text)
    if count == 0:
        raise _reject("EINVAL", "not an integer", text)
    rest = body[prefix_length + count :]
    if rest.startswith("\n"):
        rest = rest[1:]
    if rest:
        raise _reject("EINVAL", "trailing characters after the integer", text)
    result = -value if negative else value
    if negative and value > 2**63:
        raise _reject("ERANGE", "integer below the signed 64-bit range", text)
    if not negative and value > LONG_MAX:
        raise _reject("ERANGE", "integer above the signed 64-bit range", text)
    if not INT_MIN <= result <= INT_MAX:
        raise _reject("ERANGE", "integer does not fit a C int", text)
    return result


# --- memory and hugetlb page counters ------------------------------------------------------------


def parse_page_counter(text: str, *, page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES) -> int:
    """Pages a write of `text` sets on a page counter (memory.min/low/high/max, swap.max, hugetlb).

    Mirrors the write handlers: strstrip, then ``page_counter_memparse(buf, "max")``: ``max``
    gives PAGE_COUNTER_MAX, otherwise ``min(memparse(buf) / PAGE_SIZE, PAGE_COUNTER_MAX)``; any
    character memparse leaves over means EINVAL (``-1``, ``garbage``, ``512MB``, ``1.5G``,
    ``+4096``). The empty string (a write of ``"\\n"``) parses as 0.
    """
    _check_length(text)
    counter_max = page_counter_max(page_size_bytes)
    stripped = kernel_strip(text)
    if stripped == "max":
        return counter_max
    value_bytes, rest = memparse(stripped)
    if rest:
        raise _reject("EINVAL", "not a memory size (digits, one K/M/G/T/P/E suffix, or max)", text)
    return min(value_bytes // page_size_bytes, counter_max)


def format_page_counter(pages: int, *, limit_pages: int, page_size_bytes: int) -> str:
    """The read-back of a page counter limit: ``max`` at `limit_pages`, else bytes."""
    if pages == limit_pages:
        return "max"
    return str(pages * page_size_bytes)


def _as_text(value: str | int) -> str:
    if isinstance(value, bool):
        raise TypeError(f"expected bytes as int or str, got {value!r}")
    return value if isinstance(value, str) else str(value)


def normalise_memory_value(
    value: str | int, *, page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES
) -> str:
    """What memory.{min,low,high,max} or memory.swap.max read back after writing `value`.

    `value` is the text to write (or read back) or a byte count. The result has no trailing
    newline: ``normalise_memory_value("1000000", page_size_bytes=4096) == "999424"``,
    ``normalise_memory_value("max\\n") == "max"``, ``normalise_memory_value(2**63 - 1) == "max"``.
    A negative int is refused like the text ``-1`` (EINVAL).
    """
    pages = parse_page_counter(_as_text(value), page_size_bytes=page_size_bytes)
    return format_page_counter(
        pages, limit_pages=page_counter_max(page_size_bytes), page_size_bytes=page_size_bytes
    )


def hugetlb_limit_pages(*, huge_page_size_bytes: int, page_size_bytes: int) -> int:
    """The page count hugetlb.<size>.max prints as ``max``: PAGE_COUNTER_MAX rounded down."""
    pages_per_huge_page = _pages_per_huge_page(huge_page_size_bytes, page_size_bytes)
    counter_max = page_counter_max(page_size_bytes)
    return counter_max - counter_max % pages_per_huge_page


def _pages_per_huge_page(huge_page_size_bytes: int, page_size_bytes: int) -> int:
    _check_page_size(page_size_bytes)
    if huge_page_size_bytes < page_size_bytes or huge_page_size_bytes % page_size_bytes:
        raise ValueError(f"huge page size {huge_page_size_bytes} is not a multiple of the page")
    return huge_page_size_bytes // page_size_bytes


def parse_hugetlb_limit(
    text: str, *, huge_page_size_bytes: int, page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES
) -> int:
    """Pages a write of `text` to hugetlb.<size>.max (or .rsvd.max) sets.

    Same parser as memory, then rounded down to whole huge pages (``1000000`` → 0 for 2 MiB).
    """
    pages = parse_page_counter(text, page_size_bytes=page_size_bytes)
    pages_per_huge_page = _pages_per_huge_page(huge_page_size_bytes, page_size_bytes)
    return pages - pages % pages_per_huge_page


def normalise_hugetlb_value(
    value: str | int,
    *,
    huge_page_size_bytes: int,
    page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES,
) -> str:
    """What hugetlb.<size>.max reads back after writing `value` (no trailing newline).

    ``normalise_hugetlb_value("1000000", huge_page_size_bytes=2 << 20) == "0"``. Also maps the
    number a never-written limit shows on newer kernels (9223372036854771712 with 4 KiB pages)
    to ``max``, so desired ``max`` matches it.
    """
    pages = parse_hugetlb_limit(
        _as_text(value), huge_page_size_bytes=huge_page_size_bytes, page_size_bytes=page_size_bytes
    )
    limit = hugetlb_limit_pages(
        huge_page_size_bytes=huge_page_size_bytes, page_size_bytes=page_size_bytes
    )
    return format_page_counter(pages, limit_pages=limit, page_size_bytes=page_size_bytes)


def memory_values_equal(
    desired: str | int, observed: str | int, *, page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES
) -> bool:
    """True when writing `desired` would leave a memory file reading like `observed` does now."""
    return normalise_memory_value(
        desired, page_size_bytes=page_size_bytes
    ) == normalise_memory_value(observed, page_size_bytes=page_size_bytes)


def hugetlb_values_equal(
    desired: str | int,
    observed: str | int,
    *,
    huge_page_size_bytes: int,
    page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES,
) -> bool:
    """True when writing `desired` would leave hugetlb.<size>.max reading like `observed`."""
    sizes = {"huge_page_size_bytes": huge_page_size_bytes, "page_size_bytes": page_size_bytes}
    return normalise_hugetlb_value(desired, **sizes) == normalise_hugetlb_value(observed, **sizes)


# --- hugetlb file names --------------------------------------------------------------------------


def hugetlb_size_name(huge_page_size_bytes: int) -> str:
    """The size part of hugetlb file names (``mem_fmt``): ``2MB``, ``1GB``, ``64KB``.

    The kernel divides and truncates, so a size is named in the largest unit it reaches.
    """
    if huge_page_size_bytes < _KIB:
        raise ValueError(f"huge page size {huge_page_size_bytes} is below 1 KiB")
    if huge_page_size_bytes >= _GIB:
        return f"{huge_page_size_bytes // _GIB}GB"
    if huge_page_size_bytes >= _MIB:
        return f"{huge_page_size_bytes // _MIB}MB"
    return f"{huge_page_size_bytes // _KIB}KB"


def hugetlb_file(huge_page_size_bytes: int, attribute: str = "max") -> str:
    """``hugetlb.<size>.<attribute>``, e.g. ``hugetlb_file(2 << 20) == "hugetlb.2MB.max"``."""
    return f"hugetlb.{hugetlb_size_name(huge_page_size_bytes)}.{attribute}"


def parse_hugetlb_size_name(name: str) -> int:
    """Bytes for a size name as the kernel prints it (``"2MB"`` → 2097152)."""
    units = {"KB": _KIB, "MB": _MIB, "GB": _GIB}
    number, unit = name[:-2], name[-2:]
    if unit not in units or not number.isdigit() or number.startswith("0"):
        raise CgroupValueError("not a hugetlb size name", value=name, errno_name=None)
    return int(number) * units[unit]


# --- cpu and node lists --------------------------------------------------------------------------


def _end_of_string(text: str, index: int) -> bool:
    return index >= len(text) or text[index] == "\n"


def _end_of_region(text: str, index: int) -> bool:
    return _end_of_string(text, index) or text[index] in KERNEL_WHITESPACE + ","


def _bitmap_number(text: str, index: int, last_bit: int) -> tuple[int, int]:
    """``bitmap_getnum``: a decimal number or ``N`` (the last bit); returns (number, new index)."""
    if text[index : index + 1] == "N":
        return last_bit, index + 1
    value, count, overflowed = _parse_digits(text[index:], 10)
    if count == 0:
        raise _reject("EINVAL", "expected a number in the list", text)
    if overflowed or value > UINT_MAX:
        raise _reject("EOVERFLOW", "number in the list overflows", text)
    return value, index + count


def _bitmap_region(text: str, index: int, nbits: int) -> tuple[set[int], int | None]:
    """Parse and check one region (``a``, ``a-b``, ``a-b:used/group``, ``all``) at `index`.

    Returns the ids and where parsing continues, or None when the list ended (the kernel's
    ``bitmap_parse_region`` returning NULL).
    """
    last_bit = nbits - 1
    if text[index : index + 3].lower() == "all":
        start, end, index = 0, last_bit, index + 3
    else:
        start, index = _bitmap_number(text, index, last_bit)
        end = start
        if not _end_of_region(text, index):
            if text[index] != "-":
                raise _reject("EINVAL", "expected '-' or ',' in the list", text)
            end, index = _bitmap_number(text, index + 1, last_bit)
    used, group = end + 1, end + 1
    following: int | None
    if _end_of_region(text, index):
        following = None if _end_of_string(text, index) else index
    else:
        if text[index] != ":":
            raise _reject("EINVAL", "expected ':' or ',' in the list", text)
        used, index = _bitmap_number(text, index + 1, last_bit)
        if text[index : index + 1] != "/":
            raise _reject("EINVAL", "expected '/' in the list", text)
        group, following = _bitmap_number(text, index + 1, last_bit)
    # bitmap_check_region: shape errors first, then the range.
    if start > end or group == 0 or used > group:
        raise _reject("EINVAL", "malformed range in the list", text)
    if end >= nbits:
        raise _reject("ERANGE", f"id {end} beyond the {nbits} the kernel supports", text)
    bits = {
        bit
        for base in range(start, end + 1, group)
        for bit in range(base, min(end + 1, base + used))
    }
    return bits, following


def parse_bitmap_list(text: str, *, nbits: int) -> frozenset[int]:
    """``bitmap_parselist``: ``0-3,8``, ``0-7:2/4``, ``N``, ``all``; the empty list is valid.

    Regions are checked one by one in order, so the first bad region decides the errno: EINVAL
    for syntax (``garbage``, ``-1``, ``1-0``), ERANGE for an id ≥ `nbits`, EOVERFLOW for a
    number above UINT_MAX. Separators are commas and whitespace; a newline right after a plain
    region ends the list, as in the kernel.
    """
    _check_length(text)
    if nbits <= 0:
        raise ValueError(f"bitmap of {nbits} bits")
    bits: set[int] = set()
    index: int | None = 0
    while index is not None:
        # bitmap_find_region: skip separators (whitespace, newline included, and commas).
        while index < len(text) and text[index] in KERNEL_WHITESPACE + ",":
            index += 1
        if _end_of_string(text, index):
            break
        region, index = _bitmap_region(text, index, nbits)
        bits |= region
    return frozenset(bits)


def format_bitmap_list(ids: Iterable[int]) -> str:
    """The kernel's ``%*pbl``: sorted ranges, ``a-b`` or ``a``, comma separated; ``""`` if none."""
    ordered = sorted(set(ids))
    if ordered and ordered[0] < 0:
        raise ValueError(f"negative id in {ordered}")
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[index], ordered[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        index = end + 1
    return ",".join(parts)


def parse_cpuset_write(text: str, *, nbits: int) -> frozenset[int]:
    """The set a write to cpuset.cpus / cpuset.mems requests: stripped, empty means "clear"."""
    stripped = kernel_strip(text)
    if not stripped:
        return frozenset()
    return parse_bitmap_list(stripped, nbits=nbits)


def normalise_cpuset_value(value: str | Iterable[int], *, nbits: int = 8192) -> str:
    """What cpuset.cpus / cpuset.mems read back after writing `value`, without the newline.

    ``normalise_cpuset_value("0,1") == "0-1"``; ``""`` for empty (the kernel prints ``"\\n"``).
    Whether the ids exist on this machine is not checked here (`nbits` only bounds the parser).
    """
    if isinstance(value, str):
        return format_bitmap_list(parse_cpuset_write(value, nbits=nbits))
    return format_bitmap_list(value)


def cpuset_values_equal(desired: str | Iterable[int], observed: str, *, nbits: int = 8192) -> bool:
    """True when `desired` names exactly the ids the observed cpuset text names."""
    return normalise_cpuset_value(desired, nbits=nbits) == normalise_cpuset_value(
        observed, nbits=nbits
    )


# --- core interface files ------------------------------------------------------------------------


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cgroup.events, cgroup.stat, memory.events) into a dict."""
    result: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise CgroupValueError("not a 'key value' line", value=line, errno_name=None)
        result[parts[0]] = int(parts[1])
    return result


def parse_controller_list(text: str) -> tuple[str, ...]:
    """cgroup.controllers / cgroup.subtree_control text into controller names."""
    return tuple(text.split())


def format_controller_list(names: Iterable[str]) -> str:
    """Controller names in kernel order, space separated, newline-terminated; ``""`` if none."""
    chosen = set(names)
    unknown = chosen.difference(CONTROLLER_ORDER)
    if unknown:
        raise ValueError(f"unknown controllers {sorted(unknown)}")
    ordered = [name for name in CONTROLLER_ORDER if name in chosen]
    return " ".join(ordered) + "\n" if ordered else ""


def parse_procs(text: str) -> tuple[int, ...]:
    """cgroup.procs text (one pid per line, unordered) into pids."""
    pids: list[int] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.strip().isdigit():
            raise CgroupValueError("not a pid", value=line, errno_name=None)
        pids.append(int(line))
    return tuple(pids)


def parse_subtree_control(
    text: str, *, known: Iterable[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """(enable, disable) requested by a write to cgroup.subtree_control.

    Like the kernel: strstrip, split on single spaces, skip empty tokens, each token ``+name`` or
    ``-name`` for a controller the kernel knows (`known`), the last token for a name wins. Any
    other token is EINVAL. Availability (ENOENT) and the no-internal-process rule (EBUSY) are
    checked by the caller, which knows the tree.
    """
    _check_length(text)
    known_names = frozenset(known)
    enable: set[str] = set()
    disable: set[str] = set()
    for token in kernel_strip(text).split(" "):
        if not token:
            continue
        sign, name = token[0], token[1:]
        if name not in known_names or sign not in "+-":
            raise _reject("EINVAL", f"bad controller token {token!r}", text)
        if sign == "+":
            enable.add(name)
            disable.discard(name)
        else:
            disable.add(name)
            enable.discard(name)
    return frozenset(enable), frozenset(disable)


# --- the protection invariant ---------------------------------------------------------------------


def uncovered_parents(
    parents: Iterable[str],
    children_of: Callable[[str], Iterable[str]],
    value_of: Callable[[str], float | None],
) -> Iterator[tuple[str, float, float]]:
    """``(parent, own, children's sum)`` for each of `parents` whose protection (memory.min or
    memory.low, as numbers: ``max`` is infinity) is below the sum of its children's.

    memory.min and memory.low only protect a child as far as its parent's own value covers it
    (memory-qos.md §12.3). The one statement of that check, for the target tree
    (`memstate.core.qos.check_targets`) and the test oracles over a live tree or a simulator
    journal (`memstate.testing.protection`). `value_of` None: a parent is not checked, a child
    counts as 0.
    """
    for parent in parents:
        own = value_of(parent)
        if own is None:
            continue
        total = sum(v for child in children_of(parent) if (v := value_of(child)) is not None)
        if total > own:
            yield parent, own, total
