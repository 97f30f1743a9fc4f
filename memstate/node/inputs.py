"""Reading input files: pod manifests, the node config and topology files.

This is the boundary where untrusted bytes become core values. YAML (which includes JSON) is
parsed with PyYAML's safe loader (libyaml's scanner when it is installed), `.json` files with
msgspec, then handed to the core's validating constructors, so every error names the file and the
field path. A manifest directory may contain `.yaml`, `.yml` and `.json` files, anything else is
ignored (editor backups, dotfiles, names that are not UTF-8).

Hostile input must cost at most linear time and never raise anything but an `InputError`, so what
is parsed is bounded *before and while* it is parsed (docs/operations.md, "Input limits"):

- a file is at most `MAX_FILE_BYTES`, UTF-8, one document; a YAML mapping names a key once;
- collections nest at most `MAX_NESTING` levels: checked on the raw bytes before msgspec decodes
  JSON, and while PyYAML composes (its composer recurses once per level). libyaml's own composer
  (in C, several times faster, but recursing without a limit) composes only a text whose
  `_nesting_bound`, taken on the text in linear time, is within the limit — a usual manifest —
  and such a document is built without PyYAML's constructor machinery where it holds only
  mappings, sequences and plain scalars (`_construct_directly`, which also checks it against the
  limits below as it builds it, so that it is not walked again); anything the C composer cannot
  compose is composed again by the bounded one, which words the error;
- YAML integers are at most `MAX_INT_CHARS` characters before `int()` sees them (Python refuses
  more than 4,300 digits with a ValueError, and hex or octal digits have no limit at all); any
  integer must fit 64 bits; a YAML value the constructor cannot build (`!!int 1e999`, a 13th
  month) is an input error at its line;
- strings (values and keys) are at most `MAX_STRING_CHARS` and valid Unicode (an escaped unpaired
  surrogate such as ``"\\ud800"`` cannot be encoded into the event log);
- YAML aliases and merge keys may not blow the document up: the decoded document, with every
  alias expanded, has at most `node_budget(size)` values — linear in the file's size.
"""

from __future__ import annotations

import functools
import logging
import operator
import re
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from memstate.core.config import NodeConfig, config_from_object, ignored_fields
from memstate.core.errors import ConfigError, InputError, ManifestError, TopologyError, echo
from memstate.core.pod import Pod, pod_from_manifest
from memstate.core.topology import Topology, topology_from_object
from memstate.core.validation import (
    MAX_NESTING,
    MAX_STRING_CHARS,
    check_document,
    json_nesting,
    node_budget,
    scalar_problem,
)

logger = logging.getLogger(__name__)

# How long an input file (the config file, a manifest) that does not load must stay unchanged
# before it is rejected. Editors and shell redirections truncate a file, then write it: a read
# already due can land in between, and rejecting that empty or half-written file would record an
# error the operator never made (and, for a manifest, remove its running pod). The writer's close
# (IN_CLOSE_WRITE) wakes the reader again well within this time.
UNSETTLED_INPUT_SECONDS = 0.5
# A Pod in etcd is at most 1.5 MiB (etcd's request limit); real manifests are a few KiB.
MAX_FILE_BYTES = 1 << 20
# int64 needs 19 digits (64 binary digits with 0b); 66 allows underscores and a sign.
MAX_INT_CHARS = 66
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def read_document(path: Path, error: type[InputError]) -> Any:
    """One YAML/JSON document from a file, as plain objects; `error` names the file."""
    return parse_document(read_input(path, error), source=str(path), error=error)


def read_input(path: Path, error: type[InputError]) -> bytes:
    """The bytes of an input file, read once and at most one byte past the size limit (so that
    `parse_document` refuses a larger file without reading all of it)."""
    source = str(path)
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", source=source) from None
    except ValueError as exc:  # a path with a NUL byte
        raise error(f"cannot read: {exc}", source=source) from None


def parse_document(data: bytes, *, source: str, error: type[InputError]) -> Any:
    """Parse bytes as one YAML (or, for a `.json` source, JSON) document, within the limits."""
    if len(data) > MAX_FILE_BYTES:
        raise error(f"larger than {MAX_FILE_BYTES} bytes", source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte {exc.start})", source=source) from None
    if source.endswith(".json"):
        if json_nesting(data) > MAX_NESTING:
            raise error(f"nested deeper than {MAX_NESTING} levels", source=source)
        try:
            document = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise error(f"invalid JSON: {echo(str(exc), quote=False)}", source=source) from None
        check_document(document, budget=node_budget(len(data)), source=source, error=error)
        return document
    budget = node_budget(len(data))
    document, checked = _parse_yaml(text, source=source, error=error, budget=budget)
    if not checked:
        check_document(document, budget=budget, source=source, error=error)
    return document


# --- YAML -----------------------------------------------------------------------------------------


