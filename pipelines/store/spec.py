"""A concrete planned job as JSON and back, so a worker rebuilds exactly what to run (pure).

:func:`job_to_spec` is the planner's :class:`Job` as JSON; :func:`job_from_spec` turns it back
into an equal frozen value. Conversion is driven by the dataclasses' type hints, so a field
added to the language model needs no change here.

A run's job rows hold a *stored* spec (:func:`stored_spec_json`), which leaves out what the run
holds once for all its jobs: measured on a 1,000-job run, the pipeline-wide variables every job
starts with (the predefined ``CI_*`` ones: ≈ 1.3 KB of a job's ≈ 1.7 KB) and, for a job that
follows stage order, the names of every job of the earlier stages (O(N²) names per run). Both
are put back by :func:`restore_spec` from the run's ``job_variables`` and the names of its first
jobs; :func:`job_from_spec` refuses a stored spec that was not restored, so no reader can get a
job with its variables missing.

>>> from pipelines.language.model import Loc
>>> job = Job(name="lint", stage="test", loc=Loc("ci.yml", 1, 1), script=("ruff check",),
...           variables=(("CI", "true"), ("CI_JOB_NAME", "lint")), depends_on=("build",))
>>> job_from_spec(job_to_spec(job)) == job
True
>>> stored = json.loads(stored_spec_json(job, shared_variables=1, leading_jobs=True))
>>> stored["variables"], stored["depends_on"], leading_jobs(stored)
([['CI_JOB_NAME', 'lint']], 1, 1)
>>> job_from_spec(restore_spec(stored, [["CI", "true"]], ["build"])) == job
True
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any, Union

from pipelines.language.model import Job

JsonValue = Any  # a value json.dumps accepts


def job_to_spec(job: Job) -> dict[str, JsonValue]:
    """The job as plain JSON data (tuples become lists, dataclasses become objects).

    Written by the C JSON encoder, which calls back only for dataclasses, and read back: a new
    run dumps every job, and walking ≈ 100 values per job in Python was most of the cost of
    creating a 1,000-job run (bench/bench_store.py).
    """
    spec = json.loads(job_to_spec_json(job))
    assert isinstance(spec, dict)
    return spec


def job_to_spec_json(job: Job) -> str:
    """:func:`job_to_spec` as JSON text, for a writer that stores it as it is (a new run's rows:
    decoding and encoding again cost as much as the rest of creating the run)."""
    return _encode(job)


def _as_fields(value: object) -> dict[str, JsonValue]:
    names = _field_names(type(value))  # type: ignore[arg-type]  # a type is hashable
    if names is None:
        raise TypeError(f"a job spec holds only JSON values and dataclasses, not {type(value).__name__}")
    return {name: getattr(value, name) for name in names}


_encode = json.JSONEncoder(default=_as_fields, separators=(",", ":"), check_circular=False).encode


def job_from_spec(spec: dict[str, JsonValue]) -> Job:
    """The job :func:`job_to_spec` wrote; unknown keys (from a newer writer) are ignored.

    Rebuilding walks the type hints of every field (≈ 1.4 ms); a worker does it three times per
    job (claim, run, finish), so results are cached by the spec's canonical JSON (jobs are frozen).
    A stored spec (:func:`stored_spec_json`) is refused: :func:`restore_spec` it first.
    """
    if _SHARED in spec or isinstance(spec.get("depends_on"), int):
        raise ValueError("a stored job spec lacks what its run holds for it: restore_spec it first")
    return _job_from_json(json.dumps(spec, sort_keys=True, separators=(",", ":")))


_SHARED = "shared_variables"  # a stored spec's key: how many of the run's job_variables come first


def shared_variables(jobs: Sequence[Job]) -> tuple[tuple[str, str], ...]:
    """The variables every one of ``jobs`` starts with, in order (their longest common prefix):
    what a run stores once as its ``job_variables``.

    >>> from pipelines.language.model import Loc
    >>> a = Job("a", "t", Loc("f", 1, 1), variables=(("CI", "true"), ("CI_JOB_NAME", "a")))
    >>> b = Job("b", "t", Loc("f", 2, 1), variables=(("CI", "true"), ("CI_JOB_NAME", "b")))
    >>> shared_variables([a, b])
    (('CI', 'true'),)
    """
    if not jobs:
        return ()
    shared = jobs[0].variables
    for job in jobs[1:]:
        own = job.variables
        if own[: len(shared)] == shared:
            continue
        common = 0
        for mine, theirs in zip(own, shared, strict=False):
            if mine != theirs:
                break
            common += 1
        shared = shared[:common]
    return shared


def stored_spec_json(job: Job, *, shared_variables: int, leading_jobs: bool) -> str:
    """The job as a run's row stores it: :func:`job_to_spec_json` without its first
    ``shared_variables`` variables (the run's ``job_variables``), without the fields that hold
    their default (most of them: no ``sandbox``, ``retry`` or ``artifacts`` of its own; a reader
    gets the default back) and, when ``leading_jobs``, with ``depends_on`` as a count: its
    predecessors are the run's first jobs in plan order (a job that follows stage order: every
    job of the earlier stages)."""
    fields: dict[str, object] = {}
    for name, default in _stored_defaults():
        value = getattr(job, name)
        if value is not default and value != default:
            fields[name] = value
    if shared_variables:
        tail = job.variables[shared_variables:]
        if tail:
            fields["variables"] = tail
        else:
            fields.pop("variables", None)
        fields[_SHARED] = shared_variables
    if leading_jobs:
        fields["depends_on"] = len(job.depends_on)
    return _encode(fields)


@cache
def _stored_defaults() -> tuple[tuple[str, object], ...]:
    """Every field of a job with its default (a sentinel for the fields that have none)."""
    return tuple((f.name, f.default if f.default is not dataclasses.MISSING else _NO_DEFAULT)
                 for f in dataclasses.fields(Job))


_NO_DEFAULT = object()


def leading_jobs(stored: dict[str, JsonValue]) -> int:
    """How many of the run's first job names :func:`restore_spec` needs for ``stored`` (0: none)."""
    count = stored.get("depends_on")
    return count if isinstance(count, int) else 0


