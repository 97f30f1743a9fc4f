"""ttrpc framing and unary request/response envelopes, sans I/O (nri.md §3–§4).

A ttrpc message is a 10-byte header ``length (u32 BE) | stream id (u32 BE) | type (u8) | flags
(u8)`` followed by `length` bytes of protobuf. `MessageDecoder` reassembles messages from one
logical connection's byte stream; `ServerConnection` and `ClientConnection` add the unary call
rules on top (odd, increasing client stream ids; responses matched by stream id) and the
`Request`/`Response` envelopes. Nothing here does I/O: bytes in, events and bytes out.

What the peer gets wrong, and what happens:
- a message over 4 MiB: its bytes are skipped as they arrive (never buffered) and a request gets
  a RESOURCE_EXHAUSTED answer on its stream, as the Go server does; the connection stays up;
- an unknown message type, an even or reused stream id, a response to no call, an envelope that
  does not decode: `MalformedMessage` (the caller closes the connection);
- unknown protobuf fields are skipped (protocol rule: newer runtimes add fields).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from memstate.nri.errors import MalformedMessage, MessageTooLarge, TruncatedStream
from memstate.nri.proto import ttrpc_pb2

MESSAGE_HEADER = struct.Struct(">IIBB")
MAX_MESSAGE_LENGTH = 4 * 1024 * 1024


class MessageType(enum.IntEnum):
    """ttrpc message types."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3  # streaming only; NRI never streams


class StatusCode(enum.IntEnum):
    """gRPC status codes as ttrpc carries them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class Message:
    """One complete ttrpc message."""

    stream_id: int
    type: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OversizedMessage:
    """A message whose announced length exceeds the limit; its data is being skipped."""

    stream_id: int
    type: int
    length: int


def encode_message(stream_id: int, message_type: int, data: bytes, flags: int = 0) -> bytes:
    """Header plus data; refuses (`MessageTooLarge`) what a receiver would have to discard."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise MessageTooLarge(
            f"message length {len(data)} exceeds maximum message size of {MAX_MESSAGE_LENGTH}",
            stream_id=stream_id,
        )
    return MESSAGE_HEADER.pack(len(data), stream_id, message_type, flags) + data