class _BoundedComposer(Composer):
    """PyYAML's composer with a nesting limit (it recurses once per level)."""

    def __init__(self) -> None:
        super().__init__()
        self.nesting = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        events: Any = self  # the parser mixed in beside this class provides the event stream
        if events.check_event(AliasEvent) or not events.check_event(
            SequenceStartEvent, MappingStartEvent
        ):
            return super().compose_node(parent, index)
        if self.nesting >= MAX_NESTING:
            mark = events.peek_event().start_mark
            raise ComposerError(None, None, f"nested deeper than {MAX_NESTING} levels", mark)
        self.nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


_YAML_INT = re.compile(r"[-+]?[0-9a-fA-Fbox_:]+")


class _BoundedConstructor(SafeConstructor):
    """PyYAML's safe constructor that reports what it cannot build as a YAML error at its line."""

    node_budget = 10_000

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, IndexError, TypeError, AttributeError) as exc:
            # `!!int 1e999`, `!!int ""`, a 13th month in an implicit timestamp, `!!timestamp x`
            # (PyYAML calls .groupdict() on a failed match), a float tag on
            # text: PyYAML lets Python's conversions raise.
            value = f" {echo(node.value)}" if isinstance(node, ScalarNode) else ""
            reason = echo(str(exc), quote=False)
            raise ConstructorError(
                None, None, f"invalid {_tag_name(node)}{value}: {reason}", node.start_mark
            ) from None

    def construct_bounded_int(self, node: ScalarNode) -> int:
        """`int()` of at most `MAX_INT_CHARS` characters (PyYAML passes any length)."""
        text = str(node.value)
        if len(text) > MAX_INT_CHARS or not _YAML_INT.fullmatch(text):
            raise ConstructorError(
                None,
                None,
                f"integer {echo(text)} is longer than {MAX_INT_CHARS} characters or malformed",
                node.start_mark,
            )
        return self.construct_yaml_int(node)

    def flatten_mapping(self, node: MappingNode) -> None:
        # A key written twice is an error, as in the kubelet's strict decoding (PyYAML keeps the
        # last one silently); keys brought in by merge keys may be overridden, as YAML says.
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (str(key_node.tag), str(key_node.value))
                if key in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {echo(key[1])}", key_node.start_mark
                    )
                seen.add(key)
        # Merge keys copy pairs; nested merges of one anchor double the copies per level.
        super().flatten_mapping(node)
        if len(node.value) > self.node_budget:
            raise ConstructorError(
                None, None, "merge keys expand the mapping too much", node.start_mark
            )

    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        **SafeConstructor.yaml_constructors,
        "tag:yaml.org,2002:int": construct_bounded_int,
    }


def _tag_name(node: Node) -> str:
    tag = str(node.tag)
    return tag.rsplit(":", 1)[-1] if tag.startswith("tag:yaml.org,2002:") else echo(tag)


try:  # libyaml's scanner and parser: the same grammar, several times faster
    from yaml._yaml import CParser

    class _Loader(_BoundedComposer, CParser, _BoundedConstructor, Resolver):
        # The composer comes before CParser in the MRO: CParser's own (Cython, unbounded
        # recursion) composer is never used, only its event stream.
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _BoundedConstructor.__init__(self)
            Resolver.__init__(self)

    class _CComposingLoader(CParser, _BoundedConstructor, Resolver):
        """libyaml's own composer (in C: no Python work per event, but unbounded recursion):
        used only for a document `_nesting_bound` proves shallow (see `_parse_yaml`)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _BoundedConstructor.__init__(self)
            Resolver.__init__(self)
            if not self.yaml_path_resolvers:
                # Called from C around every node, PyYAML's path resolver hooks return at once
                # without path resolvers: C callables that do nothing take their place (a
                # Python call each, two per node, was a tenth of composing a manifest).
                self.descend_resolver = _no_descent  # type: ignore[method-assign]
                self.ascend_resolver = _no_ascent  # type: ignore[method-assign]
                # PyYAML's tag resolution (regular expressions in Python, half of composing a
                # manifest), remembered, and looked up in C: called from C once per node, a
                # Python method here was a tenth of composing a manifest.
                self.resolve = _remembered_tag  # type: ignore[method-assign]

    _C_COMPOSING: type | None = _CComposingLoader

except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(  # type: ignore[no-redef]
        Reader, Scanner, Parser, _BoundedComposer, _BoundedConstructor, Resolver
    ):
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self)
            _BoundedConstructor.__init__(self)
            Resolver.__init__(self)

    _C_COMPOSING = None


_resolve: Any = Resolver.resolve  # PyYAML's (untyped) tag resolution
# `descend_resolver(node, index)` and `ascend_resolver()` that do nothing, in C (see
# `_CComposingLoader.__init__`).
_no_descent: Any = operator.is_
_no_ascent: Any = tuple
# The loaders' implicit resolvers are PyYAML's `Resolver`'s own (nothing here adds any).
_PLAIN_RESOLVER = Resolver()


def _tag_of(kind: type, value: Any, implicit: Any) -> Any:
    """PyYAML's tag of a node without path resolvers: it depends on these arguments only."""
    return _resolve(_PLAIN_RESOLVER, kind, value, implicit)


