"""The job page and what hangs off it: the log (a screen of it, the live tail over SSE, the whole
download), artifacts (one file, or all as a zip), play, retry and cancel (entry points).

The live log reuses the API's log reader (:class:`api.logs.LogReader`, the same source choice and
resume ids as ``GET /api/v1/jobs/{id}/log``) behind the session cookie instead of a bearer token
(an ``EventSource`` cannot send one), and sends rendered operations (:mod:`api.ui.logview`) rather
than raw text, so escaping and colours are decided on the server only.

Artifacts are always downloads: ``Content-Disposition: attachment``, ``application/octet-stream``
and ``nosniff`` (see :mod:`api.ui.headers`), so an HTML file a job kept never renders as a page
of sandpit's origin.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine
from starlette.background import BackgroundTask

from api import artifacts, runs
from api.deps import EngineDep, PublisherDep, RedisDep, SettingsDep
from api.errors import BadRequest, Forbidden, NotFound
from api.logs import Cursor, Idle, LogEnd, LogEntry, LogReader, is_final, log_file, text_stream
from api.routes.jobs import play_now, retry_now
from api.settings import ApiSettings
from api.ui import csrf, reports
from api.ui.access import PREFIX, SignedInDep, UiDep, ViewerDep, may_read_logs, may_start
from api.ui.logsource import STREAM_ENTRIES, Window, file_window, is_entry_start, stream_window
from api.ui.logview import Op, assemble, line_html
from api.ui.sessions import Viewer
from pipelines.names import log_stream_key
from pipelines.store.db import read_scope
from pipelines.store.listing import JobDetail, job_detail
from pipelines.store.models import Artifact
from pipelines.store.transitions.retry import RETRYABLE_STATUSES

router = APIRouter(include_in_schema=False)
KEEPALIVE_S = 15.0
ZIP_MAX_BYTES = 2 * 1024**3


def _detail(engine: Engine, job_id: str) -> JobDetail:
    with read_scope(engine) as session:
        return job_detail(session, job_id)


def _readable(ui: Any, viewer: Viewer, detail: JobDetail) -> None:
    if not may_read_logs(ui.settings, viewer, detail.run.trust):
        raise Forbidden(f"the logs and artifacts of {detail.run.trust} runs are shown to signed-in "
                        f"{ui.settings.untrusted_logs}s only (SANDPIT_UI_UNTRUSTED_LOGS)")


async def _stream_window(redis: Any, job_id: str, final: bool) -> Window | None:
    """The live stream's entries as a window (None: Redis cannot be reached)."""
    key = log_stream_key(job_id)
    try:
        length = int(await redis.xlen(key))
        if length <= STREAM_ENTRIES:
            raw = await redis.xrange(key, count=STREAM_ENTRIES + 1)
            from_start = True
        else:
            raw = list(reversed(await redis.xrevrange(key, count=STREAM_ENTRIES)))
            from_start = False
    except (RedisError, OSError):
        return None
    entries = [(entry_id, fields.get("d", "")) for entry_id, fields in raw if not fields.get("eof")]
    ended = final or any(fields.get("eof") for _, fields in raw)
    return stream_window(entries, from_start=from_start, final=ended)


