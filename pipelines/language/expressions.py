"""GitLab's CI expression language for ``rules:if`` and ``only/except:variables`` (pure).

Grammar (``&&`` binds tighter than ``||``, as GitLab has since 13.x)::

    expr    := and ("||" and)*
    and     := compare ("&&" compare)*
    compare := operand (("==" | "!=" | "=~" | "!~") operand)?
    operand := "(" expr ")" | $VAR | ${VAR} | "string" | 'string' | /regex/flags | null

A lone ``$VAR`` is true when the variable is set and not empty. ``=~`` is an unanchored search;
the right side may be a variable whose value is a ``/regex/``. Undefined variables are ``null``.

Regexes are RE2, as on GitLab (``Gitlab::UntrustedRegexp``): POSIX classes (``[[:alpha:]]``), Unicode
classes (``\\p{L}``), the flags ``i m s U`` and linear-time matching, through Google's own bindings
(``google-re2``) rather than Python's ``re``, which speaks another dialect (no POSIX classes, nested-set
FutureWarnings) and can backtrack for ever on a hostile pattern from a pipeline.

>>> expr = compile_expression('$CI_COMMIT_BRANCH == "main" || $TAG =~ /^v\\\\d+/')
>>> evaluate(expr, {"CI_COMMIT_BRANCH": "dev", "TAG": "v1.2"})
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import re2

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<var>\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*))
      | (?P<str>"[^"]*"|'[^']*')
      | (?P<regex>/(?:\\.|[^/\\])+/[A-Za-z]*)
      | (?P<null>null\b)
      | (?P<op>==|!=|=~|!~|&&|\|\||\(|\))
    )""",
    re.VERBOSE,
)
_FLAGS = "imsU"  # RE2's inline flags, which GitLab's /pattern/flags map to


class Regex(Protocol):
    """A compiled RE2 pattern (the part of ``re2._Regexp`` this module uses)."""

    def search(self, text: str) -> object | None: ...


def _re2_options() -> object:
    options = re2.Options()
    options.log_errors = False  # RE2 would print a bad pattern to stderr; the problem says it instead
    return options


_OPTIONS = _re2_options()


class ExpressionError(ValueError):
    """The expression does not parse; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | None


@dataclass(frozen=True, slots=True)
class Pattern:
    regex: Regex


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "&&" or "||"
    parts: tuple[Expression, ...]


Operand = Var | Literal | Pattern | Compare | BoolOp
Expression = Operand


@lru_cache(maxsize=4096)
def compile_regex(text: str) -> Regex:
    """A GitLab ``/pattern/flags`` literal as an RE2 regex.

    >>> compile_regex("/^release-.*$/i").search("RELEASE-1") is not None
    True
    >>> compile_regex("/^[[:alpha:]]+$/").search("abc") is not None
    True
    """
    if len(text) < 2 or not text.startswith("/") or text.rfind("/") == 0:
        raise ExpressionError(f"{text!r} is not a /regex/ literal")
    end = text.rfind("/")
    body, flags_text = text[1:end], text[end + 1 :]
    for flag in flags_text:
        if flag not in _FLAGS:
            raise ExpressionError(f"regex flag {flag!r} is not supported (use i, m, s or U)")
    body = body.replace("\\/", "/")
    prefix = f"(?{''.join(sorted(set(flags_text)))})" if flags_text else ""
    return _compile(prefix + body, text)


def _compile(pattern: str, shown: str) -> Regex:
    # named groups: RE2 of this version reads (?P<name>...) only
    pattern = re.sub(r"\(\?<(?![=!])", "(?P<", pattern)
    try:
        compiled: Regex = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ExpressionError(f"regex {shown!r} does not compile (RE2): {why}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ExpressionError(f"regex {shown!r} does not compile (RE2): {exc}") from None
    return compiled


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Expression:
    """Parse once; expressions repeat across jobs, so the result is cached by text."""
    tokens = _tokenize(text)
    parser = _ExpressionParser(tokens, text)
    expr = parser.parse_or()
    if parser.pos != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.pos][1]!r} in {text!r}")
    return expr


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    stripped_end = len(text.rstrip())
    while pos < stripped_end:
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionError(f"cannot read {text[pos:].strip()[:30]!r} in {text!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    if not tokens:
        raise ExpressionError("the expression is empty")
    return tokens


class _ExpressionParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.pos = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse_or(self) -> Expression:
        parts = [self.parse_and()]
        while self._peek() == ("op", "||"):
            self.pos += 1
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("||", tuple(parts))

    def parse_and(self) -> Expression:
        parts = [self.parse_compare()]
        while self._peek() == ("op", "&&"):
            self.pos += 1
            parts.append(self.parse_compare())
        return parts[0] if len(parts) == 1 else BoolOp("&&", tuple(parts))

    def parse_compare(self) -> Expression:
        left = self.parse_operand()
        token = self._peek()
        if token is not None and token[0] == "op" and token[1] in ("==", "!=", "=~", "!~"):
            self.pos += 1
            right = self.parse_operand()
            if token[1] in ("=~", "!~") and isinstance(right, Literal) and right.value is not None:
                # GitLab accepts a quoted "/regex/" here; compile it now so a typo is reported early.
                right = Pattern(_string_pattern(right.value))
            return Compare(token[1], left, right)
        return left

    def parse_operand(self) -> Expression:
        token = self._peek()
        if token is None:
            raise ExpressionError(f"{self.text!r} ends where a value was expected")
        kind, value = token
        self.pos += 1
        if kind == "var":
            return Var(value[2:-1] if value.startswith("${") else value[1:])
        if kind == "str":
            return Literal(value[1:-1])
        if kind == "null":
            return Literal(None)
        if kind == "regex":
            return Pattern(compile_regex(value))
        if value == "(":
            inner = self.parse_or()
            if self._peek() != ("op", ")"):
                raise ExpressionError(f"missing ')' in {self.text!r}")
            self.pos += 1
            return inner
        raise ExpressionError(f"unexpected {value!r} in {self.text!r}")


def _string_pattern(text: str) -> Regex:
    if text.startswith("/") and text.rfind("/") > 0:
        return compile_regex(text)
    return _compile(text, text)


def evaluate(expr: Expression, variables: Mapping[str, str]) -> bool:
    """True when the expression holds for these variables."""
    return _truthy(_value(expr, variables))


def _value(expr: Expression, variables: Mapping[str, str]) -> str | bool | Pattern | None:
    if isinstance(expr, Var):
        return variables.get(expr.name)
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Pattern):
        return expr
    if isinstance(expr, BoolOp):
        if expr.op == "&&":
            return all(evaluate(part, variables) for part in expr.parts)
        return any(evaluate(part, variables) for part in expr.parts)
    left = _value(expr.left, variables)
    right = _value(expr.right, variables)
    if expr.op in ("==", "!="):
        equal = left == right if not isinstance(right, Pattern) else False
        return equal if expr.op == "==" else not equal
    matched = _matches(left, right)
    return matched if expr.op == "=~" else not matched


def _matches(left: object, right: object) -> bool:
    if isinstance(right, str):
        try:
            right = Pattern(_string_pattern(right))
        except ExpressionError:
            return False
    if not isinstance(right, Pattern):
        return False
    text = left if isinstance(left, str) else ""
    return right.regex.search(text) is not None


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value != ""
    return value is not None
