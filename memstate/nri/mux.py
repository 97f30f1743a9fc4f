"""The NRI connection multiplexer, sans I/O (nri.md §2.2).

One stream socket (the trunk) carries logical connections; each frame is ``conn id (u32 BE) |
payload length (u32 BE) | payload``. Connection 1 carries the plugin's service (the runtime
calls us), connection 2 the runtime's (we call it). Frame boundaries are not message boundaries:
each logical connection's payloads, concatenated, are a ttrpc byte stream.

`MuxDecoder` turns received bytes into frames; `frames_for_message` splits one outgoing ttrpc
message into frames the way the Go receiver needs them (a frame larger than its 4 KiB read buffer
kills its side of the connection).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from memstate.nri.errors import FrameTooLarge, TruncatedStream

PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2
FRAME_HEADER = struct.Struct(">II")
# Go's multiplexer splits any write larger than this into several frames; nothing conforming
# sends a bigger frame (10-byte ttrpc header + the 4 MiB ttrpc limit).
MAX_FRAME_PAYLOAD = 4 * 1024 * 1024 + 10
# The Go receiver reads through a 4096-byte buffer and fails on a larger frame.
GO_READ_BUFFER = 4096


@dataclass(frozen=True, slots=True)
class Frame:
    """One multiplexer frame."""

    conn_id: int
    payload: bytes


def encode_frame(conn_id: int, payload: bytes) -> bytes:
    """The bytes of one frame."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise FrameTooLarge(
            f"frame of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}", conn_id=conn_id
        )
    return FRAME_HEADER.pack(conn_id, len(payload)) + payload


def frames_for_message(conn_id: int, message: bytes, header_len: int) -> bytes:
    """One ttrpc message as trunk bytes, framed so the Go receiver accepts it.

    A message that fits the Go read buffer goes as one frame; a larger one as a frame holding
    only the `header_len`-byte ttrpc header, then one frame with the whole payload (nri.md §2.2:
    the Go reader then reads the payload straight into its message buffer).
    """
    if len(message) <= GO_READ_BUFFER:
        return encode_frame(conn_id, message)
    return encode_frame(conn_id, message[:header_len]) + encode_frame(conn_id, message[header_len:])


class MuxDecoder:
    """Reassembles frames from trunk bytes fed in arbitrary pieces."""

    def __init__(self, max_frame_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max = max_frame_payload

    @property
    def mid_frame(self) -> bool:
        """Whether part of a frame has been received (a stalled peer shows here)."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order.

        Raises `FrameTooLarge` as soon as a header announces an impossible length, before its
        payload is buffered.
        """
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= FRAME_HEADER.size:
            conn_id, length = FRAME_HEADER.unpack_from(buffer, offset)
            if length > self._max:
                raise FrameTooLarge(
                    f"frame announces {length} payload bytes, more than {self._max}",
                    conn_id=conn_id,
                )
            end = offset + FRAME_HEADER.size + length
            if end > len(buffer):
                break
            frames.append(Frame(conn_id, bytes(buffer[offset + FRAME_HEADER.size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    def close(self) -> None:
        """The peer closed the trunk: raise `TruncatedStream` if a frame was cut off."""
        if self._buffer:
            raise TruncatedStream(
                f"connection closed inside a frame ({len(self._buffer)} bytes pending)"
            )
