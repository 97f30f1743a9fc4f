"""A seeded mutation fuzzer for memstate's input files.

Every case is built from its own `random.Random(f"{seed}:{case}")`, so one case can be rebuilt
alone (`MEMSTATE_FUZZ_CASE`) without replaying the whole run. A case picks a seed document (a
pod manifest, a config file with its `memstate:` section, a KubeletConfiguration-only file, a
topology file), mutates it structurally (hostile values at random places: huge or negative
integers, non-finite floats, unpaired surrogates, deep nesting, amplified lists, dropped and added
keys), serialises it as YAML or JSON, then mutates the bytes (flips, cuts, repeated spans, hostile
YAML/JSON tokens such as ``!!int 1e999``, anchors, tags, BOMs). Inputs are capped at
`MAX_INPUT_BYTES` so that a linear-time budget per input stays small and safe on a loaded machine.

`process` feeds one input through the daemon's own entry points — `ManifestDirectory.scan` for
manifests, `load_settings_and_config` for config files, `load_topology` for topology files —
then checks what the daemon would record: every event encodes into a log record, and what is
accepted is decided by the reducer (whose decisions must encode too). Anything raised that is not
an `InputError` is a finding.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memstate.core.codec import encode_envelope
from memstate.core.config import NodeConfig, validate_config_for_topology
from memstate.core.errors import InputError
from memstate.core.events import (
    SCHEMA_VERSION,
    ConfigLoaded,
    ConfigRejected,
    Envelope,
    Event,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.reducer import apply, step
from memstate.core.state import State
from memstate.core.topology import Topology
from memstate.node.inputs import load_topology
from memstate.node.loops.config import load_settings_and_config
from memstate.node.manifests import ManifestDirectory
from memstate.node.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "memstate" / "examples" / "node"
MAX_INPUT_BYTES = 64 * 1024
KINDS = ("manifest", "config", "kubelet", "topology")

# --- seed documents ------------------------------------------------------------------------------


def _pod(uid: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": uid, "namespace": "default", "uid": uid, "labels": {"app": uid}},
        "spec": {"containers": containers, **spec},
    }


def _container(name: str, memory: str, cpu: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example/app:1",
        "resources": {
            "requests": {"memory": memory, "cpu": cpu},
            "limits": {"memory": memory, "cpu": cpu},
        },
        **extra,
    }


def seed_documents() -> dict[str, list[Any]]:
    """The documents mutations start from, per kind."""
    manifests = [
        yaml.safe_load(path.read_text()) for path in sorted((EXAMPLES / "manifests").iterdir())
    ]
    manifests += [
        _pod("fuzz-g", [_container("app", "1Gi"), _container("side", "256Mi", "500m")]),
        _pod(
            "fuzz-h",
            [
                {
                    "name": "app",
                    "resources": {
                        "limits": {"memory": "1Gi", "cpu": "2", "hugepages-2Mi": "64Mi"},
                    },
                }
            ],
            overhead={"memory": "64Mi", "cpu": "100m"},
        ),
        _pod(
            "fuzz-b",
            [{"name": "app", "resources": {"requests": {"memory": "100Mi"}}}],
            initContainers=[
                {"name": "init", "resources": {"limits": {"memory": "2Gi"}}},
                {"name": "log", "restartPolicy": "Always"},
            ],
        ),
        _pod("fuzz-be", [{"name": "app"}]),
    ]
    kubelet = yaml.safe_load((EXAMPLES / "kubelet-config.yaml").read_text())
    config = {
        **kubelet,
        "memstate": {
            "stateDir": "/var/lib/memstate",
            "manifestDir": "/etc/memstate/pods",
            "metricsAddress": "127.0.0.1:9473",
            "podRemoval": "wait",
            "resyncSeconds": 30,
            "rescanSeconds": 5,
            "checkpointEvery": 1000,
        },
    }
    topology = yaml.safe_load((EXAMPLES / "topology.yaml").read_text())
    return {
        "manifest": manifests,
        "config": [config],
        "kubelet": [kubelet, {"kind": "KubeletConfiguration"}],
        "topology": [
            topology,
            {"nodes": [{"id": 0, "memory": "16Gi", "hugepages": {"1Gi": 2}}]},
        ],
    }


# --- mutations -----------------------------------------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    -(2**70),
    10**30,
    float("nan"),
    float("inf"),
    -0.0,
    1e308,
    5e-324,
    True,
    None,
    "",
    " ",
    "\ud800",
    "\udcff",
    "é",
    "\x00",
    "\n",
    "1Ei",
    "8Ei",
    "9999999Ei",
    "1e64",
    "1e65",
    "1e-999",
    "-1Gi",
    "0.0000000001",
    "+.5Ki",
    "1e999999999%",
    "50%",
    "101%",
    "hugepages-2Mi",
    "hugepages-3Mi",
    "../../etc",
    "a" * 300,
    [],
    {},
    [1, 2, 3],
    {"a": 1},
]


def _hostile_value(rng: random.Random) -> Any:
    choice = rng.random()
    if choice < 0.6:
        return copy.deepcopy(rng.choice(HOSTILE_VALUES))
    if choice < 0.7:
        depth = rng.choice([50, 99, 100, 101, 150, 300])
        value: Any = 1
        for _ in range(depth):
            value = [value] if rng.random() < 0.5 else {"a": value}
        return value
    if choice < 0.8:
        return "x" * rng.choice([63, 64, 128, 129, 254, 4096])
    if choice < 0.9:
        return rng.randint(-(2**80), 2**80)
    return rng.choice(["9" * rng.randint(20, 5000), "0x" + "f" * rng.randint(1, 80)])


def _paths(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in the document, iteratively."""
    found: list[tuple[Any, Any]] = []
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                found.append((node, key))
                stack.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                found.append((node, index))
                stack.append(value)
    return found


