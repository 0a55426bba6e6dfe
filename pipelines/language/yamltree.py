"""YAML text to a located tree: every mapping, list and scalar knows its file:line:col (pure).

PyYAML's composer (libyaml when available, which like GitLab's Psych accepts a TAB inside a plain
scalar) resolves anchors and aliases; this module then applies merge keys the way Psych does (in
order, each ``<<`` overwriting what came before), keeps the last of duplicate keys (warning), keeps
``!reference`` sequences tagged for later resolution and skips a leading ``spec:`` header document.

Characters no run can hold are refused here, where their location is known: a NUL or a lone
surrogate in any value (double-quoted ``"\\0"``, ``"\\ud800"``: PostgreSQL cannot store the first, no
database the second, no ``execve`` takes a NUL), and any control character in a key (keys are job,
variable and matrix names, shown on terminals). A key too long for YAML's simple-key limit (1,024
characters) is reported as too long, not as the syntax error the parser gives.

>>> sink = ProblemSink()
>>> tree = parse_yaml("a: &x {b: 1}\\nc:\\n  <<: *x\\n  d: 2\\n", "ci.yml", sink)
>>> isinstance(tree, YMap) and sorted(tree.get("c").entries)  # type: ignore[union-attr]
['b', 'd']
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pipelines.language.problems import Loc, ProblemSink

Scalar = str | int | float | bool | None

# libyaml when PyYAML was built with it: faster, and it reads a TAB in a plain scalar as Psych does.
_Loader: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_MAX_EXPANDED_NODES = 2_000_000
_MAX_SIMPLE_KEY = 1024  # YAML 1.1's (and libyaml's) limit on an implicit key
_CONTROL_NAMES = {0: "NUL", 7: "BEL", 8: "BS", 9: "TAB", 10: "LF", 13: "CR", 27: "ESC", 127: "DEL"}
_REFERENCE_TAG = "!reference"
_STD = "tag:yaml.org,2002:"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass(frozen=True, slots=True)
class YScalar:
    value: Scalar
    loc: Loc

    def text(self) -> str:
        """The value as GitLab's Ruby would print it (``true``, ``3.1``, empty for null)."""
        value = self.value
        if value is None:
            return ""
        if value is True:
            return "true"
        if value is False:
            return "false"
        return str(value)


@dataclass(frozen=True, slots=True)
class YSeq:
    items: tuple[YNode, ...]
    loc: Loc
    is_reference: bool = False


class YItem(NamedTuple):
    key_loc: Loc
    value: YNode


@dataclass(frozen=True, slots=True)
class YMap:
    entries: dict[str, YItem]
    loc: Loc

    def get(self, key: str) -> YNode | None:
        item = self.entries.get(key)
        return None if item is None else item.value

    def key_loc(self, key: str) -> Loc:
        item = self.entries.get(key)
        return self.loc if item is None else item.key_loc

    def items(self) -> Iterator[tuple[str, YNode]]:
        for key, item in self.entries.items():
            yield key, item.value


YNode = YScalar | YSeq | YMap


def bad_character(text: str, *, multiline: bool = False, controls: bool = True) -> str | None:
    """The first character of ``text`` that a name or value may not hold, described; or None.

    Never allowed: NUL and lone surrogates (unstorable). ``controls``: no other control character
    either (TAB, LF and CR too unless ``multiline``).

    >>> bad_character("build"), bad_character("a\\x1b[2J"), bad_character("a\\nb", multiline=True)
    (None, 'the control character U+001B (ESC) at character 2', None)
    >>> bad_character("tab\\there\\x00", multiline=True, controls=False)
    'the control character U+0000 (NUL) at character 9'
    """
    if text.isprintable():
        return None
    for index, char in enumerate(text, start=1):
        code = ord(char)
        category = unicodedata.category(char)
        if category == "Cs":
            return f"a lone surrogate U+{code:04X} at character {index}"
        if category != "Cc" or (multiline and char in "\t\n\r") or (not controls and code != 0):
            continue
        name = _CONTROL_NAMES.get(code)
        return f"the control character U+{code:04X}{f' ({name})' if name else ''} at character {index}"
    return None