def restore_spec(
    stored: dict[str, JsonValue], job_variables: Sequence[Sequence[str]], first_names: Sequence[str]
) -> dict[str, JsonValue]:
    """The whole spec (:func:`job_to_spec`'s) of a stored one (:func:`stored_spec_json`), given
    the run's ``job_variables`` and the names of (at least) its first :func:`leading_jobs` jobs
    in plan order. A spec stored whole (every run from before the stored form) comes back equal."""
    spec = dict(stored)
    shared = spec.pop(_SHARED, None)
    for name, text in _default_json().items():
        if name not in spec:
            spec[name] = json.loads(text)
    if shared is not None:
        if len(job_variables) < shared:
            raise ValueError(f"the run holds {len(job_variables)} job variables; its job's spec needs {shared}")
        spec["variables"] = [list(pair) for pair in job_variables[:shared]] + list(spec["variables"] or ())
    count = stored.get("depends_on")
    if isinstance(count, int):
        if len(first_names) < count:
            raise ValueError(f"the run's first {count} job names are needed; {len(first_names)} given")
        spec["depends_on"] = list(first_names[:count])
    return spec


@cache
def _default_json() -> dict[str, str]:
    """The JSON of every field's default (the fields a stored spec leaves out)."""
    return {name: _encode(default) for name, default in _stored_defaults() if default is not _NO_DEFAULT}


def spec_field(stored: dict[str, JsonValue], name: str) -> object:
    """One field of the job a spec (stored or whole) describes, as the planner made it: what a
    transition needs of the job (its ``retry``, ``allow_failure``, ``artifacts``, timeout) without
    rebuilding all of it. Not for the fields a stored spec leaves out (``variables``,
    ``depends_on``): :func:`restore_spec` gives those.

    >>> spec_field({"timeout_seconds": 600}, "timeout_seconds"), spec_field({}, "when")
    (600, 'on_success')
    """
    if name in ("variables", "depends_on"):
        raise ValueError(f"{name} of a stored spec is restored with restore_spec, not read alone")
    if name not in stored:
        return _defaults()[name]
    return _load(_hints(Job)[name], stored[name])


@cache
def _defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(Job) if f.default is not dataclasses.MISSING}


@cache
def _job_fields() -> tuple[str, ...]:
    names = _field_names(Job)
    assert names is not None
    return names


@lru_cache(maxsize=256)
def _job_from_json(text: str) -> Job:
    job = _load(Job, json.loads(text))
    assert isinstance(job, Job)
    return job


@cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    """The fields of a dataclass type, None for any other type (asked once per type)."""
    if dataclasses.is_dataclass(kind):
        return tuple(f.name for f in dataclasses.fields(kind))
    return None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _load(hint: Any, data: JsonValue) -> object:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if data is None:
            return None
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _load(options[0], data)
    if origin is typing.Literal:
        return data
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_load(args[0], item) for item in data)
        return tuple(_load(arg, item) for arg, item in zip(args, data, strict=True))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        names = {f.name for f in dataclasses.fields(hint) if f.init}
        return hint(**{k: _load(hints[k], v) for k, v in data.items() if k in names})
    return data