def mutate_structure(document: Any, rng: random.Random) -> Any:
    """Hostile values, amplified lists, dropped and added keys at random places."""
    document = copy.deepcopy(document)
    for _ in range(rng.randint(0, 3)):
        places = _paths(document)
        if not places:
            return _hostile_value(rng)
        parent, key = rng.choice(places)
        action = rng.random()
        if action < 0.55:
            parent[key] = _hostile_value(rng)
        elif action < 0.7 and isinstance(parent, list) and parent:
            # Amplify: many copies of one element (containers, reservations, nodes).
            parent.extend(copy.deepcopy(parent[key]) for _ in range(rng.choice([1, 10, 1500])))
        elif action < 0.85 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "memory", "uid", "<<", "1", "kind"])] = _hostile_value(rng)
    return document


HOSTILE_TOKENS: list[bytes] = [
    b"[" * 120,
    b"[" * 1200,
    b'{"a":' * 200,
    b"{a: " * 150,
    b"- " * 150,
    b"!!int 1e999",
    b"!!int ",
    b"!!float ",
    b"!!binary ",
    b"!!set ",
    b"!!timestamp ",
    b"!!python/object:os.system ",
    b"!!str ",
    b"!custom ",
    b"9" * 5000,
    b"-1180591620717411303424",
    b"0x" + b"f" * 70,
    b"0b" + b"1" * 65,
    b"1:2:3:4:5",
    b"2026-13-01",
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"&a [*a]",
    b"? ",
    b": ",
    b"\n- ",
    b"\n  ",
    b"\t",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"%TAG ! tag:x,2000:\n",
    b"~",
    b"|\n",
    b">-\n",
    b"'",
    b'"',
    b"\\",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xed\xa0\x80",
    b"NaN",
    b"Infinity",
    b".inf",
    b"-.nan",
    b"1e999",
    b"1Ei",
]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte-level damage: flips, cuts, repeated spans, hostile tokens."""
    buffer = bytearray(data)
    for _ in range(rng.randint(0, 4)):
        action = rng.random()
        position = rng.randint(0, len(buffer))
        if action < 0.2 and buffer:
            index = min(position, len(buffer) - 1)
            flipped = buffer[index] ^ (1 << rng.randrange(8))
            buffer[index] = rng.choice([rng.randrange(256), flipped])
        elif action < 0.35 and buffer:
            del buffer[position : position + rng.randint(1, 64)]
        elif action < 0.5 and buffer:
            start = rng.randrange(len(buffer))
            span = bytes(buffer[start : start + rng.randint(1, 200)])
            buffer[position:position] = span * rng.choice([1, 2, 50, 400])
        elif action < 0.9:
            buffer[position:position] = rng.choice(HOSTILE_TOKENS)
        else:
            del buffer[position:]
    return bytes(buffer[:MAX_INPUT_BYTES])


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter: much faster


def serialise(document: Any, rng: random.Random) -> tuple[bytes, str]:
    """YAML (block or flow style) or JSON bytes, and the file suffix that says which."""
    if rng.random() < 0.35:
        text = json.dumps(document, allow_nan=True, ensure_ascii=rng.random() < 0.5)
        return text.encode("utf-8", "surrogatepass"), ".json"
    style = rng.choice([None, True, False])
    try:
        text = yaml.dump(document, Dumper=_DUMPER, default_flow_style=style, allow_unicode=True)
    except UnicodeEncodeError:  # libyaml cannot emit a lone surrogate; PyYAML escapes it
        text = yaml.safe_dump(document, default_flow_style=style)
    except (yaml.YAMLError, RecursionError):
        text = json.dumps(document, allow_nan=True)
    return text.encode("utf-8", "surrogatepass"), rng.choice([".yaml", ".yml"])


@dataclass(frozen=True)
class Case:
    """One fuzz input: which reader it goes to and its bytes."""

    number: int
    kind: str
    suffix: str
    data: bytes


def make_case(seed: int, number: int, seeds: dict[str, list[Any]]) -> Case:
    """Case `number` of the run with `seed`; the same pair always gives the same bytes."""
    rng = random.Random(f"{seed}:{number}")
    kind = KINDS[number % len(KINDS)]
    document = mutate_structure(rng.choice(seeds[kind]), rng)
    data, suffix = serialise(document, rng)
    if rng.random() < 0.7:
        data = mutate_bytes(data, rng)
    return Case(number, kind, suffix, data[:MAX_INPUT_BYTES])


# --- feeding the daemon's readers ----------------------------------------------------------------


@dataclass
class Context:
    """What the readers need around them: a scratch directory and a booted node state."""

    directory: Path
    topology: Topology
    config: NodeConfig
    state: State


def make_context(directory: Path) -> Context:
    """A scratch directory and the state of a node booted with the example config."""
    topology = load_topology(EXAMPLES / "topology.yaml")
    settings = Settings(config_file=EXAMPLES / "kubelet-config.yaml")
    _, config = load_settings_and_config(settings)
    state = State()
    for event in (
        TopologyObserved(topology=topology, source="fuzz"),
        ConfigLoaded(config=config, source="fuzz"),
        ReadmissionCompleted(),
    ):
        state = step(state, event).state if event.role == "input" else apply(state, event)
    return Context(directory, topology, config, state)


def _record(event: Event) -> None:
    encode_envelope(Envelope(seq=1, ts_ns=0, schema_v=SCHEMA_VERSION, event=event))


def _decide(context: Context, event: Event) -> None:
    """Record `event` and what the reducer decides on it, as the daemon's writer would."""
    _record(event)
    if event.role == "input":
        for decision in step(context.state, event).decisions:
            _record(decision)


