"""The start-up heap settled once (pipelines/heap.py), and who settles it."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

import api.app
from api.app import create_app
from api.settings import ApiSettings
from pipelines import heap
from pipelines.retention import RetentionSettings


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settled_objects_leave_the_collector_and_later_garbage_is_still_freed() -> None:
    kept = _Cycle()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 1000  # this process's modules and classes at least
        assert not any(obj is kept for obj in gc.get_objects())  # no longer examined
        later = _Cycle()
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None  # a cycle made after settling is collected as ever
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())


class _Quiet:
    def publish(self, *_a: object, **_k: object) -> None:
        raise AssertionError("nothing is published here")

    def close(self) -> None:
        pass


def _lifespan(tmp_path: Path, **kwargs: bool) -> None:
    settings = ApiSettings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", redis_url="redis://127.0.0.1:1/0",
                           state_dir=tmp_path, retention=RetentionSettings(every_s=0))
    app = create_app(settings, publisher=_Quiet(), statuses=False, **kwargs)  # type: ignore[arg-type]

    async def cycle() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(cycle())


@pytest.mark.parametrize("settle", [True, False])
def test_only_an_app_that_owns_its_process_settles_the_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            settle: bool) -> None:
    """The server's app settles once its services are up; an app built in a process that builds
    others (every test's) never does, or each one's objects would stay for good."""
    calls: list[int] = []
    monkeypatch.setattr(api.app, "settle_heap", lambda: calls.append(1))
    if settle:
        _lifespan(tmp_path, settle=True)
    else:
        _lifespan(tmp_path)  # the default
    assert calls == ([1] if settle else [])


def test_the_server_and_the_worker_settle_their_heaps(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import signals

    import api.server
    from worker.service import celery_app

    made: list[dict[str, object]] = []
    monkeypatch.setattr(api.server, "migrate", lambda _url: None)
    monkeypatch.setattr(api.server, "create_app", lambda _s, **kw: made.append(kw) or object())
    monkeypatch.setattr(api.server.uvicorn.Server, "run", lambda self: None)
    api.server.serve(ApiSettings(database_url="postgresql://nowhere/x"))
    assert made == [{"settle": True}]
    receivers = [ref() if isinstance(ref, weakref.ReferenceType) else ref
                 for _key, ref in signals.worker_ready.receivers]
    assert celery_app._settle_heap in receivers
