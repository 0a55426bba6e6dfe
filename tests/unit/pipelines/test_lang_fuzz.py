"""Property: whatever text arrives, plan() returns a Plan or Problems and never raises."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problems

KEYS = [
    "script",
    "stage",
    "needs",
    "extends",
    "rules",
    "if",
    "when",
    "parallel",
    "matrix",
    "variables",
    "image",
    "artifacts",
    "cache",
    "retry",
    "timeout",
    "only",
    "except",
    "include",
    "local",
    "stages",
    "default",
    "allow_failure",
    "exit_codes",
    "dependencies",
    "sandbox",
    "memory",
    "job",
    "optional",
    ".t",
    "a",
    "b",
    "workflow",
    "inherit",
    "changes",
    "exists",
    "key",
    "files",
    "paths",
    "start_in",
    "services",
]
SCALARS = st.one_of(
    st.sampled_from(
        ["$CI == 'x'", "1h", "256M", "a", "b", ".t", "manual", "never", "[", "$A =~ /x(/", "", "**"]
    ),
    st.integers(-3, 300),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    ),
    max_leaves=30,
)
PIPELINES = st.dictionaries(
    st.sampled_from(["a", "b", ".t", "stages", "default", "variables", "include", "workflow", "c: [x]"]),
    TREES,
    max_size=5,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(text: str, inputs: PipelineInputs | None = None) -> None:
    result = plan({"ci.yml": text, "other.yml": text}, inputs)
    assert isinstance(result, Plan | Problems)
    if isinstance(result, Problems):
        assert result.errors and all(p.loc.line >= 1 for p in result.items)


@FUZZ
@given(PIPELINES)
def test_arbitrary_yaml_structures_never_raise(tree: dict[str, object]) -> None:
    """Arbitrary pipeline-shaped YAML plans or yields problems; it never raises."""
    _check(yaml.safe_dump(tree, sort_keys=False))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    """Arbitrary strings (mostly invalid YAML) give problems, never an exception."""
    _check(text)


@FUZZ
@given(st.text(alphabet="$ab=~!&|()/\"' n-ul", max_size=40))
def test_arbitrary_expressions_never_raise(expression: str) -> None:
    """Arbitrary rules:if expressions are parsed or reported; planning never raises."""
    _check(
        yaml.safe_dump({"t": {"script": ["x"], "rules": [{"if": expression}]}}),
        PipelineInputs(variables={"a": "b"}),
    )
