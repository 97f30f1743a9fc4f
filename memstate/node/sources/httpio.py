"""Small helpers for reading bounded HTTP responses (httpx) and describing failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from memstate.core.errors import SourceError


async def read_bounded(response: httpx.Response, limit: int, *, where: str) -> bytes:
    """The whole body, refusing more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise SourceError(f"response larger than {limit} bytes", source=where)
        chunks.append(chunk)
    return b"".join(chunks)


async def lines_bounded(
    response: httpx.Response, limit: int, *, where: str
) -> AsyncIterator[bytes]:
    """Newline-terminated lines of a streamed body (chunk boundaries need not align with lines);
    a line longer than `limit` bytes is an error. A last line without newline is yielded too."""
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        buffer.extend(chunk)
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end]).strip()
            del buffer[: end + 1]
            if line:
                yield line
        if len(buffer) > limit:
            raise SourceError(f"a watch event larger than {limit} bytes", source=where)
    tail = bytes(buffer).strip()
    if tail:
        yield tail


def describe_http_error(exc: httpx.HTTPError) -> str:
    """A one-line description of a transport-level failure, with its root cause (httpx often
    wraps e.g. a TLS verification failure in an empty `ConnectError`)."""
    kind = type(exc).__name__
    parts = [kind]
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause).strip()
        if text and text not in parts:
            parts.append(text)
        cause = cause.__cause__ or cause.__context__
    return ": ".join(parts)


def status_error(status: int, body: bytes, *, where: str) -> SourceError:
    """A SourceError for a non-200 answer (`status`), with what the operator must fix for
    401/403."""
    detail = body[:300].decode("utf-8", "replace").strip()
    hint = ""
    if status == 401:
        hint = " (credentials not accepted: check the token or client certificate)"
    elif status == 403:
        hint = " (not authorised: see 'Pod sources' in docs/operations.md for the RBAC needed)"
    message = f"HTTP {status}{hint}" + (f": {detail}" if detail else "")
    return SourceError(message, source=where)
