"""The pure building blocks: YAML tree, expressions, durations/sizes, globs, variable expansion."""

from __future__ import annotations

import pytest

from pipelines.language.expressions import ExpressionError, compile_expression, evaluate
from pipelines.language.globs import glob_matches
from pipelines.language.planner import plan
from pipelines.language.problems import Problems, ProblemSink
from pipelines.language.quantities import parse_cpus, parse_duration, parse_pids, parse_size
from pipelines.language.variables import expand, resolve_variables, slug
from pipelines.language.yamltree import YMap, YScalar, parse_yaml

VARS = {"BRANCH": "main", "EMPTY": "", "TAG": "v1.2.3", "PATTERN": "/^v\\d+/", "N": "3"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('$BRANCH == "main"', True),
        ("$BRANCH == 'dev'", False),
        ('$BRANCH != "dev"', True),
        ("$BRANCH", True),
        ("$EMPTY", False),
        ("$UNDEFINED", False),
        ("$UNDEFINED == null", True),
        ("$EMPTY == null", False),
        ('$EMPTY == ""', True),
        ("$TAG =~ /^v\\d+\\.\\d+/", True),
        ("$TAG !~ /^v\\d+/", False),
        ("$TAG =~ /^V/i", True),
        ("$TAG =~ $PATTERN", True),
        ('$TAG =~ "/^v1/"', True),
        ("$UNDEFINED =~ /x/", False),
        ('$BRANCH == "dev" || $TAG && $N == "3"', True),
        ('($BRANCH == "dev" || $TAG) && $N == "4"', False),
        ('$BRANCH == "x" || $BRANCH == "y" || ${N} == "3"', True),
        ('$A == "1"\n  && $BRANCH', False),
        ("$BRANCH == $BRANCH", True),
        ("/x/ =~ $N", False),
    ],
)
def test_expressions(expression: str, expected: bool) -> None:
    """rules:if follows GitLab's expression semantics (null, empty, regex, && over ||)."""
    assert evaluate(compile_expression(expression), VARS) is expected


@pytest.mark.parametrize(
    "expression",
    ["", "$A ==", "$A == (", "($A", "$A = 'x'", "$A =~ /(/", "$A && && $B", "$A =~ /x/q", "main"],
)
def test_bad_expressions(expression: str) -> None:
    """Malformed expressions raise ExpressionError with a reason (reported as invalid-expression)."""
    with pytest.raises(ExpressionError):
        compile_expression(expression)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600),
        ("30s", 30),
        ("90m", 5400),
        ("1h 30m", 5400),
        ("2 hours and 5 minutes", 7500),
        ("1 day", 86400),
        ("1 week", 604800),
        ("3 mins 4 sec", 184),
        ("1:00:30", 3630),
        ("1.5h", 5400),
        ("2 hrs 20 min", 8400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    """Human durations as GitLab reads them."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "10 parsecs", "h", "1h x"])
def test_bad_durations(text: str) -> None:
    """Unreadable durations raise ValueError."""
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256M", 256 * 1024**2),
        ("512Mi", 512 * 1024**2),
        ("1G", 1024**3),
        ("1Gi", 1024**3),
        ("2GB", 2 * 1024**3),
        ("64k", 65536),
        ("100", 100),
        ("1.5G", 3 * 1024**3 // 2),
    ],
)
def test_sizes(text: str, size: int) -> None:
    """Sizes use binary multiples, as sandpit exec --memory does."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_size, "lots"),
        (parse_size, "0"),
        (parse_size, "-1G"),
        (parse_cpus, "0"),
        (parse_cpus, "-1"),
        (parse_cpus, "one"),
        (parse_pids, "0"),
        (parse_pids, "1.5"),
        (parse_pids, "²"),
    ],
)
def test_bad_quantities(parse: object, text: str) -> None:
    """Invalid sizes, cpus and pids raise ValueError."""
    assert callable(parse)
    with pytest.raises(ValueError):
        parse(text)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.md", "README.md", True),
        ("*.md", "docs/a.md", False),
        ("docs/**/*", "docs/a/b.md", True),
        ("**/*.py", "x.py", True),
        ("**/*.py", "a/b/x.py", True),
        ("src/{a,b}/*.c", "src/b/x.c", True),
        ("src/{a,b}/*.c", "src/c/x.c", False),
        ("file?.txt", "file1.txt", True),
        ("[!a]*", "b", True),
        ("/Dockerfile", "Dockerfile", True),
        (".gitlab-ci.yml", ".gitlab-ci.yml", True),
        ("[", "[", True),
    ],
)
def test_globs(pattern: str, path: str, expected: bool) -> None:
    """changes/exists globs follow Ruby fnmatch with PATHNAME|DOTMATCH|EXTGLOB."""
    assert glob_matches(pattern, path) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("$A-${B}", "a-b"), ("$$A", "$A"), ("$NOPE.", "."), ("no vars", "no vars"), ("$A$B", "ab"), ("$", "$")],
)
def test_expand(text: str, expected: str) -> None:
    """$VAR/${VAR} expansion: $$ escapes, undefined is empty."""
    assert expand(text, {"A": "a", "B": "b"}) == expected


