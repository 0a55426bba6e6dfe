"""The pipeline graph's layout: stages as columns, jobs as fixed-size boxes, ``needs`` as curves (pure).

The boxes are HTML (links, play buttons, readable text) laid out by the stylesheet at fixed sizes
(``.graph`` in static/ui.css uses the same numbers as here), and the edges an SVG drawn behind
them from the same numbers, so the page needs neither script nor inline styles (the CSP forbids
both) to draw GitLab's needs graph.

>>> layout = graph_layout(["build", "test"], [("b", "build", ()), ("t", "test", ("b",))])
>>> layout.width, layout.height, layout.edges[0].path
(448, 72, 'M200,50 C224,50 224,50 248,50')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BOX_W = 200
BOX_H = 44
COL_GAP = 48
ROW_GAP = 12
HEAD_H = 28


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    path: str


@dataclass(frozen=True, slots=True)
class Layout:
    columns: tuple[tuple[str, tuple[str, ...]], ...]  # (stage, job names in order)
    edges: tuple[Edge, ...]
    width: int
    height: int


def graph_layout(stages: Sequence[str], jobs: Sequence[tuple[str, str, Sequence[str]]]) -> Layout:
    """Columns for ``stages`` (those without jobs left out) and an edge per ``needs`` entry of
    ``jobs`` (``(name, stage, needs)``) whose target is shown."""
    by_stage: dict[str, list[str]] = {stage: [] for stage in stages}
    for name, stage, _ in jobs:
        by_stage.setdefault(stage, []).append(name)
    columns = tuple((stage, tuple(names)) for stage, names in by_stage.items() if names)
    where: dict[str, tuple[int, int]] = {}
    for col, (_, names) in enumerate(columns):
        for row, name in enumerate(names):
            where[name] = (col, row)
    edges = []
    for name, _, needs in jobs:
        for need in needs:
            if need in where and name in where:
                edges.append(Edge(need, name, _curve(where[need], where[name])))
    rows = max((len(names) for _, names in columns), default=0)
    width = max(0, len(columns) * (BOX_W + COL_GAP) - COL_GAP)
    height = HEAD_H + max(0, rows * (BOX_H + ROW_GAP) - ROW_GAP)
    return Layout(columns, tuple(edges), width, height)


def _curve(source: tuple[int, int], target: tuple[int, int]) -> str:
    x1 = source[0] * (BOX_W + COL_GAP) + BOX_W
    y1 = HEAD_H + source[1] * (BOX_H + ROW_GAP) + BOX_H // 2
    x2 = target[0] * (BOX_W + COL_GAP)
    y2 = HEAD_H + target[1] * (BOX_H + ROW_GAP) + BOX_H // 2
    mid = (x1 + x2) // 2
    return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
