"""``pipelines.record`` behaves like the dataclasses it stands in for (on the exec path)."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.job_record import JobRecord, JobUsage, Status
from pipelines.record import FrozenRecordError, field, record, replace
from worker.sandbox.request import Limits, SandboxRequest
from worker.settings import Settings


@record(frozen=True)
class Frozen:
    a: int
    b: str = "x"
    c: list[int] = field(default_factory=list)
    d: int = field(default=4)


@record
class Mutable:
    a: int
    b: dict[str, int] = field(default_factory=dict)


@record(frozen=True)
class Child(Frozen):
    e: int = 5


def test_init_defaults_and_factories() -> None:
    one, two = Frozen(1), Frozen(a=1)
    assert (one.a, one.b, one.c, one.d) == (1, "x", [], 4)
    assert one == two and hash(one.__class__(1, "x", (), 4)) == hash(Frozen(1, "x", (), 4))  # type: ignore[arg-type]
    assert one.c is not two.c  # a fresh list per instance
    assert Frozen(1, "y", [2], 3) == Frozen(a=1, b="y", c=[2], d=3)
    assert Frozen(1) != Frozen(2) and Frozen(1) != (1, "x", [], 4)


def test_repr_names_every_field() -> None:
    assert repr(Frozen(1)) == "Frozen(a=1, b='x', c=[], d=4)"


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "missing required argument(s): a"),
    ((1, "x", [], 4, 5), {}, "takes 4 positional arguments but 5 were given"),
    ((1,), {"a": 2}, "multiple values for argument 'a'"),
    ((1,), {"z": 2}, "unexpected keyword argument 'z'"),
])
def test_bad_arguments_are_type_errors(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Frozen(*args, **kwargs)


def test_frozen_refuses_assignment_and_deletion() -> None:
    f = Frozen(1)
    with pytest.raises(FrozenRecordError, match="cannot assign to field 'a' of a frozen Frozen"):
        f.a = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del f.b  # type: ignore[misc]
    assert f.a == 1


def test_mutable_records_assign_and_are_unhashable() -> None:
    m = Mutable(1)
    m.a = 3
    m.b["k"] = 1
    assert m == Mutable(3, {"k": 1})
    with pytest.raises(TypeError):
        hash(m)


def test_subclass_inherits_fields_in_order() -> None:
    c = Child(1, e=7)
    assert (c.a, c.b, c.d, c.e) == (1, "x", 4, 7)
    assert repr(c) == "Child(a=1, b='x', c=[], d=4, e=7)"


def test_replace_keeps_other_fields() -> None:
    req = SandboxRequest(argv=("true",), env=(("A", "1"),))
    changed = replace(req, network="egress")
    assert changed.network == "egress" and changed.env == req.env and req.network == "none"
    assert replace(Settings(), uid_slots=4).uid_slots == 4


def test_sandbox_values_match_their_dataclass_shape() -> None:
    """The exec path's values keep the fields, defaults and equality of the dataclasses they were."""
    assert Limits() == Limits() and Limits().memory_bytes == 256 * 1024 * 1024
    assert SandboxRequest(argv=("a",)).limits == Limits()
    result = JobRecord(name="j", status=Status.SUCCEEDED, reason=None)
    assert result.artifacts == () and result.usage == JobUsage()
    assert not dataclasses.is_dataclass(result)  # really the light record, not dataclasses
