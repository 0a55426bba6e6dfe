"""``parallel: N`` and ``parallel: matrix`` — reading them and naming the jobs as GitLab does (pure).

``parallel: 3`` makes ``test 1/3``, ``test 2/3``, ``test 3/3``. Each matrix entry is the product of
its variables' values, in the order the keys are written, and a job is named by its values:
``test: [3.11, debian]``. GitLab allows at most 200 jobs from one ``parallel``.

>>> from pipelines.language.yamltree import parse_yaml
>>> sink = ProblemSink()
>>> node = parse_yaml("matrix: [{PY: ['3.11', '3.12'], OS: debian}]", "ci", sink)
>>> total, matrix = read_parallel(node, sink, needs=False)  # type: ignore[arg-type]
>>> [matrix_name("test", combo) for combo in matrix or ()]
['test: [3.11, debian]', 'test: [3.12, debian]']
"""

from __future__ import annotations

import itertools
import re

from pipelines.language.problems import ProblemSink
from pipelines.language.reader import read_int, read_map, read_str, wrong_type
from pipelines.language.schema import check_keys
from pipelines.language.yamltree import YNode, YScalar, YSeq

Combo = tuple[tuple[str, str], ...]
_MAX_JOBS = 200
# matrix identifiers may hold '-' (`$[[ matrix.MY-VAR ]]`), as GitLab's do
_MATRIX_REF = re.compile(r"\$\[\[\s*matrix\.([A-Za-z_][A-Za-z0-9_-]*)\s*\]\]")


def read_parallel(
    node: YNode, sink: ProblemSink, *, needs: bool
) -> tuple[int | None, tuple[Combo, ...] | None]:
    """(N, None) for ``parallel: N``; (None, combinations) for ``parallel: matrix``."""
    if isinstance(node, YScalar) and not needs:
        total = read_int(node, "parallel", sink, 1, _MAX_JOBS)
        # GitLab names even a single instance `job 1/1` and sets CI_NODE_INDEX=1
        return (total if total else None), None
    mapping = read_map(node, "parallel", sink, "parallel: {matrix: [{PY: ['3.11', '3.12']}]}")
    if mapping is None:
        return None, None
    check_keys(mapping, "parallel", sink)
    matrix_node = mapping.get("matrix")
    if matrix_node is None:
        sink.error(
            mapping.loc, "invalid-parallel", "parallel needs `matrix:`", "write parallel: {matrix: [...]}"
        )
        return None, None
    if not isinstance(matrix_node, YSeq) or not matrix_node.items:
        wrong_type(
            matrix_node, "parallel:matrix", "a non-empty list of mappings", sink, "matrix: [{PY: ['3.12']}]"
        )
        return None, None
    combos: list[Combo] = []
    for entry in matrix_node.items:
        combos.extend(_entry_combos(entry, sink))
    if not needs and len(combos) > _MAX_JOBS:
        sink.error(
            matrix_node.loc,
            "invalid-parallel",
            f"parallel:matrix makes {len(combos)} jobs, over 200",
            "split the matrix over several jobs",
        )
        return None, None
    return None, tuple(combos)


def _entry_combos(entry: YNode, sink: ProblemSink) -> list[Combo]:
    mapping = read_map(entry, "a parallel:matrix entry", sink, "- {PY: ['3.11', '3.12'], OS: debian}")
    if mapping is None or not mapping.entries:
        return []
    names: list[str] = []
    choices: list[list[str]] = []
    for name, value in mapping.items():
        values: list[str] = []
        for item in value.items if isinstance(value, YSeq) else (value,):
            text = read_str(item, f"parallel:matrix:{name}", sink)
            if text is not None:
                values.append(text)
        if not values:
            sink.error(
                value.loc, "invalid-parallel", f"matrix variable {name} has no values", f"give {name} a value"
            )
            return []
        names.append(name)
        choices.append(values)
    return [tuple(zip(names, picked, strict=True)) for picked in itertools.product(*choices)]


def matrix_name(base: str, combo: Combo) -> str:
    return f"{base}: [{', '.join(value for _name, value in combo)}]"


def parallel_name(base: str, index: int, total: int) -> str:
    return f"{base} {index}/{total}"


def substitute_matrix(combo: Combo, own: Combo) -> Combo:
    """A needs:parallel:matrix filter with ``$[[ matrix.X ]]`` taken from the needing job's values."""
    values = dict(own)
    return tuple(
        (name, _MATRIX_REF.sub(lambda m: values.get(m.group(1), ""), value)) for name, value in combo
    )
