"""Errors of the NRI plugin and its transport.

Every protocol violation by the peer is a `NriProtocolError`: the connection it happened on is
closed (the runtime drops the plugin, the plugin reconnects); the daemon keeps running. A non-OK
answer from the runtime to one of our calls is an `RpcError` carrying the ttrpc status.
"""

from __future__ import annotations

from memstate.core.errors import ConfigError, MemstateError


class NriError(MemstateError):
    """Root of the NRI plugin's errors."""


class NriProtocolError(NriError):
    """The peer broke the multiplexer or ttrpc framing: the whole trunk connection is closed.

    `conn_id` is the logical connection (1 plugin service, 2 runtime service; 0 = the trunk
    itself), `stream_id` the ttrpc stream when known.
    """

    def __init__(self, message: str, *, conn_id: int = 0, stream_id: int | None = None) -> None:
        self.message = message
        self.conn_id = conn_id
        self.stream_id = stream_id
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line: ``conn <n>: stream <n>: <message>``, leaving out what is unknown."""
        parts = [f"conn {self.conn_id}"] if self.conn_id else ["trunk"]
        if self.stream_id is not None:
            parts.append(f"stream {self.stream_id}")
        return ": ".join([*parts, self.message])


class FrameTooLarge(NriProtocolError):
    """A multiplexer frame announces more payload than any conforming sender produces."""


class MessageTooLarge(NriProtocolError):
    """A ttrpc message over the 4 MiB limit (on send: refused before anything is written)."""


class MalformedMessage(NriProtocolError):
    """A ttrpc message with a bad type, stream id or envelope that does not decode."""


class TruncatedStream(NriProtocolError):
    """The peer closed (or stalled) in the middle of a frame or message."""


class ConnectionLost(NriError):
    """The runtime closed the socket (or it could not be reached)."""


class RpcError(NriError):
    """The runtime answered one of our calls with a non-OK ttrpc status."""

    def __init__(self, method: str, code: int, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        super().__init__(f"{method}: status {code}: {message}")


class PluginConfigError(ConfigError):
    """Plugin name or index that the runtime would refuse (nri.md §2.1); exit code 78 like every
    configuration error. `path` names the setting."""
