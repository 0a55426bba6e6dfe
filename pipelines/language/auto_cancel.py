"""``workflow:auto_cancel`` and ``workflow:rules:auto_cancel``: reading and merging (pure).

GitLab keeps two settings per pipeline (docs.gitlab.com, CI/CD YAML reference,
``workflow:auto_cancel``): ``on_new_commit`` (``conservative``, the default; ``interruptible``;
``none``) and ``on_job_failure`` (``none``, the default; ``all``). The deciding workflow rule's
``auto_cancel`` is merged over the workflow's own key by key, as GitLab's pipeline chain does
(``auto_cancel_from_config.merge(auto_cancel_from_rules)``), so a rule may change one setting
and keep the other.

>>> sink = ProblemSink()
>>> given = read_auto_cancel(YMap({"on_new_commit": YItem(L, YScalar("interruptible", L))}, L), "workflow", sink)
>>> merge_auto_cancel(given, ()), sink.problems()
(AutoCancel(on_new_commit='interruptible', on_job_failure='none'), ())
"""

from __future__ import annotations

from typing import cast

from pipelines.language.model import ON_JOB_FAILURE, ON_NEW_COMMIT, AutoCancel, OnJobFailure, OnNewCommit
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.reader import read_map, wrong_type
from pipelines.language.schema import check_keys
from pipelines.language.yamltree import YItem, YMap, YNode, YScalar  # noqa: F401 - YItem, YMap: the doctest

L = Loc("<doc>", 1, 1)
#: the settings a pipeline may give, and the values each accepts
CHOICES: dict[str, tuple[str, ...]] = {"on_new_commit": ON_NEW_COMMIT, "on_job_failure": ON_JOB_FAILURE}
#: what is given: (setting, value) pairs, only those written
Given = tuple[tuple[str, str], ...]


def read_auto_cancel(node: YNode, where: str, sink: ProblemSink) -> Given:
    """The settings ``node`` (an ``auto_cancel:`` mapping in ``where``) gives; every bad key or
    value is reported at its place and left out."""
    what = f"{where}:auto_cancel"
    mapping = read_map(node, what, sink, "auto_cancel: {on_new_commit: interruptible}")
    if mapping is None:
        return ()
    check_keys(mapping, "auto_cancel", sink)
    given: list[tuple[str, str]] = []
    for key, value in mapping.items():
        choices = CHOICES.get(key)
        if choices is None:
            continue  # check_keys reported it
        if not (isinstance(value, YScalar) and isinstance(value.value, str)):
            wrong_type(value, f"{what}:{key}", "a string", sink, f"{key}: {choices[0]}")
            continue
        text = value.value
        if text not in choices:
            sink.error(value.loc, "invalid-value", f"`{key}: {text}` is not allowed in {what}",
                       f"use one of: {', '.join(choices)}")
            continue
        given.append((key, text))
    return tuple(given)


def merge_auto_cancel(workflow: Given, rule: Given) -> AutoCancel:
    """The run's settings: GitLab's defaults, then the workflow's, then the deciding rule's.

    >>> merge_auto_cancel((("on_new_commit", "none"), ("on_job_failure", "all")), (("on_new_commit", "interruptible"),))
    AutoCancel(on_new_commit='interruptible', on_job_failure='all')
    """
    settings = {**dict(workflow), **dict(rule)}
    return AutoCancel(
        on_new_commit=cast(OnNewCommit, settings.get("on_new_commit", "conservative")),
        on_job_failure=cast(OnJobFailure, settings.get("on_job_failure", "none")),
    )