class MessageDecoder:
    """Reassembles ttrpc messages from one logical connection's bytes, fed in any pieces."""

    def __init__(self, conn_id: int, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._conn_id = conn_id
        self._max = max_length
        self._buffer = bytearray()
        self._skip = 0  # data bytes of an oversized message still to discard

    @property
    def mid_message(self) -> bool:
        """Whether part of a message has been received."""
        return bool(self._buffer) or self._skip > 0

    def feed(self, data: bytes) -> list[Message | OversizedMessage]:
        """Add received bytes; return the messages (and oversize notices) they complete."""
        out: list[Message | OversizedMessage] = []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= MESSAGE_HEADER.size:
            length, stream_id, message_type, flags = MESSAGE_HEADER.unpack_from(buffer, offset)
            offset += MESSAGE_HEADER.size
            if length > self._max:
                out.append(OversizedMessage(stream_id, message_type, length))
                available = len(buffer) - offset
                dropped = min(length, available)
                offset += dropped
                self._skip = length - dropped
                continue
            if len(buffer) - offset < length:
                offset -= MESSAGE_HEADER.size
                break
            out.append(
                Message(stream_id, message_type, flags, bytes(buffer[offset : offset + length]))
            )
            offset += length
        if offset:
            del buffer[:offset]
        return out

    def close(self) -> None:
        """The stream ended: raise `TruncatedStream` if a message was cut off."""
        if self.mid_message:
            raise TruncatedStream("connection closed inside a ttrpc message", conn_id=self._conn_id)


# --- unary calls ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A decoded unary request the server must answer on `stream_id`."""

    stream_id: int
    service: str
    method: str
    payload: bytes
    timeout_nano: int


@dataclass(frozen=True, slots=True)
class IncomingResponse:
    """The answer to one of our calls."""

    stream_id: int
    code: int
    message: str
    payload: bytes


def encode_response(stream_id: int, payload: bytes, code: int = 0, message: str = "") -> bytes:
    """A response message (status omitted when OK, as the Go server does)."""
    response = ttrpc_pb2.Response(payload=payload)
    if code != StatusCode.OK:
        response.status.code = code
        response.status.message = message
    return encode_message(stream_id, MessageType.RESPONSE, response.SerializeToString())


class ServerConnection:
    """The server side of one logical connection: requests in, responses out."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self._decoder = MessageDecoder(conn_id)
        self._last_stream_id = 0

    @property
    def mid_message(self) -> bool:
        """Whether a request is partly received."""
        return self._decoder.mid_message

    def feed(self, data: bytes) -> tuple[list[IncomingRequest], list[bytes]]:
        """Decode requests; also return messages to send at once (answers to oversized
        requests)."""
        requests: list[IncomingRequest] = []
        immediate: list[bytes] = []
        for item in self._decoder.feed(data):
            self._check_stream_id(item.stream_id, item.type)
            if isinstance(item, OversizedMessage):
                immediate.append(
                    encode_response(
                        item.stream_id,
                        b"",
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"message length {item.length} exceed maximum message size of "
                        f"{MAX_MESSAGE_LENGTH}",
                    )
                )
                continue
            requests.append(self._decode_request(item))
        return requests, immediate

    def close(self) -> None:
        """The stream ended; raises `TruncatedStream` if a request was cut off."""
        self._decoder.close()

    def _check_stream_id(self, stream_id: int, message_type: int) -> None:
        if message_type != MessageType.REQUEST:
            raise MalformedMessage(
                f"message type {message_type} where a request was expected",
                conn_id=self.conn_id,
                stream_id=stream_id,
            )
        if stream_id % 2 == 0:
            raise MalformedMessage(
                "StreamID must be odd for client initiated streams",
                conn_id=self.conn_id,
                stream_id=stream_id,
            )
        if stream_id <= self._last_stream_id:
            raise MalformedMessage(
                "StreamID cannot be re-used and must increment",
                conn_id=self.conn_id,
                stream_id=stream_id,
            )
        self._last_stream_id = stream_id

    def _decode_request(self, message: Message) -> IncomingRequest:
        request = ttrpc_pb2.Request()
        try:
            request.ParseFromString(message.data)
        except DecodeError as exc:
            raise MalformedMessage(
                f"request envelope does not decode: {exc}",
                conn_id=self.conn_id,
                stream_id=message.stream_id,
            ) from None
        return IncomingRequest(
            stream_id=message.stream_id,
            service=request.service,
            method=request.method,
            payload=request.payload,
            timeout_nano=request.timeout_nano,
        )


class ClientConnection:
    """The client side of one logical connection: our calls out, their responses in."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self._decoder = MessageDecoder(conn_id)
        self._next_stream_id = 1
        self._outstanding: set[int] = set()

    @property
    def mid_message(self) -> bool:
        """Whether a response is partly received."""
        return self._decoder.mid_message

    def request(
        self, service: str, method: str, payload: bytes, timeout_nano: int = 0
    ) -> tuple[int, bytes]:
        """A new call: its stream id and the message bytes to send."""
        envelope = ttrpc_pb2.Request(
            service=service, method=method, payload=payload, timeout_nano=timeout_nano
        )
        stream_id = self._next_stream_id
        data = encode_message(stream_id, MessageType.REQUEST, envelope.SerializeToString())
        self._next_stream_id += 2
        self._outstanding.add(stream_id)
        return stream_id, data

    def abandon(self, stream_id: int) -> None:
        """Forget a call we stopped waiting for; a late answer to it is then ignored."""
        self._outstanding.discard(stream_id)

    def feed(self, data: bytes) -> list[IncomingResponse]:
        """Decode responses to our calls."""
        responses: list[IncomingResponse] = []
        for item in self._decoder.feed(data):
            if item.type != MessageType.RESPONSE:
                raise MalformedMessage(
                    f"message type {item.type} where a response was expected",
                    conn_id=self.conn_id,
                    stream_id=item.stream_id,
                )
            if isinstance(item, OversizedMessage):
                raise MalformedMessage(
                    f"response of {item.length} bytes exceeds {MAX_MESSAGE_LENGTH}",
                    conn_id=self.conn_id,
                    stream_id=item.stream_id,
                )
            if item.stream_id >= self._next_stream_id or item.stream_id % 2 == 0:
                raise MalformedMessage(
                    "response on a stream we never opened",
                    conn_id=self.conn_id,
                    stream_id=item.stream_id,
                )
            if item.stream_id not in self._outstanding:
                continue  # answer to a call we gave up on
            self._outstanding.discard(item.stream_id)
            response = ttrpc_pb2.Response()
            try:
                response.ParseFromString(item.data)
            except DecodeError as exc:
                raise MalformedMessage(
                    f"response envelope does not decode: {exc}",
                    conn_id=self.conn_id,
                    stream_id=item.stream_id,
                ) from None
            responses.append(
                IncomingResponse(
                    stream_id=item.stream_id,
                    code=response.status.code if response.HasField("status") else 0,
                    message=response.status.message,
                    payload=response.payload,
                )
            )
        return responses

    def close(self) -> None:
        """The stream ended; raises `TruncatedStream` if a response was cut off."""
        self._decoder.close()