def _long_key(text: str, mark: yaml.Mark) -> tuple[int, int, int] | None:
    """(line, col, length) of a key the parser refused for being past the simple-key limit."""
    lines = text.split("\n")
    if mark.line >= len(lines):
        return None
    line = lines[mark.line]
    if mark.column >= len(line) or line[mark.column] != ":":
        return None
    head = line[: mark.column]
    start = max(head.rfind(char) for char in "{[,") + 1  # in a flow mapping, after its last separator
    start += len(head[start:]) - len(head[start:].lstrip(" \t-"))
    key = head[start:].rstrip()
    if len(key) < _MAX_SIMPLE_KEY:
        return None
    return mark.line + 1, start + 1, len(key.strip("\"'"))


def _loc(node: Node, file: str) -> Loc:
    mark = node.start_mark
    return Loc(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str, sink: ProblemSink) -> YNode | None:
    """The pipeline document of ``text`` as a located tree, or None after a reported problem."""
    try:
        documents = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        long_key = _long_key(text, mark) if mark is not None else None
        if long_key is not None:
            line, col, length = long_key
            sink.error(
                Loc(file, line, col),
                "name-too-long",
                f"this key is {length} characters long; YAML reads at most {_MAX_SIMPLE_KEY} as a key "
                "(and a job name may have at most 255)",
                "shorten the name; put long text in a variable or the script instead",
            )
            return None
        loc = Loc(file, mark.line + 1, mark.column + 1) if mark is not None else Loc(file, 1, 1)
        reason = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        sink.error(loc, "yaml-syntax", f"invalid YAML: {reason}", "fix the YAML syntax at this position")
        return None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        sink.error(Loc(file, 1, 1), "yaml-syntax", f"invalid YAML: {exc}", "fix the YAML syntax")
        return None
    documents = [doc for doc in documents if doc is not None]
    if not documents:
        return YMap({}, Loc(file, 1, 1))
    if len(documents) > 2 or (len(documents) == 2 and not _is_spec_header(documents[0])):
        sink.error(
            _loc(documents[1], file),
            "yaml-structure",
            "more than one YAML document in a pipeline file",
            "only a `spec:` header document may come before the `---` separator; remove the others",
        )
        return None
    node = documents[-1]
    converter = _Converter(file, sink)
    try:
        return converter.convert(node)
    except _TooLarge:
        sink.error(
            _loc(node, file),
            "yaml-too-large",
            "anchors and aliases expand to more than 2,000,000 nodes",
            "reduce nested aliases; a pipeline file does not need this many",
        )
        return None


def spec_header(text: str) -> bool:
    """True when the file begins with a ``spec:`` header document (inputs for includes)."""
    return text.lstrip().startswith("spec:")


def _is_spec_header(node: Node) -> bool:
    if not isinstance(node, MappingNode):
        return False
    keys = {k.value for k, _ in node.value if isinstance(k, ScalarNode)}
    return keys == {"spec"}


class _TooLarge(Exception):
    pass