def test_resolve_variables_recursive_and_cycles() -> None:
    """Variables expand through each other; a cycle is left as written; expand: false is raw."""
    resolved = resolve_variables(
        {
            "A": ("$B", True),
            "B": ("$C!", True),
            "C": ("c", True),
            "X": ("$Y", True),
            "Y": ("$X", True),
            "R": ("$A", False),
        }
    )
    assert (resolved["A"], resolved["R"]) == ("c!", "$A")
    assert "$" in resolved["X"]


def test_slug() -> None:
    """CI_COMMIT_REF_SLUG rules: lowercase, dashes, 63 characters, no edge dashes."""
    assert slug("Feature/ABC_1") == "feature-abc-1" and len(slug("x" * 100)) == 63 and slug("-a-") == "a"


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("b: &x {k: 1}\na:\n  <<: *x\n  k: 2\n", {"k": 2}),
        ("b: &x {k: 1}\na:\n  k: 2\n  <<: *x\n", {"k": 1}),  # Psych: a later merge overwrites
        ("p: &p {k: 1}\nq: &q {k: 2, m: 3}\na:\n  <<: [*p, *q]\n", {"k": 1, "m": 3}),
        ("p: &p {k: 1}\nq: &q {m: 3}\na:\n  <<: *p\n  <<: *q\n", {"k": 1, "m": 3}),
        ("a: {k: yes, n: null, f: 1.50}\n", {"k": True, "n": None, "f": 1.5}),
    ],
)
def test_yaml_merge_keys(text: str, check: dict[str, object]) -> None:
    """Merge keys behave as in Psych (GitLab's YAML reader), repeated `<<` included."""
    tree = parse_yaml(text, "ci.yml", ProblemSink())
    assert isinstance(tree, YMap)
    node = tree.get("a")
    assert isinstance(node, YMap)
    values = {key: value.value for key, value in node.items() if isinstance(value, YScalar)}
    assert values == check


@pytest.mark.parametrize(
    ("text", "code", "line", "col"),
    [
        ("a: [1, 2\n", "yaml-syntax", 2, 1),
        ("- a\n- b\n", None, 0, 0),
        ("a: !custom x\n", "yaml-tag", 1, 4),
        ("a: &a [*a]\n", "yaml-structure", 1, 0),
        ("x: 1\n---\ny: 2\n", "yaml-structure", 3, 1),
    ],
)
def test_yaml_problems(text: str, code: str | None, line: int, col: int) -> None:
    """YAML problems come with file:line:col."""
    sink = ProblemSink()
    parse_yaml(text, "ci.yml", sink)
    if code is None:
        assert not sink.problems()
        return
    problem = sink.problems()[0]
    assert problem.code == code and problem.loc.line == line and (col == 0 or problem.loc.col == col)