# `_tag_of`, remembered for `_CComposingLoader` (names and UIDs differ per pod: the least
# recently used go). What it keeps alive is bounded by the text parsed since it was last
# emptied (`_bound_remembered_tags`), not only by its entries: a key holds its scalar.
_remembered_tag = functools.lru_cache(maxsize=4096)(_tag_of)
_REMEMBERED_TEXT_CHARS = 1 << 20
_remembered_text = [0]  # characters parsed with `_remembered_tag` since it was emptied


def _bound_remembered_tags(text: str) -> None:
    """Empty `_remembered_tag` once the texts parsed with it since it was last emptied, `text`
    included, exceed `_REMEMBERED_TEXT_CHARS`: its keys hold at most that much of them."""
    _remembered_text[0] += len(text)
    if _remembered_text[0] > _REMEMBERED_TEXT_CHARS:
        _remembered_tag.cache_clear()
        _remembered_text[0] = len(text)


# The part of a line up to its last block indicator: `-`, `?` or `:` followed by a blank, a line
# break or the end (libyaml's rule in block context); `.` stops only at "\n", so a "line" here
# is never shorter than libyaml's, and the group's length is at least the indicator's column.
_UP_TO_LAST_INDICATOR = re.compile(r"^(.*)[-?:](?:[ \t\r\x00\x85\u2028\u2029]|$)", re.MULTILINE)


def _nesting_bound(text: str) -> int:
    """An upper bound on how deep collections nest in a YAML text, in linear time (in C).

    A block collection starts at the column of its first key or entry, which is at most the
    column of an indicator on that line; a block collection nested in another starts at a
    greater column, except a sequence that is a mapping's value (it may share the mapping's
    column, and its own entries are indented further): so block collections nest at most
    2 × (the largest such column + 1) deep. Flow collections need a `[` or `{` each, and a
    `[` may hold an implicit single-pair mapping (`[a: b]`): 2 per bracket. Quoted or commented
    indicators only make the bound larger.
    """
    column = max(map(len, _UP_TO_LAST_INDICATOR.findall(text)), default=-1)
    return 2 * (column + 1) + 2 * (text.count("[") + text.count("{"))


def _parse_yaml(
    text: str, *, source: str, error: type[InputError], budget: int
) -> tuple[Any, bool]:
    """The one document of a YAML text, and whether it is already known to pass
    `check_document(document, budget=budget)` (checked while it was built directly)."""
    if _C_COMPOSING is not None and _nesting_bound(text) <= MAX_NESTING:
        _bound_remembered_tags(text)
        # Shallow enough for libyaml's recursive composer: the same events, nodes, resolver and
        # constructor, so the same document. Whatever goes wrong there is reported by the
        # bounded loader below, which words every error as it always has.
        try:
            documents, checked = _documents(
                _C_COMPOSING(text), len(text), direct=True, budget=budget
            )
        except Exception:  # re-parsed below, which raises the error to report
            pass
        else:
            if len(documents) == 1:
                return documents[0], checked
    try:
        documents, _ = _documents(_Loader(text), len(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"invalid YAML{where}: {echo(problem, quote=False)}", source=source) from None
    if len(documents) != 1:
        raise error(f"expected exactly one document, found {len(documents)}", source=source)
    return documents[0], False


def _documents(
    loader: Any, size: int, *, direct: bool = False, budget: int = 0
) -> tuple[list[Any], bool]:
    """The non-empty documents a loader reads (PyYAML's loader API is untyped), and whether
    every one was built by `_construct_directly` within `budget` values, so that
    `check_document` with that budget would pass them; `direct`: build them so where it can
    (libyaml's composer only: it needs the bound)."""
    loader.node_budget = node_budget(size)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            values = [0]
            try:
                document = _construct_directly(node, loader, set(), 0, values) if direct else None
            except _Unusual:
                direct = False
            if not direct:
                document = loader.construct_document(node)
            elif values[0] > budget:
                direct = False  # the same document; `check_document` words the error
            if document is not None:
                documents.append(document)
        return documents, direct
    finally:
        loader.dispose()


_STR, _SEQ, _MAP = (f"tag:yaml.org,2002:{name}" for name in ("str", "seq", "map"))
# Scalars PyYAML's constructor builds into immutable values with no state between nodes.
_PLAIN_SCALARS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("int", "float", "bool", "null"))


class _Unusual(Exception):
    """A document `_construct_directly` leaves to PyYAML's constructor."""


