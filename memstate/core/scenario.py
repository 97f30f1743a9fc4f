"""JSON-lines scenarios: the hand-writable text form of an event log.

One JSON object per line; blank lines and lines starting with ``#`` or ``//`` are comments. A
line is either an exported record (``{"seq": 7, "ts_ns": ..., "schema_v": 2, "event": {...}}``,
what `memstate log export` writes) or a hand-written event, flat, with friendly spellings:

    {"kind": "topology_observed", "topology_file": {"nodes": [{"id": 0, "memory": "16Gi"}]}}
    {"kind": "config_loaded", "kubelet_config": {"memoryManagerPolicy": "Static", ...}}
    {"kind": "pod_admission_requested", "manifest": {"apiVersion": "v1", "kind": "Pod", ...}}
    {"kind": "pod_removal_requested", "uid": "6a4f..."}
    {"kind": "daemon_restarted", "ts": "2026-03-01T03:12:00Z"}

`topology_file` takes the topology file shape, `kubelet_config` a KubeletConfiguration and
`manifest` a Kubernetes Pod; they go through the same validation as the daemon's inputs. The
normalised spellings (`topology`, `config`, `pod`) are accepted too.

`seq` is optional and, when given, must continue the sequence; `ts` (ISO 8601, or `ts_ns` as an
integer) is optional and defaults to one second after the previous line, starting at
2026-01-01T00:00:00Z, so a scenario replays identically everywhere. Hand-written lines carry no
`decisions` count: their decisions are derived on replay.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from memstate.core.config import config_from_object
from memstate.core.errors import InputError, ScenarioError
from memstate.core.events import EVENT_KINDS, SCHEMA_VERSION, AnyEvent, Envelope
from memstate.core.pod import pod_from_manifest
from memstate.core.topology import topology_from_object
from memstate.core.validation import (
    MAX_NESTING,
    check_document,
    json_nesting,
    node_budget,
    split_validation_error,
)

DEFAULT_START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_FRIENDLY = {"manifest": "pod", "kubelet_config": "config", "topology_file": "topology"}


def parse_timestamp(text: str) -> int:
    """ISO 8601 (a `Z` or an offset; naive means UTC) → integer nanoseconds since the epoch."""
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ScenarioError(f"{text!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def format_timestamp(ts_ns: int) -> str:
    """Integer nanoseconds → ISO 8601 UTC with a `Z` (microsecond precision)."""
    moment = _EPOCH + _dt.timedelta(microseconds=ts_ns // 1_000)
    return moment.isoformat().replace("+00:00", "Z")


def read_scenario(text: str, *, source: str = "") -> list[Envelope]:
    """Parse a whole scenario (or export) into envelopes with contiguous sequence numbers."""
    return list(iter_scenario(text.splitlines(), source=source))


def iter_scenario(lines: Iterable[str], *, source: str = "") -> Iterator[Envelope]:
    """`read_scenario`, one line at a time, so a long export replays without being held."""
    next_seq = 1
    last_ts = DEFAULT_START_NS - 10**9
    for line_no, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "//")):
            continue
        where = f"{source}:{line_no}" if source else f"line {line_no}"
        data = stripped.encode("utf-8", "surrogatepass")
        if json_nesting(data) > MAX_NESTING:  # msgspec recurses per level
            raise ScenarioError(f"nested deeper than {MAX_NESTING} levels", source=where)
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise ScenarioError(f"not valid JSON: {exc}", source=where) from None
        check_document(obj, budget=node_budget(len(data)), source=where, error=ScenarioError)
        if not isinstance(obj, dict):
            raise ScenarioError("each line must be a JSON object", source=where)
        try:
            envelope = _envelope(obj, next_seq=next_seq, last_ts=last_ts)
        except InputError as exc:
            raise ScenarioError(exc.message, source=where, path=exc.path) from None
        yield envelope
        next_seq = envelope.seq + 1
        last_ts = envelope.ts_ns


def _envelope(obj: dict[str, Any], *, next_seq: int, last_ts: int) -> Envelope:
    if "event" in obj:
        return _exported(obj, next_seq=next_seq)
    body = dict(obj)
    seq = body.pop("seq", next_seq)
    if seq != next_seq:
        raise ScenarioError(f"sequence {seq} does not continue the sequence (expected {next_seq})")
    ts_ns = _timestamp(body.pop("ts", None), body.pop("ts_ns", None), last_ts)
    decisions = body.pop("decisions", None)
    event = event_from_object(body)
    return Envelope(seq=seq, ts_ns=ts_ns, schema_v=SCHEMA_VERSION, event=event, decisions=decisions)


def _timestamp(ts: Any, ts_ns: Any, last_ts: int) -> int:
    if ts_ns is not None:
        if not isinstance(ts_ns, int) or isinstance(ts_ns, bool):
            raise ScenarioError("ts_ns must be an integer", path="$.ts_ns")
        return ts_ns
    if ts is None:
        return last_ts + 10**9
    if not isinstance(ts, str):
        raise ScenarioError("ts must be an ISO 8601 string", path="$.ts")
    return parse_timestamp(ts)


def _exported(obj: dict[str, Any], *, next_seq: int) -> Envelope:
    raw = {k: v for k, v in obj.items() if k != "ts"}
    schema = raw.get("schema_v", SCHEMA_VERSION)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ScenarioError(
            f"schema version {schema!r} is newer than this build understands ({SCHEMA_VERSION})"
        )
    if schema < SCHEMA_VERSION:
        from memstate.core.codec import upcast

        raw = upcast(raw)
    try:
        envelope = msgspec.convert(raw, Envelope)
    except msgspec.ValidationError as exc:
        message, path = split_validation_error(exc)
        raise ScenarioError(message, path=path) from None
    if envelope.seq != next_seq:
        raise ScenarioError(
            f"sequence {envelope.seq} does not continue the sequence (expected {next_seq})"
        )
    return envelope


def event_from_object(obj: dict[str, Any]) -> AnyEvent:
    """A flat `{"kind": ..., fields}` object → an event, accepting the friendly spellings."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        known = ", ".join(sorted(EVENT_KINDS))
        raise ScenarioError(f"unknown event kind {kind!r} (known: {known})", path="$.kind")
    body = dict(obj)
    for friendly, normal in _FRIENDLY.items():
        if friendly in body:
            if normal in body:
                raise ScenarioError(f"give either {friendly!r} or {normal!r}, not both")
            body[normal] = _friendly_value(friendly, body.pop(friendly))
    try:
        event: AnyEvent = msgspec.convert(body, AnyEvent)
    except msgspec.ValidationError as exc:
        message, path = split_validation_error(exc)
        raise ScenarioError(message, path=path) from None
    return event


def _friendly_value(key: str, value: Any) -> Any:
    path = f"$.{key}"
    try:
        if key == "manifest":
            return msgspec.to_builtins(pod_from_manifest(value))
        if key == "kubelet_config":
            return msgspec.to_builtins(config_from_object(value))
        return msgspec.to_builtins(topology_from_object(value))
    except InputError as exc:
        raise ScenarioError(exc.message, path=path + exc.path.removeprefix("$")) from None


def envelope_to_object(envelope: Envelope) -> dict[str, Any]:
    """The export form of a record: the envelope as JSON-able builtins plus a readable `ts`."""
    obj: dict[str, Any] = msgspec.to_builtins(envelope)
    obj["ts"] = format_timestamp(envelope.ts_ns)
    return obj


def write_scenario(envelopes: list[Envelope]) -> str:
    """Render envelopes as export lines (the inverse of `read_scenario` for exported records)."""
    encoder = msgspec.json.Encoder()
    return "".join(encoder.encode(envelope_to_object(e)).decode() + "\n" for e in envelopes)