class _Converter:
    def __init__(self, file: str, sink: ProblemSink) -> None:
        self.file = file
        self.sink = sink
        self.done: dict[int, YNode] = {}
        self.sizes: dict[int, int] = {}
        self.active: set[int] = set()
        self.expanded = 0

    def convert(self, node: Node) -> YNode:
        key = id(node)
        cached = self.done.get(key)
        if cached is not None:
            # An alias: count its expanded size, so an alias bomb is refused instead of walked.
            self.expanded += self.sizes[key]
            if self.expanded > _MAX_EXPANDED_NODES:
                raise _TooLarge
            return cached
        if key in self.active:
            self.sink.error(
                _loc(node, self.file),
                "yaml-structure",
                "an alias refers to a node that contains it",
                "recursive anchors cannot describe a pipeline; copy the values instead",
            )
            return YScalar(None, _loc(node, self.file))
        before = self.expanded
        self.active.add(key)
        try:
            result = self._convert_new(node)
        finally:
            self.active.discard(key)
        self.expanded += 1
        if self.expanded > _MAX_EXPANDED_NODES:
            raise _TooLarge
        self.done[key] = result
        self.sizes[key] = self.expanded - before
        return result

    def _convert_new(self, node: Node) -> YNode:
        loc = _loc(node, self.file)
        tag = node.tag or ""
        if isinstance(node, ScalarNode):
            if tag.startswith("!") and not tag.startswith("!!"):
                self._unknown_tag(tag, loc)
            value = _scalar_value(node)
            if isinstance(value, str) and (problem := bad_character(value, controls=False)) is not None:
                self.sink.error(loc, "invalid-character", f"this value holds {problem}",
                                "no run can hold it: remove it (write binary data to a file in the script)")
            return YScalar(value, loc)
        if isinstance(node, SequenceNode):
            is_reference = tag == _REFERENCE_TAG
            if tag.startswith("!") and not is_reference:
                self._unknown_tag(tag, loc)
            return YSeq(tuple(self.convert(child) for child in node.value), loc, is_reference)
        if isinstance(node, MappingNode):
            if tag.startswith("!"):
                self._unknown_tag(tag, loc)
            return self._mapping(node, loc)
        raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _unknown_tag(self, tag: str, loc: Loc) -> None:
        self.sink.error(
            loc,
            "yaml-tag",
            f"unknown YAML tag {tag}",
            "sandpit understands !reference [job, key] only; remove the tag",
        )

    def _mapping(self, node: MappingNode, loc: Loc) -> YMap:
        entries: dict[str, YItem] = {}
        explicit: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(key_node, self.file)
            if not isinstance(key_node, ScalarNode):
                self.sink.error(
                    key_loc,
                    "yaml-structure",
                    "a mapping key must be a plain value, not a list or mapping",
                    "write the key as a string",
                )
                continue
            value = self.convert(value_node)
            if key_node.tag == _STD + "merge":
                self._merge(entries, value, key_loc)
                continue
            key = key_node.value
            if (problem := bad_character(key)) is not None:
                self.sink.error(key_loc, "invalid-character", f"this key holds {problem}",
                                "keys name jobs, variables and settings: plain text, no control characters")
                continue
            previous = explicit.get(key)
            explicit[key] = key_loc
            if previous is not None:
                self.sink.warning(
                    key_loc,
                    "duplicate-key",
                    f"key '{key}' appears twice in this mapping (first at line {previous.line})",
                    "delete one of them; like GitLab, sandpit keeps the last one",
                )
            entries[key] = YItem(key_loc, value)
        return YMap(entries, loc)

    def _merge(self, entries: dict[str, YItem], value: YNode, key_loc: Loc) -> None:
        if isinstance(value, YMap):
            entries.update(value.entries)
            return
        if isinstance(value, YSeq) and all(isinstance(item, YMap) for item in value.items):
            merged: dict[str, YItem] = {}
            for item in reversed(value.items):  # earlier maps win, as the YAML merge spec says
                assert isinstance(item, YMap)
                merged.update(item.entries)
            entries.update(merged)
            return
        self.sink.error(
            key_loc,
            "yaml-structure",
            "a merge key `<<` needs a mapping or a list of mappings",
            "point `<<:` at an anchor of a mapping, e.g. `<<: *defaults`",
        )


def _scalar_value(node: ScalarNode) -> Scalar:
    tag = node.tag
    if tag == _STD + "str" or not tag.startswith(_STD):
        return str(node.value)
    try:
        if tag == _STD + "null":
            return None
        if tag == _STD + "bool":
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        if tag == _STD + "int":
            return int(_CONSTRUCTOR.construct_yaml_int(node))
        if tag == _STD + "float":
            return float(_CONSTRUCTOR.construct_yaml_float(node))
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    return str(node.value)
