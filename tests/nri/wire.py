"""An independent implementation of the runtime side's wire format, for tests.

Written from nri.md §2–§6 without using memstate.nri: a tiny protobuf encoder/decoder (varints,
length-delimited fields), the multiplexer framing and ttrpc framing. If memstate's code and this
one disagree on a byte, the tests fail; that is the point, so nothing here imports memstate.nri.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# --- protobuf wire format -------------------------------------------------------------------------

Fields = dict[int, list[int | bytes]]


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives are 10-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return varint((number << 3) | 2) + varint(len(data)) + data


def message(*parts: bytes) -> bytes:
    return b"".join(parts)


def map_entries(number: int, values: dict[str, str]) -> bytes:
    return b"".join(
        field_bytes(number, field_bytes(1, k) + field_bytes(2, v)) for k, v in values.items()
    )


def decode(data: bytes) -> Fields:
    """Field number -> values in order (varints as int, length-delimited as bytes)."""
    fields: Fields = {}
    offset = 0

    def read_varint() -> int:
        nonlocal offset
        shift = result = 0
        while True:
            byte = data[offset]
            offset += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while offset < len(data):
        key = read_varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields.setdefault(number, []).append(read_varint())
        elif wire_type == 2:
            length = read_varint()
            fields.setdefault(number, []).append(data[offset : offset + length])
            offset += length
        else:
            raise ValueError(f"wire type {wire_type} not expected in NRI messages")
    return fields


def one(fields: Fields, number: int, default: int | bytes = b"") -> int | bytes:
    values = fields.get(number)
    return values[-1] if values else default


def decode_map(values: Iterable[int | bytes]) -> dict[str, str]:
    out = {}
    for entry in values:
        assert isinstance(entry, bytes)
        f = decode(entry)
        key, value = one(f, 1), one(f, 2)
        assert isinstance(key, bytes) and isinstance(value, bytes)
        out[key.decode()] = value.decode()
    return out


# --- NRI messages the runtime side builds (field numbers from nri.md §6) --------------------------


def pod_sandbox(sandbox_id: str, uid: str, name: str, cgroup_parent: str = "") -> bytes:
    linux = field_bytes(3, cgroup_parent) if cgroup_parent else b""
    return message(
        field_bytes(1, sandbox_id),
        field_bytes(2, name),
        field_bytes(3, uid),
        field_bytes(4, "default"),
        map_entries(5, {"io.kubernetes.pod.uid": uid}),
        field_bytes(8, linux),
        field_varint(9, 4242),
        field_bytes(10, "10.0.0.7"),
    )


def container(
    container_id: str,
    sandbox_id: str,
    uid: str,
    name: str,
    *,
    state: int = 1,
    memory_limit: int | None = None,
    unified: dict[str, str] | None = None,
) -> bytes:
    resources = b""
    if memory_limit is not None:
        # LinuxResources.memory(1) -> LinuxMemory.limit(1) -> OptionalInt64.value(1)
        resources += field_bytes(1, field_bytes(1, field_varint(1, memory_limit)))
    resources += map_entries(6, unified or {})
    linux = field_bytes(3, resources) + field_bytes(5, f"/kubepods/pod{uid}/{container_id}")
    return message(
        field_bytes(1, container_id),
        field_bytes(2, sandbox_id),
        field_bytes(3, name),
        field_varint(4, state),
        map_entries(5, {"io.kubernetes.pod.uid": uid, "io.kubernetes.container.name": name}),
        field_bytes(7, "/bin/app"),
        field_bytes(11, linux),
        field_bytes(22, field_bytes(1, "registry/app:1")),  # Container.image (v0.12.2)
    )


def configure_request(nri_version: str = "v0.12.2") -> bytes:
    return message(
        field_bytes(2, "containerd"),
        field_bytes(3, "2.3.4"),
        field_varint(4, 5000),
        field_varint(5, 2000),
        field_bytes(6, nri_version),
    )


def synchronize_request(pods: list[bytes], containers: list[bytes], more: bool) -> bytes:
    return message(
        *(field_bytes(1, p) for p in pods),
        *(field_bytes(2, c) for c in containers),
        field_varint(3, 1) if more else b"",
    )


def pod_request(pod: bytes) -> bytes:
    return field_bytes(1, pod)


def container_request(pod: bytes, container: bytes) -> bytes:
    return field_bytes(1, pod) + field_bytes(2, container)


def state_change(event: int, pod: bytes, container: bytes = b"") -> bytes:
    return (
        field_varint(1, event)
        + field_bytes(2, pod)
        + (field_bytes(3, container) if container else b"")
    )


@dataclass(frozen=True)
class Adjusted:
    """cpu.mems and unified of a LinuxResources inside an adjustment or update."""

    mems: str
    unified: dict[str, str]


def resources_of(linux_resources: bytes) -> Adjusted:
    f = decode(linux_resources)
    cpu = decode(one(f, 2)) if 2 in f else {}  # type: ignore[arg-type]
    mems = one(cpu, 7) if cpu else b""
    assert isinstance(mems, bytes)
    return Adjusted(mems=mems.decode(), unified=decode_map(f.get(6, [])))


def create_response_adjustment(payload: bytes) -> Adjusted:
    """CreateContainerResponse.adjust(1).linux(6).resources(2)."""
    adjust = decode(payload).get(1, [b""])[0]
    assert isinstance(adjust, bytes)
    linux = decode(adjust).get(6, [b""])[0]
    assert isinstance(linux, bytes)
    resources = decode(linux).get(2, [b""])[0]
    assert isinstance(resources, bytes)
    return resources_of(resources)


def updates_of(payload: bytes, field: int = 1) -> dict[str, Adjusted]:
    """ContainerUpdate list (container_id 1, linux 2 -> resources 1) by container id."""
    out = {}
    for raw in decode(payload).get(field, []):
        assert isinstance(raw, bytes)
        f = decode(raw)
        container_id = one(f, 1)
        linux = one(f, 2)
        assert isinstance(container_id, bytes) and isinstance(linux, bytes)
        resources = one(decode(linux), 1)
        assert isinstance(resources, bytes)
        out[container_id.decode()] = resources_of(resources)
    return out


# --- framing --------------------------------------------------------------------------------------

MUX = struct.Struct(">II")
TTRPC = struct.Struct(">IIBB")


def mux_frame(conn_id: int, payload: bytes) -> bytes:
    return MUX.pack(conn_id, len(payload)) + payload


def ttrpc_message(stream_id: int, message_type: int, data: bytes) -> bytes:
    return TTRPC.pack(len(data), stream_id, message_type, 0) + data


def ttrpc_request(service: str, method: str, payload: bytes) -> bytes:
    return field_bytes(1, service) + field_bytes(2, method) + field_bytes(3, payload)


def ttrpc_response(payload: bytes, code: int = 0, text: str = "") -> bytes:
    status = field_bytes(1, field_varint(1, code) + field_bytes(2, text)) if code else b""
    return status + field_bytes(2, payload)


@dataclass(frozen=True)
class Reply:
    code: int
    message: str
    payload: bytes


def parse_response(data: bytes) -> Reply:
    f = decode(data)
    status = decode(one(f, 1)) if 1 in f else {}  # type: ignore[arg-type]
    code = one(status, 1, 0) if status else 0
    text = one(status, 2) if status else b""
    payload = one(f, 2)
    assert isinstance(code, int) and isinstance(text, bytes) and isinstance(payload, bytes)
    return Reply(code, text.decode(), payload)


class Reassembler:
    """Trunk bytes -> (conn id, ttrpc message) pairs, with per-connection stream reassembly."""

    def __init__(self) -> None:
        self.trunk = bytearray()
        self.streams: dict[int, bytearray] = {}
        self.frame_sizes: list[int] = []

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        self.trunk += data
        out = []
        while len(self.trunk) >= MUX.size:
            conn_id, length = MUX.unpack_from(self.trunk)
            if len(self.trunk) < MUX.size + length:
                break
            self.frame_sizes.append(length)
            self.streams.setdefault(conn_id, bytearray()).extend(
                self.trunk[MUX.size : MUX.size + length]
            )
            del self.trunk[: MUX.size + length]
            stream = self.streams[conn_id]
            while len(stream) >= TTRPC.size:
                length, stream_id, message_type, _flags = TTRPC.unpack_from(stream)
                if len(stream) < TTRPC.size + length:
                    break
                out.append(
                    (
                        conn_id,
                        stream_id,
                        message_type,
                        bytes(stream[TTRPC.size : TTRPC.size + length]),
                    )
                )
                del stream[: TTRPC.size + length]
        return out
