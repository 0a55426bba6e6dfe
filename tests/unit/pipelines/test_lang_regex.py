"""``rules:if`` regexes are RE2, as on GitLab: its classes and flags, its errors, linear time, no noise."""

from __future__ import annotations

import pytest

from pipelines.language.expressions import ExpressionError, compile_expression, evaluate


@pytest.mark.parametrize(("expression", "variables", "expected"), [
    ("$REF =~ /^[[:alpha:]]+$/", {"REF": "main"}, True),             # POSIX class (Python re: a nested set)
    ("$REF =~ /^[[:alpha:]]+$/", {"REF": "v1"}, False),
    ("$REF =~ /^[[:digit:]]+\\.[[:digit:]]+$/", {"REF": "12.3"}, True),
    ("$NAME =~ /^\\p{L}+$/", {"NAME": "Zoë"}, True),                   # Unicode class
    ("$NAME =~ /^\\p{Lu}/", {"NAME": "zoë"}, False),
    ("$REF =~ /^RELEASE/i", {"REF": "release-1"}, True),              # flags
    ("$MSG =~ /^deploy$/m", {"MSG": "fix\ndeploy\nmore"}, True),
    ("$MSG =~ /a.b/s", {"MSG": "a\nb"}, True),
    ("$MSG =~ /a.b/", {"MSG": "a\nb"}, False),
    ("$REF =~ /^feature\\/.+/", {"REF": "feature/x"}, True),          # escaped slash
    ("$REF =~ /(?<kind>fix|feat)-\\d+/", {"REF": "feat-12"}, True),    # named group, Ruby spelling
    ("$PATTERN && $REF =~ $PATTERN", {"PATTERN": "/^v[[:digit:]]/", "REF": "v2"}, True),  # pattern in a variable
    ("$REF !~ /^[[:space:]]*$/", {"REF": "x"}, True),
])
def test_re2_semantics(expression: str, variables: dict[str, str], expected: bool) -> None:
    """RE2's dialect decides, not Python's: POSIX and Unicode classes, i/m/s flags, escaped slashes."""
    assert evaluate(compile_expression(expression), variables) is expected


def test_hostile_pattern_runs_in_linear_time() -> None:
    """A pattern that backtracks exponentially in Python's re ends at once under RE2."""
    expr = compile_expression("$X =~ /^(a+)+$/")
    assert evaluate(expr, {"X": "a" * 5000 + "b"}) is False


@pytest.mark.parametrize(("expression", "why"), [
    ("$X =~ /(?<=a)b/", "RE2"),         # lookbehind: not RE2
    ("$X =~ /(a/", "missing )"),
    ("$X =~ /a/x", "flag 'x'"),
])
def test_bad_regex_is_a_problem_not_a_crash(expression: str, why: str, capfd: pytest.CaptureFixture[str]) -> None:
    """A pattern RE2 refuses is an ExpressionError that says why; RE2 prints nothing of its own."""
    with pytest.raises(ExpressionError, match=r"regex|flag") as info:
        compile_expression(expression)
    assert why in str(info.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
