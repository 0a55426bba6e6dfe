"""``record``: the part of ``dataclasses`` the exec path uses, without its import cost.

``import dataclasses`` pulls in ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``): about 15 ms
on these machines, a fifth of a whole ``sandpit exec``. The value classes of that path (settings,
sandbox request, job result, ...) are declared with :func:`record` instead. For type checkers
``record``, ``field`` and ``replace`` *are* the ``dataclasses`` ones, so mypy checks them as
dataclasses; at run time this module builds ``__init__``, ``__repr__``, ``__eq__`` and, for frozen
records, ``__hash__`` and a ``__setattr__`` that refuses.

Supported: fields with defaults or ``field(default_factory=...)`` (keyword ``default=`` too),
``frozen=True``, ``ClassVar`` annotations (skipped), subclasses of records (fields inherited in
order). Not supported: ``__post_init__``, ``InitVar``, ``kw_only``, ``slots``, ``order``.

>>> @record(frozen=True)
... class Point:
...     x: int
...     y: int = 0
>>> p = Point(1)
>>> p, p == Point(1, 0), replace(p, y=2)
(Point(x=1, y=0), True, Point(x=1, y=2))
>>> p.x = 3
Traceback (most recent call last):
...
pipelines.record.FrozenRecordError: cannot assign to field 'x' of a frozen Point
"""

from __future__ import annotations

__all__ = ["FrozenRecordError", "field", "record", "replace"]

TYPE_CHECKING = False  # typing costs ms on exec's start-up path (see worker/__init__.py)

if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError as FrozenRecordError
    from dataclasses import dataclass as record
    from dataclasses import field, replace
else:
    _MISSING = object()

    class FrozenRecordError(AttributeError):
        pass

    class _Field:
        __slots__ = ("default", "default_factory")

        def __init__(self, default: object, default_factory: object) -> None:
            self.default = default
            self.default_factory = default_factory

    def field(*, default=_MISSING, default_factory=_MISSING):
        return _Field(default, default_factory)

    def record(cls=None, /, *, frozen=False):
        def wrap(klass):
            return _build(klass, frozen)

        return wrap if cls is None else wrap(cls)

    def replace(obj, /, **changes):
        values = {name: getattr(obj, name) for name in obj.__record_fields__}
        values.update(changes)
        return type(obj)(**values)

    def _build(cls, frozen):
        fields: dict[str, object] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "__record_defaults__", {}))
        # not inspect.get_annotations: importing inspect is the cost this module avoids
        for name, hint in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if str(hint).startswith(("ClassVar", "typing.ClassVar")):
                continue
            fields[name] = cls.__dict__.get(name, _MISSING)
        cls.__record_defaults__ = dict(fields)
        cls.__record_fields__ = tuple(fields)
        names = cls.__record_fields__
        required = [name for name, default in fields.items() if default is _MISSING]
        defaults: dict[str, object] = {}
        factories: dict[str, object] = {}
        for name, default in fields.items():
            if isinstance(default, _Field):
                if default.default_factory is not _MISSING:
                    factories[name] = default.default_factory
                    if name in cls.__dict__:  # the class attribute must not stand in for a value
                        delattr(cls, name)
                    continue
                default = default.default
                setattr(cls, name, default)
            if default is not _MISSING:
                defaults[name] = default
        store = object.__setattr__ if frozen else setattr

        # one generic __init__ (no exec'd source: compiling it costs ~0.3 ms per class at import)
        def __init__(self, *args, **kwargs):
            if len(args) > len(names):
                raise TypeError(f"{type(self).__name__}() takes {len(names)} positional arguments "
                                f"but {len(args)} were given")
            values = dict(zip(names, args, strict=False))
            for key, value in kwargs.items():
                if key not in fields:
                    raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {key!r}")
                if key in values:
                    raise TypeError(f"{type(self).__name__}() got multiple values for argument {key!r}")
                values[key] = value
            for name in names:
                if name in values:
                    store(self, name, values[name])
                elif name in defaults:
                    store(self, name, defaults[name])
                elif name in factories:
                    store(self, name, factories[name]())
                else:
                    missing = [n for n in required if n not in values]
                    raise TypeError(f"{type(self).__name__}() missing required argument(s): {', '.join(missing)}")

        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__

        def __repr__(self):
            inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
            return f"{type(self).__qualname__}({inner})"

        def __eq__(self, other):
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, name) == getattr(other, name) for name in names)

        cls.__repr__ = __repr__
        cls.__eq__ = __eq__
        if frozen:
            def __setattr__(self, name, value):
                raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

            def __delattr__(self, name):
                raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

            def __hash__(self):
                return hash(tuple(getattr(self, name) for name in names))

            cls.__setattr__ = __setattr__
            cls.__delattr__ = __delattr__
            cls.__hash__ = __hash__
        else:
            cls.__hash__ = None
        return cls