def process(case: Case, context: Context) -> str:
    """Feed one case to the daemon's reader for its kind; "accepted" or "rejected".

    Raises whatever the readers raise that is not an `InputError`.
    """
    if case.kind == "manifest":
        manifests = context.directory / "manifests"
        manifests.mkdir(exist_ok=True)
        for old in manifests.iterdir():
            old.unlink()
        (manifests / f"case{case.suffix}").write_bytes(case.data)
        events = ManifestDirectory(manifests).scan()
        for event in events:
            _decide(context, event)
        admitted = any(e.kind == "pod_admission_requested" for e in events)
        return "accepted" if admitted else "rejected"
    path = context.directory / f"{case.kind}{case.suffix}"
    path.write_bytes(case.data)
    try:
        if case.kind == "topology":
            topology = load_topology(path)
            _decide(context, TopologyObserved(topology=topology, source=str(path)))
            validate_config_for_topology(context.config, topology, source=str(path))
        else:
            _, config = load_settings_and_config(Settings(config_file=path))
            validate_config_for_topology(config, context.topology, source=str(path))
            _decide(context, ConfigLoaded(config=config, source=str(path)))
    except InputError as exc:
        # The daemon records a refused reload; the message must be recordable too.
        _record(ConfigRejected(source=str(path), error=exc.describe()))
        return "rejected"
    return "accepted"


# --- a run ---------------------------------------------------------------------------------------

