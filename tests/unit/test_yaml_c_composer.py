"""The YAML fast path (memstate.node.inputs): libyaml's C composer for provably shallow texts.

Goal: `_parse_yaml` gives exactly what the bounded Python composer gives — the same document, or
the same error message — and `_nesting_bound` is never below the real nesting of a text, so the
C composer (which recurses without a limit) never sees a text deeper than `MAX_NESTING`.
Method: hypothesis-made documents dumped in every style PyYAML has (block, flow, indentation,
width, shared values as anchors and aliases), texts with characters deleted, inserted or
swapped, and structurally deep texts (compact and indentless sequences, flow brackets, implicit
flow pairs); the depth is counted on the nodes the bounded composer builds.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, SequenceNode

from memstate.core.errors import ManifestError
from memstate.core.validation import MAX_NESTING, MAX_STRING_CHARS, check_document
from memstate.node import inputs

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.sampled_from(["a: b", "- x", "? q", "[1]", "{a}", "&x", "*y", "!!int 3", "0x1F", "'", "#"]),
    st.text(alphabet="ab :-?[]{}#&*!|>'\"\t\r\n,", max_size=8),
)
KEYS = st.one_of(st.text(alphabet="abc-: ?", min_size=1, max_size=5), st.integers(0, 9))
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=25,
)


def slow(text: str) -> Any:
    """The bounded Python composer only, as before the fast path."""
    saved = inputs._C_COMPOSING
    inputs._C_COMPOSING = None
    try:
        return outcome(text)
    finally:
        inputs._C_COMPOSING = saved


def outcome(text: str) -> Any:
    try:
        return ("ok", inputs._parse_yaml(text, source="m.yaml", error=ManifestError, budget=0)[0])
    except ManifestError as exc:
        return ("error", str(exc))


def depth(node: Node | None) -> int:
    """How deep collection nodes nest (an alias counts where it first appears, as composed)."""
    deepest, stack, seen = 0, [(node, 0)], set()
    while stack:
        current, level = stack.pop()
        if not isinstance(current, SequenceNode | MappingNode) or id(current) in seen:
            continue
        seen.add(id(current))
        deepest = max(deepest, level + 1)
        children = (
            current.value
            if isinstance(current, SequenceNode)
            else [part for pair in current.value for part in pair]
        )
        stack.extend((child, level + 1) for child in children)
    return deepest


def composed_depth(text: str) -> int | None:
    """The nesting of the text's documents as the Python composer builds them (None: invalid)."""
    try:
        return max(
            (depth(node) for node in yaml.compose_all(text, Loader=yaml.SafeLoader)), default=0
        )
    except (yaml.YAMLError, RecursionError):
        return None


def assert_same_and_bounded(text: str) -> None:
    assert outcome(text) == slow(text)
    real = composed_depth(text)
    if real is not None:
        assert inputs._nesting_bound(text) >= real, text


@settings(max_examples=400, deadline=None)
@given(
    DOCUMENTS,
    st.sampled_from([None, True, False]),
    st.integers(2, 9),
    st.integers(20, 200),
    st.booleans(),
)
def test_dumped_documents_parse_the_same(
    document: Any, flow: bool | None, indent: int, width: int, shared: bool
) -> None:
    if shared and isinstance(document, list | dict):
        document = {"first": document, "again": document}  # dumped as an anchor and an alias
    text = yaml.safe_dump(document, default_flow_style=flow, indent=indent, width=width)
    assert_same_and_bounded(text)


@settings(max_examples=400, deadline=None)
@given(DOCUMENTS, st.data())
def test_damaged_texts_parse_or_fail_the_same(document: Any, data: st.DataObject) -> None:
    text = yaml.safe_dump(document, default_flow_style=data.draw(st.sampled_from([None, False])))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["delete", "insert", "swap"]))
        piece = data.draw(st.sampled_from([*"-?:[]{} \t\n\r&*!'\"#|>", "\u2028", "\x85"]))
        if edit == "delete":
            text = text[:at] + text[at + 1 :]
        elif edit == "insert":
            text = text[:at] + piece + text[at:]
        else:
            text = text[:at] + piece + text[at + 1 :]
    assert_same_and_bounded(text)


# Each step opens a collection (two for "indentless" and "pair"), in one of the ways YAML allows,
# or ("break") puts what follows a `- ` on the next line, one column further in.
STEPS = st.lists(
    st.sampled_from(
        ["block-map", "block-seq", "indentless", "compact-seq", "break", "flow-seq", "pair"]
    ),
    min_size=1,
    max_size=60,
)


