"""The kubelet Memory Manager checkpoint: layouts, the checksum, typed refusals.

The worked examples are kubelet-node.md §8.4 (A, B, C), computed there with go-spew and an
independent implementation; the upstream vectors come from the kubelet's own
`state_checkpoint_test.go` (v1 4215593881, v2 1278640530).
"""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.errors import EXIT_DATAERR
from memstate.core.kubelet_checkpoint import (
    KubeletCheckpointError,
    checksum_v1,
    checksum_v2,
    data_checksum,
    fnv1a_32,
    parse_checkpoint,
    render_v1,
)

EXAMPLE_A = (
    b'{"policyName":"Static","machineState":{"0":{"numberOfAssignments":2,"memoryMap":'
    b'{"hugepages-1Gi":{"total":2147483648,"systemReserved":0,"allocatable":2147483648,'
    b'"reserved":1073741824,"free":1073741824},"memory":{"total":8589934592,'
    b'"systemReserved":1073741824,"allocatable":5368709120,"reserved":2147483648,'
    b'"free":3221225472}},"cells":[0]},"1":{"numberOfAssignments":0,"memoryMap":'
    b'{"hugepages-1Gi":{"total":2147483648,"systemReserved":0,"allocatable":2147483648,'
    b'"reserved":0,"free":2147483648},"memory":{"total":8589934592,"systemReserved":0,'
    b'"allocatable":6442450944,"reserved":0,"free":6442450944}},"cells":[1]}},"entries":'
    b'{"6f1f3c2e-5d7a-4b8e-9c0d-1a2b3c4d5e6f":{"app":[{"numaAffinity":[0],"type":"memory",'
    b'"size":2147483648},{"numaAffinity":[0],"type":"hugepages-1Gi","size":1073741824}]}},'
    b'"checksum":2527279540}'
)
# The hashed text of example A, exactly as kubelet-node.md §8.4 prints it (joined at spaces).
EXAMPLE_A_TEXT = re.sub(
    r"\s+",
    " ",
    """
(*state.MemoryManagerCheckpoint){PolicyName:(string)Static MachineState:(state.NUMANodeMap)map[0:<*>{NumberOfAssignments:(int)2
MemoryMap:(map[v1.ResourceName]*state.MemoryTable)map[hugepages-1Gi:<*>{TotalMemSize:(uint64)2147483648
SystemReserved:(uint64)0 Allocatable:(uint64)2147483648 Reserved:(uint64)1073741824 Free:(uint64)1073741824}
memory:<*>{TotalMemSize:(uint64)8589934592 SystemReserved:(uint64)1073741824 Allocatable:(uint64)5368709120
Reserved:(uint64)2147483648 Free:(uint64)3221225472}] Cells:([]int)[0]} 1:<*>{NumberOfAssignments:(int)0
MemoryMap:(map[v1.ResourceName]*state.MemoryTable)map[hugepages-1Gi:<*>{TotalMemSize:(uint64)2147483648
SystemReserved:(uint64)0 Allocatable:(uint64)2147483648 Reserved:(uint64)0 Free:(uint64)2147483648}
memory:<*>{TotalMemSize:(uint64)8589934592 SystemReserved:(uint64)0 Allocatable:(uint64)6442450944 Reserved:(uint64)0
Free:(uint64)6442450944}] Cells:([]int)[1]}] Entries:(state.ContainerMemoryAssignments)map[6f1f3c2e-5d7a-4b8e-9c0d-1a2b3c4d5e6f:map[app:[{NUMAAffinity:([]int)[0]
Type:(v1.ResourceName)memory Size:(uint64)2147483648} {NUMAAffinity:([]int)[0] Type:(v1.ResourceName)hugepages-1Gi
Size:(uint64)1073741824}]]] Checksum:(checksum.Checksum)0}
""".strip(),  # noqa: E501
)
EXAMPLE_B = (
    b'{"policyName":"Static","machineState":{"0":{"numberOfAssignments":0,"memoryMap":'
    b'{"memory":{"total":8589934592,"systemReserved":1073741824,"allocatable":7516192768,'
    b'"reserved":0,"free":7516192768}},"cells":[0]}},"checksum":1434168666}'
)
EXAMPLE_C_DATA = (
    '{"policyName":"static","machineState":{"0":{"numberOfAssignments":0,"memoryMap":'
    '{"memory":{"total":2048,"systemReserved":512,"allocatable":1536,"reserved":512,'
    '"free":1024}},"cells":[]}},"entries":{"pod":{"container1":[{"numaAffinity":[0],'
    '"type":"memory","size":512}]}}}'
)
UPSTREAM_V1 = (
    b'{"policyName":"static","machineState":{"0":{"numberOfAssignments":0,"memoryMap":'
    b'{"memory":{"total":2048,"systemReserved":512,"allocatable":1536,"reserved":512,'
    b'"free":1024}},"cells":[]}},"entries":{"pod":{"container1":[{"numaAffinity":[0],'
    b'"type":"memory","size":512}]}},"checksum": 4215593881}'
)
UPSTREAM_V2 = (
    b'{"policyName":"static","machineState":{"0":{"numberOfAssignments":0,"memoryMap":'
    b'{"memory":{"total":2048,"systemReserved":512,"allocatable":1536,"reserved":512,'
    b'"free":1024}},"cells":[]}},"entries":{"pod":{"container1":[{"numaAffinity":[0],'
    b'"type":"memory","size":512}]}},"podEntries":{"pod":{"memoryBlocks":[{"numaAffinity":'
    b'[0],"type":"memory","size":512}]}},"checksum": 1278640530}'
)


