"""Kubernetes resource quantities as exact integers.

Grammar (k8s.io/apimachinery `resource.Quantity`)::

    quantity  ::= sign? number suffix
    number    ::= digits | digits "." digits? | "." digits
    suffix    ::= binarySI | decimalSI | ("e" | "E") sign? digits
    binarySI  ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI ::= n | u | m | "" | k | M | G | T | P | E

The value is kept as an exact `Fraction` and rounded the way Kubernetes rounds: byte counts with
`Value()` (up, away from zero) and CPU with `MilliValue()` (up). `0.5Gi` is therefore exactly
536870912 and `500m` of memory is 1 byte. Floats are never used, so `1.5G` cannot pick up binary
rounding noise.

Limits, so that hostile input cannot burn CPU or overflow the kernel's counters: at most 64
characters, an exponent within +-64, and a result that fits a signed 64-bit integer.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from memstate.core.errors import QuantityError

INT64_MAX = 2**63 - 1
_MAX_TEXT_LENGTH = 64
_MAX_EXPONENT = 64

_BINARY_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_DECIMAL_SUFFIXES = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}

_QUANTITY_RE = re.compile(
    r"""
    (?P<sign>[+-])?
    (?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
    (?:
        (?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)
      | [eE](?P<exponent>[+-]?[0-9]+)
      | (?P<decimal>[numkMGTPE]?)
    )
    """,
    re.VERBOSE,
)

QuantityInput = str | int | float


def parse_quantity(value: QuantityInput, *, path: str = "") -> Fraction:
    """Parse a quantity (string, or a JSON/YAML number) into an exact non-negative `Fraction`.

    Raises `QuantityError` naming `path` for malformed, negative or absurd values.
    """
    if isinstance(value, bool):
        raise QuantityError(f"expected a quantity, got a boolean ({value!r})", path=path)
    if isinstance(value, int):
        if not -INT64_MAX <= value <= INT64_MAX:  # before str(): it refuses > 4,300 digits
            raise QuantityError(
                f"quantity of {value.bit_length()} bits does not fit a signed 64-bit integer",
                path=path,
            )
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"expected a finite quantity, got {value!r}", path=path)
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise QuantityError(f"expected a quantity, got {type(value).__name__}", path=path)

    if len(text) > _MAX_TEXT_LENGTH:
        raise QuantityError(
            f"quantity {text[:20]!r}... is longer than {_MAX_TEXT_LENGTH} characters", path=path
        )
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise QuantityError(
            f"{text!r} is not a Kubernetes quantity (examples: 512Mi, 1Gi, 1.5G, 1e9, 500m)",
            path=path,
        )
    number = Fraction(match["number"])
    if match["binary"] is not None:
        scaled = number * _BINARY_SUFFIXES[match["binary"]]
    elif match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"exponent of {text!r} is out of range", path=path)
        scaled = number * Fraction(10) ** exponent
    else:
        scaled = number * _DECIMAL_SUFFIXES[match["decimal"] or ""]
    if match["sign"] == "-" and scaled != 0:
        raise QuantityError(f"quantity {text!r} is negative", path=path)
    if scaled > INT64_MAX:
        raise QuantityError(
            f"quantity {text!r} is absurdly large (more than 2^63-1 units)", path=path
        )
    return scaled


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


def parse_bytes(value: QuantityInput, *, path: str = "") -> int:
    """A byte quantity rounded up to a whole byte, as `Quantity.Value()` does."""
    result = _ceil(parse_quantity(value, path=path))
    if result > INT64_MAX:
        raise QuantityError(f"quantity {value!r} does not fit a signed 64-bit integer", path=path)
    return result


def parse_millis(value: QuantityInput, *, path: str = "") -> int:
    """A CPU quantity in millicores, rounded up as `Quantity.MilliValue()` does."""
    result = _ceil(parse_quantity(value, path=path) * 1000)
    if result > INT64_MAX:
        raise QuantityError(f"quantity {value!r} does not fit a signed 64-bit integer", path=path)
    return result


def format_bytes(size_bytes: int) -> str:
    """Render a byte count the way Kubernetes prints it: the largest exact binary suffix.

    1073741824 → ``1Gi``; 5473566720 → ``5220Mi``; 1000000000 → ``1G`` is *not* produced
    (Kubernetes keeps the format it parsed); a count with no exact binary suffix is printed as
    plain bytes.
    """
    if size_bytes == 0:
        return "0"
    for suffix, factor in reversed(_BINARY_SUFFIXES.items()):
        if size_bytes % factor == 0:
            return f"{size_bytes // factor}{suffix}"
    return str(size_bytes)


def format_millis(millis: int) -> str:
    """Render millicores as Kubernetes does: whole cores when exact, else ``<n>m``."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"