def deep_text(steps: list[str]) -> str:
    """A text whose collections nest as `steps` say (block steps first, flow ones last)."""
    block = [s for s in steps if s not in ("flow-seq", "pair")]
    flow = [s for s in steps if s in ("flow-seq", "pair")]
    inner = "x"
    for step in reversed(flow):
        inner = f"[{inner}]" if step == "flow-seq" else f"[k: {inner}]"
    lines: list[str] = []
    column = 0  # where the current line's text starts
    prefix = ""  # what the current line holds before the next collection starts
    for step in block:
        start = column + len(prefix)  # the column the collection starts at
        if step == "block-map":
            lines.append(" " * column + prefix + "k:")
            column, prefix = start + 1, ""
        elif step == "block-seq":
            lines.append(" " * column + prefix + "-")
            column, prefix = start + 1, ""
        elif step == "indentless":  # a sequence as a mapping's value, at the mapping's column
            lines.append(" " * column + prefix + "k:")
            column, prefix = start, "- "
        elif step == "compact-seq":  # "- - x": a sequence opened inside an entry, on its line
            prefix += "- "
        elif prefix:  # "break": the entry's content on the next line, one column in
            lines.append(" " * column + prefix.rstrip())
            column, prefix = start - 1, ""
    lines.append(" " * column + prefix + inner)
    return "\n".join(lines) + "\n"


@settings(max_examples=400, deadline=None)
@given(STEPS)
def test_bound_holds_for_deep_texts(steps: list[str]) -> None:
    text = deep_text(steps)
    # The text is what it is meant to be: a mapping and its sequence, a bracket and its pair.
    levels = {"indentless": 2, "pair": 2, "break": 0}
    assert composed_depth(text) == sum(levels.get(step, 1) for step in steps)
    assert_same_and_bounded(text)


@pytest.mark.parametrize(
    "text",
    [
        "k:\n- k:\n  - k:\n    - k:\n      - x\n",  # indentless sequences
        "k:\n-\n k:\n -\n  k:\n  -\n   k:\n   - x\n",  # two levels a column
        "- - - - - - - - x\n",
        "[[[[[[[[x]]]]]]]]\n",
        "[a: [b: [c: [d: x]]]]\n",
        "{a: {b: [c: {d: x}]}}\n",
        "? - - x\n: - - y\n",
        "k:\r- k:\r  - k:\r    - x\r",  # old Mac line ends
        "k:\r\n- k:\r\n  - x\r\n",
        "k:\u2028- k:\u2028  - x\n",
        "&a k: *a\n",
        "a: &x [1, 2]\nb: *x\n",
        "---\n---\nk: v\n",
        "k: v\nk: w\n",
        ".nan: 1\n.nan: 2\n",  # written twice, though NaN keys never compare equal
        "1: a\n0x1: b\n",  # two spellings of one key: the constructor keeps the last
        "<<: {a: 1}\nb: 2\n",
        "= : v\n",
        "t: 2001-12-14t21:59:43.10-05:00\n",
        "? [a]\n: v\n",
        "k: !!int 1e999\n",
        "k: [\n",
        "",
    ],
)
def test_bound_and_result_on_chosen_texts(text: str) -> None:
    assert_same_and_bounded(text)


def test_a_text_at_the_nesting_limit_still_takes_the_bounded_composer() -> None:
    """101 levels: refused with the bounded composer's message, the C composer never asked."""
    text = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    assert inputs._nesting_bound(text) > MAX_NESTING
    kind, message = outcome(text)
    assert kind == "error" and f"nested deeper than {MAX_NESTING} levels" in message


def test_a_usual_manifest_takes_the_c_composer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the bound nor the direct construction nor the remembered tags send a usual
    manifest back to the bounded composer (it would still be right, only slower)."""
    text = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "a"}},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "registry.example/app:1.2",
                        "command": ["sh", "-c", "sleep 1"],
                        "ports": [{"containerPort": 80}],
                        "resources": {"limits": {"cpu": 1, "memory": "64Mi"}},
                    }
                ],
                "hostNetwork": False,
                "priority": None,
            },
        }
    )
    assert inputs._nesting_bound(text) <= MAX_NESTING
    expected = slow(text)

    def refuse(stream: str) -> None:
        raise AssertionError("the bounded composer was asked")

    monkeypatch.setattr(inputs, "_Loader", refuse)
    for _ in range(2):  # the second time with every tag remembered
        assert outcome(text) == expected


def test_an_alias_is_the_same_value_in_both_places() -> None:
    """As PyYAML builds it (and what keeps alias expansion linear until the budget check)."""
    kind, document = outcome("a: &x {k: [1, 2]}\nb: *x\nc: [*x, *x]\n")
    assert kind == "ok"
    assert document["a"] is document["b"] is document["c"][0] is document["c"][1]


# --- the limits checked while building directly ---------------------------------------------------


def parsed(text: str) -> Any:
    """`parse_document`'s result or error message (the limits included)."""
    try:
        return ("ok", inputs.parse_document(text.encode(), source="m.yaml", error=ManifestError))
    except ManifestError as exc:
        return ("error", str(exc))


def parsed_slow(text: str) -> Any:
    """`parse_document` with the bounded composer only, so every document is walked by
    `check_document` afterwards, as before the limits were checked while building."""
    saved = inputs._C_COMPOSING
    inputs._C_COMPOSING = None
    try:
        return parsed(text)
    finally:
        inputs._C_COMPOSING = saved