def _int(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 15:
        raise BadRequest(f"?{name}={text[:20]!r} is not a whole number")
    return int(text)


async def _window(settings: ApiSettings, redis: Any, detail: JobDetail, at: str | None, skip: str | None,
                  line: str | None) -> tuple[Window | None, str | None]:
    """The log view the page shows and a note when there is no log to show."""
    job_status = detail.line.status
    final = job_status in ("succeeded", "failed", "cancelled", "error", "skipped")
    file = None
    if final and detail.log_path:
        file = log_file(_LogPathOnly(detail.log_path), settings.state_dir)  # type: ignore[arg-type]
    if file is not None:
        if at == "end":
            return await to_thread.run_sync(lambda: file_window(file, tail=True)), None
        offset, skipped, number = _int(at, "at"), _int(skip, "skip") or 0, _int(line, "line")
        if offset is not None and not await to_thread.run_sync(is_entry_start, file, offset):
            raise BadRequest(f"?at={offset} is not where an entry of this log begins")
        return await to_thread.run_sync(lambda: file_window(file, at=offset, skip=skipped, line=number)), None
    if job_status in ("created", "manual", "skipped") and not detail.log_path:
        return None, "This job has not run, so it has no log."
    window = await _stream_window(redis, detail.line.id, final)
    if window is None:
        return None, "The live log store (Redis) cannot be reached; try again shortly."
    if final and not window.ops:
        return None, "This job's log is not kept any more (or it wrote nothing)."
    return window, None


class _LogPathOnly:
    """What :func:`api.logs.log_file` reads of a job."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path


@router.get(PREFIX + "/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str, request: Request, viewer: ViewerDep, ui: UiDep, engine: EngineDep,
                   settings: SettingsDep, redis: RedisDep, at: str | None = None, skip: str | None = None,
                   line: str | None = None) -> Response:
    detail = await to_thread.run_sync(_detail, engine, job_id)
    readable = may_read_logs(ui.settings, viewer, detail.run.trust)
    window, note = (await _window(settings, redis, detail, at, skip, line)) if readable else (None, None)
    report = await to_thread.run_sync(_report, settings, engine, detail) if readable else None
    live = None
    if window is not None and window.resume is not None and window.starts_at is None:
        live = {"after": window.resume.at, "skip": window.resume.skip, "line": window.resume.line,
                "anchors": int(window.anchors)}
    more = None
    if window is not None and window.resume is not None and window.starts_at is not None:
        more = {"at": window.resume.at, "skip": window.resume.skip, "line": window.resume.line}
    return ui.pages.render(request, "job.html", {
        "viewer": viewer, "job": detail.line, "detail": detail, "run": detail.run, "readable": readable,
        "window": window, "log_html": assemble(window.ops, anchors=window.anchors) if window else None,
        "note": note, "live": live, "more": more, "report": report, "spec": detail.spec,
        "sandbox": detail.spec.get("sandbox") or {}, "image": _image(detail.spec), "result": detail.result,
        "usage": detail.usage, "refresh": None, "may_start": may_start(viewer, detail.run.trust),
        "retryable": RETRYABLE_STATUSES})


def _image(spec: dict[str, Any]) -> str | None:
    image = spec.get("image")
    if isinstance(image, dict):
        return str(image.get("name") or "") or None
    return str(image) if image else None


def _report(settings: ApiSettings, engine: Engine, detail: JobDetail) -> reports.Report | None:
    recorded = reports.from_result(detail.result)
    patterns = reports.junit_patterns(detail.spec)
    if not patterns:
        return recorded
    paths = reports.matching_paths(patterns, [a.path for a in detail.artifacts])
    files: list[tuple[str, Path]] = []
    problems: list[str] = []
    with read_scope(engine) as session:
        for path in paths:
            try:
                files.append((path, artifacts.artifact_file(settings.artifacts_dir,
                                                            artifacts.find_artifact(session, detail.line.id, path))))
            except (NotFound, artifacts.ArtifactCorrupt) as exc:
                problems.append(f"{path}: {exc.message}")
    if recorded is not None and not files:
        return recorded  # the summary alone: the report files were not kept as artifacts
    report = reports.from_files(files)
    report.problems[:0] = problems
    if recorded is not None:
        report.recorded = recorded.recorded
    elif not paths and not problems:
        if detail.line.status not in ("succeeded", "failed", "error", "cancelled"):
            return None
        report.problems.append("the job names JUnit reports (artifacts:reports:junit), but none was kept")
    return report


@router.get(PREFIX + "/jobs/{job_id}/log/more")
async def log_more(job_id: str, viewer: ViewerDep, ui: UiDep, engine: EngineDep, settings: SettingsDep,
                   redis: RedisDep, at: str, skip: str = "0", line: str | None = None) -> JSONResponse:
    """The next screen of a finished job's log (the page's "more" link, fetched by log.js)."""
    detail = await to_thread.run_sync(_detail, engine, job_id)
    _readable(ui, viewer, detail)
    window, note = await _window(settings, redis, detail, at, skip, line)
    if window is None:
        raise NotFound(note or "no log")
    resume = window.resume
    return JSONResponse({"html": str(assemble(window.ops, anchors=window.anchors)),
                         "more": None if resume is None else {"at": resume.at, "skip": resume.skip,
                                                              "line": resume.line}},
                        headers={"Cache-Control": "no-store"})


def _live_ops(ops: list[Op], anchors: bool) -> list[list[Any]]:
    out: list[list[Any]] = []
    for op in ops:
        if op[0] == "line":
            out.append(["line", line_html(op[1], op[2], anchors)])
        elif op[0] == "open":
            opened = str(assemble([op], anchors=anchors))
            out.append(["open", opened, op[3]])
        else:
            out.append(["close", op[1], op[2]])
    return out


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@router.get(PREFIX + "/jobs/{job_id}/log/live")
async def live_log(job_id: str, viewer: ViewerDep, ui: UiDep, engine: EngineDep, settings: SettingsDep,
                   redis: RedisDep, after: str = "", skip: Annotated[int, Query(ge=0, le=1 << 20)] = 0,
                   line: Annotated[int, Query(ge=1, le=1 << 40)] = 1, anchors: int = 1) -> StreamingResponse:
    """Server-Sent Events: ``ops`` (rendered lines and sections, with where to resume) until
    ``end`` (the job's final status). A job that has already ended gets ``end`` at once: its page
    then shows the log file."""
    cursor = Cursor.parse(after, "?after=")
    detail = await to_thread.run_sync(_detail, engine, job_id)
    _readable(ui, viewer, detail)
    job = await to_thread.run_sync(runs.load_job, engine, job_id)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    if is_final(job):
        return StreamingResponse(_ended(job.status), media_type="text/event-stream", headers=headers)
    reader = LogReader(job, engine, redis, settings.state_dir, cursor, True)
    await reader.prepare()
    return StreamingResponse(_live_events(reader, after, skip, line, bool(anchors)), media_type="text/event-stream",
                             headers=headers)


async def _ended(status: str) -> AsyncIterator[bytes]:
    yield _event("end", {"status": status})


async def _live_events(reader: LogReader, after: str, skip: int, line: int, anchors: bool) -> AsyncIterator[bytes]:
    from api.ui.logsource import Tracker

    tracker = Tracker(line, anchors=anchors)
    before, first, sent = after, True, time.monotonic()
    async for item in reader.entries():
        if isinstance(item, Idle):
            if time.monotonic() - sent >= KEEPALIVE_S:
                sent = time.monotonic()
                yield b": keepalive\n\n"
            continue
        if isinstance(item, LogEnd):
            ops = tracker.renderer.flush()
            if ops:
                yield _event("ops", {"ops": _live_ops(ops, anchors), "resume": None})
            yield _event("end", {"status": item.status})
            return
        assert isinstance(item, LogEntry)
        ops = tracker.feed(item.id, before, item.d, skip if first else 0)
        first = False
        if item.id:
            before = item.id
        resume = tracker.resume("", before, file=False)
        sent = time.monotonic()
        yield _event("ops", {"ops": _live_ops(ops, anchors),
                             "resume": {"after": resume.at, "skip": resume.skip, "line": resume.line}})


@router.get(PREFIX + "/jobs/{job_id}/log.txt")
async def download_log(job_id: str, viewer: ViewerDep, ui: UiDep, engine: EngineDep, settings: SettingsDep,
                       redis: RedisDep) -> StreamingResponse:
    """The whole log as text, as the job wrote it (a download, never shown inline)."""
    detail = await to_thread.run_sync(_detail, engine, job_id)
    _readable(ui, viewer, detail)
    job = await to_thread.run_sync(runs.load_job, engine, job_id)
    reader = LogReader(job, engine, redis, settings.state_dir, Cursor(), False)
    await reader.prepare()
    return StreamingResponse(text_stream(reader.entries()), media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="job-{_safe_id(job_id)}.log"',
                                      "Cache-Control": "no-store"})


def _safe_id(job_id: str) -> str:
    return "".join(c for c in job_id if c.isalnum() or c == "-")[:64] or "job"


@router.get(PREFIX + "/jobs/{job_id}/artifacts.zip")
async def download_all_artifacts(job_id: str, viewer: ViewerDep, ui: UiDep, engine: EngineDep,
                                 settings: SettingsDep) -> FileResponse:
    """Every kept artifact of the job in one zip (stored, not compressed: build outputs are
    mostly compressed already, and the archive is ready sooner)."""
    detail = await to_thread.run_sync(_detail, engine, job_id)
    _readable(ui, viewer, detail)
    if not detail.artifacts:
        raise NotFound(f"job {job_id} kept no artifacts")
    total = sum(a.size for a in detail.artifacts)
    if total > ZIP_MAX_BYTES:
        raise BadRequest(f"the artifacts add up to {total} bytes, over the {ZIP_MAX_BYTES} a zip is made of; "
                         "download them one by one")

    def build() -> str:
        handle = tempfile.NamedTemporaryFile(prefix="sandpit-artifacts-", suffix=".zip", delete=False)
        with handle, read_scope(engine) as session, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for line in detail.artifacts:
                name = _archive_name(line.path)
                if name is None:
                    continue
                row = artifacts.find_artifact(session, job_id, line.path)
                archive.write(artifacts.artifact_file(settings.artifacts_dir, row), name)
        return handle.name

    path = await to_thread.run_sync(build)
    return FileResponse(path, media_type="application/zip", filename=f"job-{_safe_id(job_id)}-artifacts.zip",
                        background=BackgroundTask(Path(path).unlink, missing_ok=True))


def _archive_name(path: str) -> str | None:
    """A recorded artifact path as a zip member name: relative, no ``..``, no empty parts.

    >>> _archive_name("dist/app.txt"), _archive_name("../x"), _archive_name("/etc/passwd")
    ('dist/app.txt', None, None)
    """
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in ("..", ".", "") for p in parts):
        return None
    return "/".join(parts)


@router.get(PREFIX + "/jobs/{job_id}/artifacts/{path:path}")
def download_artifact(job_id: str, path: str, request: Request, viewer: ViewerDep, engine: EngineDep,
                      settings: SettingsDep) -> FileResponse:
    detail = _detail(engine, job_id)
    _readable(request.app.state.ui, viewer, detail)
    with read_scope(engine) as session:
        row: Artifact = artifacts.find_artifact(session, job_id, path)
    file = artifacts.artifact_file(settings.artifacts_dir, row)
    name = PurePosixPath(row.path).name or "artifact"
    return FileResponse(file, media_type="application/octet-stream", filename=name,
                        content_disposition_type="attachment",
                        headers={"X-Content-SHA256": row.sha256, "Cache-Control": "no-store"})


@router.post(PREFIX + "/jobs/{job_id}/play")
async def play(job_id: str, request: Request, viewer: SignedInDep, engine: EngineDep,
               publisher: PublisherDep) -> Response:
    """Start a manual job (GitLab's play button); one that is not waiting to be played is a 409 page."""
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    job = await to_thread.run_sync(play_now, engine, publisher, viewer.caller, job_id)
    return RedirectResponse(_back(form, job_id, job.run_id), status_code=303)


@router.post(PREFIX + "/jobs/{job_id}/retry")
async def retry(job_id: str, request: Request, viewer: SignedInDep, engine: EngineDep, publisher: PublisherDep,
                redis: RedisDep) -> Response:
    """Run a finished job again as a new attempt (GitLab's per-job retry; the API's
    ``POST /api/v1/jobs/{id}/retry``); one that has not finished is a 409 page."""
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    job = await retry_now(engine, publisher, redis, viewer.caller, job_id)
    return RedirectResponse(_back(form, job_id, job.run_id), status_code=303)


def _back(form: dict[str, str], job_id: str, run_id: str) -> str:
    """Where a job's form returns to: its own page or its run's (the form only chooses; its text
    never becomes the address)."""
    return f"{PREFIX}/jobs/{job_id}" if form.get("back") == "job" else f"{PREFIX}/runs/{run_id}"


@router.post(PREFIX + "/jobs/{job_id}/cancel")
async def cancel(job_id: str, request: Request, viewer: SignedInDep, engine: EngineDep,
                 publisher: PublisherDep) -> Response:
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    await to_thread.run_sync(runs.cancel_job_now, engine, publisher, job_id)
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}", status_code=303)
