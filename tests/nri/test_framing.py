"""The sans-I/O transport: bytes in, frames/messages/events out (h11-style), checked against the
independent encoder in tests.nri.wire."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from memstate.nri.errors import (
    FrameTooLarge,
    MalformedMessage,
    MessageTooLarge,
    NriProtocolError,
    TruncatedStream,
)
from memstate.nri.messages import PLUGIN_METHODS, container_info, parse, sandbox_info
from memstate.nri.mux import MAX_FRAME_PAYLOAD, Frame, MuxDecoder, frames_for_message
from memstate.nri.ttrpc import (
    MAX_MESSAGE_LENGTH,
    ClientConnection,
    Message,
    MessageDecoder,
    OversizedMessage,
    ServerConnection,
    encode_message,
    encode_response,
)
from tests.nri import wire


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    st.lists(st.tuples(st.integers(0, 5), st.binary(max_size=300)), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_mux_decoder_reassembles_frames_from_any_split(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    trunk = b"".join(wire.mux_frame(conn, payload) for conn, payload in frames)
    decoder = MuxDecoder()
    got: list[Frame] = []
    for piece in _pieces(trunk, cuts):
        got.extend(decoder.feed(piece))
    assert [(f.conn_id, f.payload) for f in got] == frames
    decoder.close()  # nothing pending


def test_mux_decoder_refuses_an_impossible_frame_before_buffering_it() -> None:
    decoder = MuxDecoder()
    with pytest.raises(FrameTooLarge, match="conn 1"):
        decoder.feed(wire.MUX.pack(1, MAX_FRAME_PAYLOAD + 1))


def test_mux_decoder_reports_a_truncated_frame_at_close() -> None:
    decoder = MuxDecoder()
    assert decoder.feed(wire.mux_frame(2, b"abcdef")[:-1]) == []
    assert decoder.mid_frame
    with pytest.raises(TruncatedStream, match="inside a frame"):
        decoder.close()


@pytest.mark.parametrize("size", [0, 1, 4086, 4087, 5000, 1 << 20, MAX_MESSAGE_LENGTH])
def test_outgoing_messages_are_framed_for_the_go_reader(size: int) -> None:
    message = encode_message(1, 2, b"x" * size)
    reassembler = wire.Reassembler()
    assert reassembler.feed(frames_for_message(1, message, 10)) == [(1, 1, 2, b"x" * size)]
    if len(message) <= 4096:
        assert reassembler.frame_sizes == [len(message)]
    else:
        assert reassembler.frame_sizes == [10, size]


def test_encode_refuses_an_oversized_message() -> None:
    with pytest.raises(MessageTooLarge, match="exceeds maximum message size"):
        encode_message(1, 1, b"\0" * (MAX_MESSAGE_LENGTH + 1))


@given(st.lists(st.binary(max_size=200), max_size=6), st.lists(st.integers(0, 5000), max_size=10))
def test_message_decoder_reassembles_from_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wire.ttrpc_message(2 * i + 1, 1, p) for i, p in enumerate(payloads))
    decoder = MessageDecoder(1)
    got = []
    for piece in _pieces(stream, cuts):
        got.extend(decoder.feed(piece))
    assert [(m.stream_id, m.data) for m in got if not isinstance(m, OversizedMessage)] == [
        (2 * i + 1, p) for i, p in enumerate(payloads)
    ]


def test_oversized_message_is_skipped_without_buffering_and_the_next_one_decodes() -> None:
    decoder = MessageDecoder(1, max_length=16)
    header = wire.TTRPC.pack(100, 1, 1, 0)
    assert decoder.feed(header + b"a" * 30) == [OversizedMessage(1, 1, 100)]
    assert decoder.mid_message
    assert decoder.feed(b"a" * 70 + wire.ttrpc_message(3, 1, b"ok")) == [Message(3, 1, 0, b"ok")]
    assert not decoder.mid_message


def _request(stream_id: int, method: str = "Configure") -> bytes:
    return wire.ttrpc_message(
        stream_id, 1, wire.ttrpc_request("nri.pkg.api.v1alpha1.Plugin", method, b"\x10\x01")
    )


def test_server_decodes_requests_and_encodes_responses() -> None:
    server = ServerConnection(1)
    requests, immediate = server.feed(_request(1) + _request(3, "Synchronize"))
    assert immediate == []
    assert [(r.stream_id, r.method, r.payload) for r in requests] == [
        (1, "Configure", b"\x10\x01"),
        (3, "Synchronize", b"\x10\x01"),
    ]
    reply = wire.Reassembler().feed(wire.mux_frame(1, encode_response(3, b"pay", 12, "no")))
    assert wire.parse_response(reply[0][3]) == wire.Reply(12, "no", b"pay")


def test_server_answers_an_oversized_request_with_resource_exhausted() -> None:
    server = ServerConnection(1)
    header = wire.TTRPC.pack(MAX_MESSAGE_LENGTH + 1, 1, 1, 0)
    requests, immediate = server.feed(header)
    assert requests == []
    reply = wire.parse_response(immediate[0][10:])
    assert reply.code == 8 and str(MAX_MESSAGE_LENGTH + 1) in reply.message


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (_request(2), "must be odd"),
        (_request(3) + _request(1), "cannot be re-used"),
        (_request(1) + _request(1), "cannot be re-used"),
        (wire.ttrpc_message(1, 2, b""), "where a request was expected"),
        (wire.ttrpc_message(1, 1, b"\x0a\xff"), "does not decode"),
    ],
)
def test_server_rejects_protocol_violations(data: bytes, text: str) -> None:
    with pytest.raises(MalformedMessage, match=text):
        ServerConnection(1).feed(data)


def test_client_matches_responses_by_stream_id_in_any_order() -> None:
    client = ClientConnection(2)
    first, data1 = client.request("svc", "A", b"")
    second, _ = client.request("svc", "B", b"")
    assert (first, second) == (1, 3)
    request = wire.decode(data1[10:])
    assert (wire.one(request, 1), wire.one(request, 2)) == (b"svc", b"A")
    answers = client.feed(
        wire.ttrpc_message(3, 2, wire.ttrpc_response(b"b"))
        + wire.ttrpc_message(1, 2, wire.ttrpc_response(b"", 3, "bad"))
    )
    assert [(a.stream_id, a.code, a.message, a.payload) for a in answers] == [
        (3, 0, "", b"b"),
        (1, 3, "bad", b""),
    ]
    with pytest.raises(MalformedMessage, match="never opened"):
        client.feed(wire.ttrpc_message(5, 2, wire.ttrpc_response(b"")))


def test_client_ignores_a_late_answer_to_an_abandoned_call() -> None:
    client = ClientConnection(2)
    stream_id, _ = client.request("svc", "A", b"")
    client.abandon(stream_id)
    assert client.feed(wire.ttrpc_message(stream_id, 2, wire.ttrpc_response(b""))) == []


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_garbage_only_ever_raises_protocol_errors(data: bytes, cuts: list[int]) -> None:
    """Whatever a peer sends, the decoders either decode it or raise a typed protocol error."""
    mux, server, client = MuxDecoder(), ServerConnection(1), ClientConnection(2)
    client.request("svc", "m", b"")
    try:
        for piece in _pieces(data, cuts):
            for frame in mux.feed(piece):
                server.feed(frame.payload)
                client.feed(frame.payload)
    except NriProtocolError:
        pass


@given(st.sampled_from(sorted(PLUGIN_METHODS)), st.binary(max_size=200))
def test_garbage_payloads_only_ever_fail_to_decode(method: str, payload: bytes) -> None:
    try:
        message = parse(PLUGIN_METHODS[method], payload)
    except DecodeError:
        return
    # Whatever decoded converts to memstate's values without error.
    for name in ("pod", "container"):
        if message.DESCRIPTOR.fields_by_name.get(name) is not None:
            value = getattr(message, name)
            if name == "pod":
                sandbox_info(value)
            else:
                container_info(value)