def test_alias_bomb_is_refused() -> None:
    """Exponential alias expansion is refused instead of walked."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    sink = ProblemSink()
    assert parse_yaml("\n".join(lines), "ci.yml", sink) is None
    assert [p.code for p in sink.problems()] == ["yaml-too-large"]


def test_spec_header_document_is_skipped() -> None:
    """A `spec:` header before `---` is not part of the pipeline."""
    tree = parse_yaml("spec:\n  inputs: {}\n---\njob: {script: [x]}\n", "ci.yml", ProblemSink())
    assert isinstance(tree, YMap) and list(tree.entries) == ["job"]


# --- characters and names no run can hold; problems that are not there -----------------------


@pytest.mark.parametrize(
    ("text", "code", "line", "col", "fragment"),
    [
        ('"build\\0": {script: [x]}\n', "invalid-character", 1, 1, "U+0000 (NUL)"),
        ('"build\\e[2J": {script: [x]}\n', "invalid-character", 1, 1, "U+001B (ESC)"),
        ('t:\n  script: [x]\n  variables: {"A\\x01": v}\n', "invalid-character", 3, 15, "U+0001"),
        ('t:\n  script: [x]\n  variables: {A: "v\\0"}\n', "invalid-character", 3, 18, "U+0000 (NUL)"),
        ('t:\n  script: [x]\n  variables: {A: "v\\x1b"}\n', "invalid-character", 3, 18, "variable A holds"),
        ('t: {script: ["echo \\0"]}\n', "invalid-character", 1, 14, "U+0000 (NUL)"),
        ('t: {script: [x], stage: "te\\x7fst"}\n', "invalid-character", 1, 25, "U+007F (DEL)"),
        ('t: {script: [x], parallel: {matrix: [{V: ["a\\x07"]}]}}\n', "invalid-character", 1, 1, "job name holds"),
        ("x" * 256 + ": {script: [x]}\n", "name-too-long", 1, 1, "256 characters long; at most 255"),
        ("x" * 1100 + ":\n  script: [x]\n", "name-too-long", 1, 1, "1100 characters long"),
        ("a:\n  script: [x]\n" + "x" * 2000 + ":\n  script: [y]\n", "name-too-long", 3, 1, "YAML reads at most 1024"),
        ('"' + "q" * 1500 + '": {script: [x]}\n', "name-too-long", 1, 1, "1500 characters long"),
        ("t: {script: [x], parallel: {matrix: [{V: [" + "v" * 260 + "]}]}}\n", "name-too-long", 1, 1, "job name"),
        ("t: {script: [x], stage: " + "s" * 300 + "}\n", "name-too-long", 1, 25, "stage name"),
    ],
)
def test_unstorable_names_and_values(text: str, code: str, line: int, col: int, fragment: str) -> None:
    """NULs, control characters in names/keys/variables, and names too long for the store are
    refused with their location (they gave 500 on PostgreSQL, or a YAML syntax error)."""
    result = plan({"ci.yml": text})
    assert isinstance(result, Problems)
    found = [p for p in result.items if p.code == code]
    assert len(found) == 1, result.items  # reported once, not once per stage that meets it
    assert (found[0].loc.line, found[0].loc.col) == (line, col)
    assert fragment in found[0].message
    assert "yaml-syntax" not in result.codes()
    assert all(ch.isprintable() for p in result.items for ch in p.message)  # no raw control bytes


@pytest.mark.parametrize(
    "text",
    [
        't: {script: ["printf \'\\e[31mred\\e[0m\'"]}\n',  # ESC in a script line is legitimate
        't: {script: [x], variables: {CERT: "line1\\nline2\\tx"}}\n',  # newlines and TAB in a value
        "x" * 255 + ": {script: [x]}\n",  # exactly the limit
        "t: {script: [x], variables: {A: ünïcødé}}\n",
    ],
)
def test_characters_that_stay_allowed(text: str) -> None:
    """What a pipeline legitimately holds still plans."""
    assert not isinstance(plan({"ci.yml": text}), Problems)


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("t: {script: [true]}\n", ["invalid-type"]),
        ("t: {script: [make, false]}\n", ["invalid-type"]),
        ("t: {script: null}\n", ["invalid-type"]),
        ("t: {script: {a: b}}\n", ["invalid-type"]),
        ("t: {script: []}\n", ["missing-script"]),
        ("t: {script: [[]]}\n", ["missing-script"]),
        ("t: {stage: test}\n", ["missing-script"]),
    ],
)
def test_script_type_errors_do_not_also_say_missing_script(text: str, codes: list[str]) -> None:
    """`script: [true]` is a type error only; `missing-script` is for a script that is absent or empty."""
    result = plan({"ci.yml": text})
    assert isinstance(result, Problems)
    assert sorted(result.codes()) == codes
