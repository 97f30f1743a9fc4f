"""Turning untrusted plain objects (decoded YAML/JSON) into typed Structs at the boundary.

`check_document` and `json_nesting` bound a decoded document before anything walks it
recursively: nesting, integers that fit 64 bits, string lengths, valid Unicode, and the number of
values (YAML aliases can expand a small file into a huge tree).

msgspec reports a validation failure as ``<message> - at `$.json.path` ``. memstate keeps the
message and the path apart and adds the file name, so an operator reads
``pods/web.yaml: $.spec.containers[0].name: Expected `str`, got `int` ``.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, TypeVar

import msgspec

from memstate.core.errors import InputError, echo

# Limits of decoded input documents (docs/operations.md, "Input limits").
# The deepest field of a real Pod (affinity terms, probes) is about 10 levels.
MAX_NESTING = 100
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# The apiserver bounds all annotations of an object together to 256 KiB; no other Pod field
# comes close.
MAX_STRING_CHARS = 256 * 1024

T = TypeVar("T")


def split_validation_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    """(message, JSON path) of a msgspec validation error; the path may be empty."""
    text = str(exc)
    message, sep, path = text.rpartition(" - at ")
    if not sep:
        return text, ""
    return message, path.strip("`")


def convert_input(obj: Any, target: type[T], *, source: str, error: type[InputError]) -> T:
    """`msgspec.convert` that raises `error` with the file name and field path."""
    try:
        return msgspec.convert(obj, target)
    except msgspec.ValidationError as exc:
        message, path = split_validation_error(exc)
        raise error(message, source=source, path=path) from None


def reraise_as(exc: InputError, error: type[InputError], *, source: str) -> InputError:
    """Re-type an input error raised by a shared parser (a quantity inside a manifest...)."""
    return error(exc.message, source=source or exc.source, path=exc.path)


def node_budget(size: int) -> int:
    """How many values a document of `size` bytes may decode to, aliases expanded.

    Without aliases a document holds at most about one value per byte (``[1,1,...]``), so this
    only stops alias and merge-key expansion ("billion laughs"), in time linear in `size`.
    """
    return 2 * size + 10_000


# A string, escapes included; the closing quote is optional so that an unterminated string
# consumes the rest instead of making the regex retry from every later quote (quadratic).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = [0] * 256
_BRACKET_STEP[ord("[")] = _BRACKET_STEP[ord("{")] = 1
_BRACKET_STEP[ord("]")] = _BRACKET_STEP[ord("}")] = -1


def json_nesting(data: bytes) -> int:
    """How deep JSON brackets nest (strings skipped), in linear time and without recursion.

    msgspec's decoder recurses once per level and hits Python's recursion limit at ~1,000, so the
    depth is bounded before decoding. Unbalanced brackets give some depth; msgspec rejects them.
    """
    skeleton = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, skeleton)), default=0)


def check_document(
    document: Any, *, budget: int, source: str, error: type[InputError] = InputError
) -> None:
    """Check a decoded document against the limits, without recursion, in O(budget).

    Every value is visited as often as aliases make it appear, which is exactly the work the
    validation after this will do; nesting is counted again because aliases can stack.
    """
    # (value, nesting, key or index in the parent, parent frame): the chain gives the field path.
    stack: list[tuple[Any, int, object, Any]] = [(document, 0, None, None)]
    visited = 0
    while stack:
        frame = stack.pop()
        value, nesting = frame[0], frame[1]
        visited += 1
        if visited > budget:
            raise error("too many values once YAML aliases are expanded", source=source)
        if isinstance(value, dict):
            if nesting >= MAX_NESTING:
                raise error(f"nested deeper than {MAX_NESTING} levels", source=source)
            for key, item in value.items():
                problem = scalar_problem(key)
                if problem:
                    raise error(f"key {problem}", source=source, path=_path_of(frame))
                stack.append((item, nesting + 1, key, frame))
            visited += len(value)
        elif isinstance(value, list):
            if nesting >= MAX_NESTING:
                raise error(f"nested deeper than {MAX_NESTING} levels", source=source)
            stack.extend((item, nesting + 1, index, frame) for index, item in enumerate(value))
        else:
            problem = scalar_problem(value)
            if problem:
                raise error(problem, source=source, path=_path_of(frame))


def scalar_problem(value: object) -> str:
    """What is wrong with a decoded scalar (or a key) against the limits, or "" if nothing."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            return f"string {echo(value)} is longer than {MAX_STRING_CHARS} characters"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"string {echo(value)} holds an unpaired surrogate at character {exc.start}"
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            return f"integer {echo(value)} does not fit 64 bits"
    elif isinstance(value, (set, frozenset, tuple)):  # `!!set`, a complex mapping key
        return f"a {type(value).__name__} is not a JSON value"
    return ""


def _path_of(frame: tuple[Any, int, object, Any]) -> str:
    parts: list[str] = []
    while frame is not None and frame[3] is not None:
        key = frame[2]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{echo(key, quote=False)}")
        frame = frame[3]
    return "$" + "".join(reversed(parts))