def test_fnv1a_32_reference_values() -> None:
    # The published FNV-1a 32 test vectors.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_example_a_renders_the_documented_text_and_checksum() -> None:
    document = msgspec.json.decode(EXAMPLE_A)
    assert render_v1(document) == EXAMPLE_A_TEXT
    assert checksum_v1(document) == 2527279540
    checkpoint = parse_checkpoint(EXAMPLE_A, source="A")
    assert checkpoint.layout == "v1"
    assert checkpoint.policy_name == "Static"
    assert checkpoint.numa_nodes == (0, 1)
    (pod,) = checkpoint.pods
    assert pod.uid == "6f1f3c2e-5d7a-4b8e-9c0d-1a2b3c4d5e6f"
    (app,) = pod.containers
    assert [(b.numa_affinity, b.type, b.size) for b in app.blocks] == [
        ((0,), "memory", 2 * 2**30),
        ((0,), "hugepages-1Gi", 2**30),
    ]


def test_example_b_missing_entries_hash_as_an_empty_map() -> None:
    document = msgspec.json.decode(EXAMPLE_B)
    assert "Entries:(state.ContainerMemoryAssignments)map[]" in render_v1(document)
    assert checksum_v1(document) == 1434168666
    assert parse_checkpoint(EXAMPLE_B).pods == ()


def test_example_c_v3_data_checksum() -> None:
    assert data_checksum(EXAMPLE_C_DATA) == 1849615440
    document = {
        "policyName": "Static",
        "machineState": {},
        "checksum": 1,
        "data": EXAMPLE_C_DATA.replace('"static"', '"Static"'),
        "dataChecksum": data_checksum(EXAMPLE_C_DATA.replace('"static"', '"Static"')),
    }
    checkpoint = parse_checkpoint(json.dumps(document).encode(), source="c")
    assert checkpoint.layout == "v3"
    assert [p.uid for p in checkpoint.pods] == ["pod"]


def test_upstream_vectors_v1_and_v2() -> None:
    assert checksum_v1(msgspec.json.decode(UPSTREAM_V1)) == 4215593881
    assert checksum_v2(msgspec.json.decode(UPSTREAM_V2)) == 1278640530


def test_a_v2_file_without_pod_entries_is_accepted_by_its_v2_checksum() -> None:
    document = msgspec.json.decode(EXAMPLE_B)
    document["checksum"] = checksum_v2(document)
    assert document["checksum"] != 1434168666  # the v2 text names PodEntries
    assert parse_checkpoint(json.dumps(document).encode()).layout == "v2"


def test_numa_ids_sort_numerically_in_the_hashed_text() -> None:
    # Go sorts int map keys numerically; JSON lists "10" before "2".
    text = render_v1({"policyName": "Static", "machineState": {"10": {}, "2": {}}})
    assert text.index("2:<*>") < text.index("10:<*>")


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        (EXAMPLE_A.replace(b"2527279540", b"2527279541"), "$.checksum", "checksum mismatch"),
        (EXAMPLE_A.replace(b'"size":2147483648', b'"size":2147483647'), "$.checksum", "mismatch"),
        (UPSTREAM_V1, "$.policyName", "unknown policy name 'static'"),
        (b"{not json", "", "not JSON"),
        (b"[]", "", "not a JSON object"),
        (b'{"policyName":"Static"}', "$.checksum", "unsigned 64-bit"),
    ],
)
def test_refusals_name_the_file_the_field_and_the_reason(raw: bytes, path: str, words: str) -> None:
    with pytest.raises(KubeletCheckpointError) as caught:
        parse_checkpoint(raw, source="/var/lib/kubelet/memory_manager_state")
    error = caught.value
    assert error.exit_code == EXIT_DATAERR
    assert error.source == "/var/lib/kubelet/memory_manager_state"
    assert error.path == path
    assert words in error.message


def test_v3_with_a_wrong_data_checksum_is_refused() -> None:
    document = {"data": EXAMPLE_C_DATA, "dataChecksum": 1849615441}
    with pytest.raises(KubeletCheckpointError, match="checksum mismatch") as caught:
        parse_checkpoint(json.dumps(document).encode(), source="f")
    assert caught.value.path == "$.dataChecksum"


@pytest.mark.parametrize(
    "document",
    [
        {"machineState": [1]},
        {"machineState": {"x": {}}},
        {"machineState": {"0": None}},
        {"machineState": {"0": {"memoryMap": {"memory": {"total": -1}}}}},
        {"machineState": {"0": {"cells": ["a"]}}},
        {"entries": {"pod": {"app": [{"numaAffinity": [0], "type": 3, "size": 1}]}}},
        {"entries": {"pod": {"app": {"not": "a list"}}}},
        {"entries": {"pod": {"app": [{"size": 2**64}]}}},
        {"podEntries": {"pod": {"memoryBlocks": "x"}}},
        {"policyName": 7},
    ],
)
def test_malformed_fields_are_named_never_a_crash(document: dict[str, object]) -> None:
    raw = json.dumps({"policyName": "Static", **document, "checksum": 1}).encode()
    with pytest.raises(KubeletCheckpointError) as caught:
        parse_checkpoint(raw, source="f")
    assert caught.value.path.startswith("$.")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["0", "1", "x", "memory", "app"]), children, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["policyName", "machineState", "entries", "podEntries", "checksum", "data", "dataChecksum"]
)


@given(st.dictionaries(_keys, _json, max_size=5))
@settings(max_examples=300, deadline=None)
def test_any_json_is_parsed_or_refused_with_a_reason(document: dict[str, object]) -> None:
    try:
        parse_checkpoint(json.dumps(document).encode(), source="f")
    except KubeletCheckpointError as exc:
        assert exc.source == "f" and exc.message
