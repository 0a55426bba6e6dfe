"""Typed reads of located YAML values, each reporting a problem instead of raising (pure).

>>> sink = ProblemSink()
>>> lines = read_script(YSeq((YScalar("a", L), YSeq((YScalar("b", L),), L)), L), "script", sink)
>>> lines
('a', 'b')
"""

from __future__ import annotations

from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.yamltree import YMap, YNode, YScalar, YSeq, bad_character

L = Loc("<doc>", 1, 1)
_MAX_NESTING = 10
MAX_NAME = 255  # the store's name columns (job, stage) hold 255 characters; GitLab's limit too


def check_name(name: str, what: str, loc: Loc, sink: ProblemSink) -> bool:
    """Report a name (of a job, a stage) that no run can hold: too long, or with a control
    character; True when it is usable.

    >>> sink = ProblemSink()
    >>> check_name("x" * 300, "job name", L, sink), sink.problems()[0].message
    (False, 'the job name is 300 characters long; at most 255 fit')
    """
    if len(name) > MAX_NAME:
        sink.error(loc, "name-too-long", f"the {what} is {len(name)} characters long; at most {MAX_NAME} fit",
                   f"shorten the {what} to {MAX_NAME} characters or fewer")
        return False
    problem = bad_character(name)
    # a NUL or lone surrogate came from a YAML value or key, where the reader reported it already
    if problem is not None and bad_character(name, controls=False) is None:
        sink.error(loc, "invalid-character", f"the {what} holds {problem}",
                   "names are plain text: remove the control character")
        return False
    return problem is None


def kind_of(node: YNode) -> str:
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def wrong_type(node: YNode, what: str, expected: str, sink: ProblemSink, example: str) -> None:
    sink.error(
        node.loc,
        "invalid-type",
        f"{what} must be {expected}, not {kind_of(node)}",
        f"write it like: {example}",
    )


def read_str(node: YNode, what: str, sink: ProblemSink, *, allow_number: bool = True) -> str | None:
    """A string (numbers accepted and printed as GitLab's Ruby would)."""
    if isinstance(node, YScalar):
        value = node.value
        if isinstance(value, str):
            return value
        if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
            return node.text()
    wrong_type(node, what, "a string", sink, f"{what.split(':')[-1]}: some-value")
    return None


def read_bool(node: YNode, what: str, sink: ProblemSink) -> bool | None:
    if isinstance(node, YScalar) and isinstance(node.value, bool):
        return node.value
    wrong_type(node, what, "true or false", sink, f"{what.split(':')[-1]}: true")
    return None


def read_int(node: YNode, what: str, sink: ProblemSink, low: int, high: int) -> int | None:
    if isinstance(node, YScalar) and isinstance(node.value, int) and not isinstance(node.value, bool):
        if low <= node.value <= high:
            return node.value
        sink.error(
            node.loc,
            "invalid-value",
            f"{what} must be between {low} and {high}, not {node.value}",
            f"use a whole number from {low} to {high}",
        )
        return None
    wrong_type(node, what, "a whole number", sink, f"{what.split(':')[-1]}: {low}")
    return None


def read_str_list(node: YNode, what: str, sink: ProblemSink) -> tuple[str, ...] | None:
    """A string or a list of strings (GitLab accepts both almost everywhere)."""
    if isinstance(node, YScalar) and node.value is not None and not isinstance(node.value, bool):
        text = read_str(node, what, sink)
        return None if text is None else (text,)
    if isinstance(node, YSeq):
        out: list[str] = []
        for item in _flatten(node, what, sink):
            text = read_str(item, what, sink)
            if text is not None:
                out.append(text)
        return tuple(out)
    wrong_type(node, what, "a string or a list of strings", sink, f"{what.split(':')[-1]}: [a, b]")
    return None


def read_script(node: YNode, what: str, sink: ProblemSink) -> tuple[str, ...]:
    """Script lines: a string, or lists nested up to 10 deep (from !reference), flattened."""
    if isinstance(node, YScalar) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, YSeq):
        out: list[str] = []
        for item in _flatten(node, what, sink):
            text = read_str(item, f"a line of {what}", sink)
            if text is not None:
                out.append(text)
        return tuple(out)
    wrong_type(node, what, "a string or a list of strings", sink, f'{what}: ["make test"]')
    return ()


def read_exit_codes(node: YNode, what: str, sink: ProblemSink) -> tuple[int, ...]:
    items = node.items if isinstance(node, YSeq) else (node,)
    out: list[int] = []
    for item in items:
        code = read_int(item, what, sink, 0, 2**31 - 1)
        if code is not None:
            out.append(code)
    return tuple(out)


def read_map(node: YNode, what: str, sink: ProblemSink, example: str) -> YMap | None:
    if isinstance(node, YMap):
        return node
    wrong_type(node, what, "a mapping", sink, example)
    return None


def _flatten(node: YSeq, what: str, sink: ProblemSink, depth: int = 0) -> list[YNode]:
    out: list[YNode] = []
    for item in node.items:
        if isinstance(item, YSeq):
            if depth >= _MAX_NESTING:
                sink.error(
                    item.loc, "invalid-type", f"{what} nests lists more than 10 deep", "flatten the list"
                )
                continue
            out.extend(_flatten(item, what, sink, depth + 1))
        else:
            out.append(item)
    return out


def flatten_items(node: YSeq, what: str, sink: ProblemSink) -> list[YNode]:
    """The items of a list with nested lists (from ``!reference``) spliced in."""
    return _flatten(node, what, sink)