# Per-input CPU budget: linear in the input's size with a wide margin. Linear processing costs a
# few microseconds per byte (libyaml plus PyYAML's Python composer); anything super-linear
# (alias expansion, 10**huge, regex backtracking, pairwise checks) blows through it on inputs this
# size. Process CPU time, not wall-clock: a loaded machine delays us but does not bill us.
BUDGET_BASE_SECONDS = 0.25
BUDGET_PER_BYTE_SECONDS = 25e-6


def budget_seconds(size: int) -> float:
    """The CPU time one input of `size` bytes may take."""
    return BUDGET_BASE_SECONDS + BUDGET_PER_BYTE_SECONDS * size


@dataclass(frozen=True)
class Finding:
    """A case that raised something other than an `InputError`, or took super-linear time."""

    case: Case
    problem: str


@dataclass
class Measured:
    """A case and the CPU time it took."""

    case: Case
    seconds: float
    outcome: str


@dataclass
class Report:
    """What a run found and measured."""

    seed: int
    iterations: int
    findings: list[Finding]
    measured: list[Measured]  # the slowest per byte, for the daemon test
    outcomes: dict[str, int]
    cpu_seconds: float
    wall_seconds: float


def _timed(case: Case, context: Context) -> tuple[float, str]:
    started = time.process_time()
    outcome = process(case, context)
    return time.process_time() - started, outcome


def run(
    seed: int,
    iterations: int,
    directory: Path,
    *,
    only: int | None = None,
    shard: tuple[int, int] = (0, 1),
    keep_worst: int = 24,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Fuzz `iterations` cases (or only case `only`) and report findings and the worst inputs.

    `shard` (k, n) takes every n-th block of `len(KINDS)` consecutive cases, starting with block
    k, so n processes cover one run between them and each sees every kind of file.
    """
    seeds = seed_documents()
    context = make_context(directory)
    findings: list[Finding] = []
    worst: list[Measured] = []
    outcomes: dict[str, int] = {}
    wall, cpu = time.monotonic(), time.process_time()
    first, count = shard
    numbers = (
        [n for n in range(iterations) if (n // len(KINDS)) % count == first]
        if only is None
        else [only]
    )
    for number in numbers:
        case = make_case(seed, number, seeds)
        try:
            seconds, outcome = _timed(case, context)
            if seconds > budget_seconds(len(case.data)):
                # Measure twice more and keep the fastest: one descheduled moment or a GC
                # pause must not fail a run, a super-linear input is slow every time.
                seconds = min(seconds, *(_timed(case, context)[0] for _ in range(2)))
        except Exception as exc:  # anything not an InputError is the finding
            findings.append(Finding(case, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if seconds > budget_seconds(len(case.data)):
            findings.append(
                Finding(
                    case,
                    f"took {seconds:.3f} s of CPU for {len(case.data)} bytes (budget "
                    f"{budget_seconds(len(case.data)):.3f} s)",
                )
            )
        worst.append(Measured(case, seconds, outcome))
        if len(worst) > 16 * keep_worst:
            worst = _worst(worst, keep_worst)
        if progress is not None and number and number % 5000 == 0:
            progress(number)
    return Report(
        seed=seed,
        iterations=len(numbers),
        findings=findings,
        measured=_worst(worst, keep_worst),
        outcomes=outcomes,
        cpu_seconds=time.process_time() - cpu,
        wall_seconds=time.monotonic() - wall,
    )


def _worst(measured: list[Measured], keep: int) -> list[Measured]:
    """The `keep` slowest per byte of each kind (manifests, configs, ...), slowest first.

    Per kind, so the daemon test always gets manifests: on a loaded machine the slowest inputs
    overall may all be small configs.
    """
    kinds = sorted({m.case.kind for m in measured})
    kept: list[Measured] = []
    for kind in kinds:
        of_kind = [m for m in measured if m.case.kind == kind]
        kept.extend(sorted(of_kind, key=_per_byte, reverse=True)[:keep])
    return sorted(kept, key=_per_byte, reverse=True)


def _per_byte(measured: Measured) -> float:
    return measured.seconds / max(len(measured.case.data), 1)


def describe(finding: Finding) -> str:
    """One finding for a failure message."""
    preview = finding.case.data[:160]
    return (
        f"case {finding.case.number} ({finding.case.kind}{finding.case.suffix}, "
        f"{len(finding.case.data)} bytes): {finding.problem}\n    input starts {preview!r}"
    )