def _construct_directly(
    node: Node, loader: Any, seen: set[int], nesting: int, values: list[int]
) -> Any:
    """What PyYAML's (bounded, safe) constructor builds from `node`, without its generators and
    bookkeeping, for the usual document: mappings, sequences and plain scalars, each node used
    once. Anything else — an alias, a merge or value key, a key written twice, a tag other than
    those, a collection as a key — raises `_Unusual`, and the constructor builds the document.
    Recurses once per level of collections (a mapping's scalar keys and values are built in its
    loop): only for a document `_nesting_bound` proves shallow.

    It also checks what `check_document` would (`nesting` is the node's, as it counts it): a
    value over a limit raises `_Unusual` too, and `values[0]` counts the values and keys, which
    is what `check_document` holds against its budget for a document without aliases. So a
    document built here within the budget needs no second walk, and any other is built and
    checked as before, with the same errors."""
    values[0] += 1
    kind = node.__class__
    if kind is ScalarNode:
        return _scalar(node, loader)
    if id(node) in seen or nesting >= MAX_NESTING:
        raise _Unusual  # an alias: one value in two places is the constructor's to build
    seen.add(id(node))
    nesting += 1
    if kind is SequenceNode and node.tag == _SEQ:
        return [_construct_directly(child, loader, seen, nesting, values) for child in node.value]
    if kind is not MappingNode or node.tag != _MAP or len(node.value) > loader.node_budget:
        raise _Unusual
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if key_node.__class__ is not ScalarNode:
            raise _Unusual
        # Not a merge or value key either (their tags are not plain). The keys and the scalar
        # values are most of a manifest's nodes: built here, not by a call each.
        key = _scalar(key_node, loader)
        # A key written twice builds the same key (PyYAML's NaN is one object): the constructor
        # says whether that is an error (the same spelling) or the last one wins.
        if key in mapping:
            raise _Unusual
        if value_node.__class__ is ScalarNode:
            mapping[key] = _scalar(value_node, loader)
            values[0] += 2
        else:
            values[0] += 1
            mapping[key] = _construct_directly(value_node, loader, seen, nesting, values)
    return mapping


def _scalar(node: Node, loader: Any) -> Any:
    """`_construct_directly` of a scalar node (counted by the caller)."""
    tag = node.tag
    if tag == _STR:
        value = node.value
    elif tag in _PLAIN_SCALARS:
        value = loader.construct_object(node)
    else:
        raise _Unusual
    # The usual string needs no more than this; anything else is `check_document`'s test.
    usual = value.__class__ is str and len(value) <= MAX_STRING_CHARS and value.isascii()
    if not usual and scalar_problem(value):
        raise _Unusual
    return value


# --- loaders --------------------------------------------------------------------------------------


def load_manifest(path: Path) -> Pod:
    """A validated pod from a manifest file; `ManifestError` names the file and field."""
    return pod_from_manifest(read_document(path, ManifestError), source=str(path))


def load_config(path: Path) -> NodeConfig:
    """A validated node config from a KubeletConfiguration-shaped YAML file."""
    obj = read_document(path, ConfigError)
    return config_from_document(obj, source=str(path))


def config_from_document(obj: Any, *, source: str) -> NodeConfig:
    """The node config of a parsed config file (its `memstate:` section is not part of it).

    Upstream KubeletConfiguration fields memstate does not read are logged in one warning line.
    """
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != "memstate"}
    config = config_from_object(obj, source=source)
    ignored = ignored_fields(obj)
    if ignored:
        logger.warning(
            "%s: %d KubeletConfiguration fields ignored (not used by memstate): %s",
            source or "config",
            len(ignored),
            ", ".join(ignored),
        )
    return config


def load_topology(path: Path) -> Topology:
    """A validated topology from a topology file."""
    return topology_from_object(read_document(path, TopologyError), source=str(path))


def manifest_files(directory: Path) -> list[Path]:
    """Manifest candidates in a directory, in the order the directory lists them.

    Deliberately not sorted: like the kubelet after a restart, memstate must not depend on the
    order pods come back in, and the tests exercise that. A name that is not valid UTF-8 is
    skipped: it could not be named in the event log.
    """
    return [entry for entry in directory.iterdir() if is_manifest_candidate(entry)]


def is_manifest_candidate(entry: Path) -> bool:
    """A regular file with a manifest suffix, not hidden, named in UTF-8 (see `manifest_files`)."""
    return is_manifest_name(entry.name) and entry.is_file()


def is_manifest_name(name: str) -> bool:
    """A name a manifest may have: a manifest suffix, not hidden, UTF-8 (the file not looked at)."""
    return name.endswith(MANIFEST_SUFFIXES) and not name.startswith(".") and _is_utf8(name)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back as lone surrogates
        return False
    return True
