"""A concrete planned job as JSON and back, so a worker rebuilds exactly what to run (pure).

The job row's ``spec`` column holds :func:`job_to_spec` of the planner's :class:`Job`;
:func:`job_from_spec` turns it back into an equal frozen value. Conversion is driven by the
dataclasses' type hints, so a field added to the language model needs no change here.

>>> from pipelines.language.model import Loc
>>> job = Job(name="lint", stage="test", loc=Loc("ci.yml", 1, 1), script=("ruff check",))
>>> job_from_spec(job_to_spec(job)) == job
True
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
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
    """
    return _job_from_json(json.dumps(spec, sort_keys=True, separators=(",", ":")))


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