LONG = "x" * (MAX_STRING_CHARS + 1)
# Scalars over (or at) a limit, as YAML texts: an int just past 64 bits, a long string, an escaped
# unpaired surrogate, a non-ASCII string that is fine, and the same as keys.
HOSTILE_SCALARS = st.sampled_from(
    [
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "0x8000000000000000",
        '"\\ud800"',
        '"a\\udfffb"',
        '"é\\u00e9"',
        "é",
        "'\\ud800'",
        LONG,
        f"'{LONG}'",
        "x" * MAX_STRING_CHARS,
        "true",
        "~",
        "1.5e400",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        HOSTILE_SCALARS | SCALARS.map(lambda s: yaml.safe_dump(s).removesuffix("\n...\n").strip()),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
            st.lists(st.tuples(HOSTILE_SCALARS | KEYS.map(str), inner), max_size=3).map(
                lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
            ),
        ),
        max_leaves=8,
    )
)
def test_limits_checked_while_building_give_the_same_result(text: str) -> None:
    """A scalar over a limit anywhere (value or key) gives `check_document`'s error, word for
    word, and a document within the limits the same document."""
    assert parsed(text) == parsed_slow(text)


@pytest.mark.parametrize(
    "text",
    [
        f"metadata:\n  name: {LONG}\n",
        f"{LONG}: 1\n",
        'a: [1, "\\ud800"]\n',
        "a:\n  b: 9223372036854775808\n",
        "a: -9223372036854775809\n",
        "9223372036854775808\n",
    ],
)
def test_a_value_over_a_limit_is_reported_as_before(text: str) -> None:
    kind, message = parsed(text)
    assert kind == "error"
    assert (kind, message) == parsed_slow(text)


def test_a_usual_manifest_is_not_walked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built directly within the limits: `check_document` is not asked (and is, for JSON)."""
    text = yaml.safe_dump({"apiVersion": "v1", "metadata": {"name": "é", "uid": "u"}, "n": 3})
    expected = parsed(text)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("check_document was asked")

    monkeypatch.setattr(inputs, "check_document", refuse)
    assert parsed(text) == expected
    with pytest.raises(AssertionError, match="check_document was asked"):
        inputs.parse_document(b'{"a": 1}', source="m.json", error=ManifestError)


def test_the_count_against_the_budget_is_check_documents() -> None:
    """Built directly, a document counts as checked exactly when `check_document` with the same
    budget passes it: the values and the keys, as `check_document` counts them."""
    text = "{a: 1, b: [2, {c: d}]}"  # the mapping, 2 keys, 1, the list, 2, the inner mapping's 2
    for budget in range(3, 12):
        document, checked = inputs._parse_yaml(
            text, source="m.yaml", error=ManifestError, budget=budget
        )
        assert document == {"a": 1, "b": [2, {"c": "d"}]}
        try:
            check_document(document, budget=budget, source="m.yaml", error=ManifestError)
        except ManifestError:
            passes = False
        else:
            passes = True
        assert checked is passes, budget


def test_the_c_composer_skips_the_path_resolver_hooks_only_without_path_resolvers() -> None:
    """Without path resolvers PyYAML's `descend_resolver`/`ascend_resolver` return at once, so
    the C composer's loader puts C no-ops in their place; a loader with a path resolver keeps
    PyYAML's hooks, and its path resolution still applies."""
    loader_class = inputs._C_COMPOSING
    assert loader_class is not None
    loader = loader_class("a: [1]")
    try:
        assert loader.descend_resolver is inputs._no_descent
        assert loader.ascend_resolver is inputs._no_ascent
        assert loader.resolve is inputs._remembered_tag
        node = loader.get_single_node()
        assert node.value[0][1].tag == "tag:yaml.org,2002:seq"
    finally:
        loader.dispose()

    class WithPathResolver(loader_class):  # type: ignore[misc, valid-type]
        pass

    WithPathResolver.add_path_resolver("!listed", ["a"], list)
    loader = WithPathResolver("a: [1]")
    try:
        assert loader.descend_resolver != inputs._no_descent
        assert loader.resolve != inputs._remembered_tag
        assert loader.get_single_node().value[0][1].tag == "!listed"
    finally:
        loader.dispose()


def test_the_remembered_tags_hold_at_most_a_bounded_amount_of_text() -> None:
    """The C composer's remembered tags keep their scalars alive: the cache is emptied once the
    texts parsed since it was last emptied exceed `_REMEMBERED_TEXT_CHARS`, so long scalars of
    many files are not all kept."""
    inputs._remembered_tag.cache_clear()
    inputs._remembered_text[0] = 0
    long_value = "x" * 1000
    per_text = inputs._REMEMBERED_TEXT_CHARS // 4
    for index in range(3):
        text = f"v{index}: {long_value}{index}\n" + "#" * per_text
        inputs._parse_yaml(text, source="m.yaml", error=ManifestError, budget=10_000)
    # Three keys and three long values; the mappings' tag is one entry.
    assert inputs._remembered_tag.cache_info().currsize == 7
    text = "w: y\n" + "#" * per_text * 2
    document, _ = inputs._parse_yaml(text, source="m.yaml", error=ManifestError, budget=10_000)
    assert document == {"w": "y"}
    assert inputs._remembered_tag.cache_info().currsize == 3  # emptied first: this text's only
