"""Turning untrusted plain objects (decoded YAML/JSON) into typed Structs at the boundary.

msgspec reports a validation failure as ``<message> - at `$.json.path` ``. memstate keeps the
message and the path apart and adds the file name, so an operator reads
``pods/web.yaml: $.spec.containers[0].name: Expected `str`, got `int` ``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from memstate.core.errors import InputError

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
