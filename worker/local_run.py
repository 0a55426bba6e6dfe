"""``sandpit run PIPELINE.yml``: a whole pipeline on this machine, through the same planner, executor
and advance rules as the service (a private SQLite store per run), jobs in parallel as the DAG allows.

Every job starts with the repository the file lives in (its git work tree: tracked and untracked
but not ignored files; the file's folder outside git) in ``/workspace``, each job its own copy.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from sqlmodel import col, select

from pipelines.language.loader import load_pipeline
from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.policy import Policy, PolicyError, TrustLevel, admit
from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.models import Job, Run
from pipelines.store.transitions import cancel_run, create_run, play_job, queued_job_ids, run_status
from worker.executor import Source, WorkerContext, execute_job, utcnow
from worker.sandbox.engine import Engine
from worker.settings import Settings
from worker.terminal import TerminalSanitizer, quote_for_terminal, quote_lines, visible_line


def git(root: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def project_source(root: Path) -> Source:
    listed = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed is None:
        return Source(root=root)
    files = tuple(sorted({f for f in listed.split("\0") if (f and (root / f).exists()) or (root / f).is_symlink()}))
    return Source(root=root, files=files)


class PrefixedOutput:
    """Job output, line by line, prefixed with the job's name (lines of parallel jobs never mix).

    Names and output are the job's: a name is quoted when it holds anything but printable
    characters, and output goes through ``TerminalSanitizer`` and ``visible_line`` (colour kept,
    every other control sequence dropped, a bare CR cannot overwrite the prefix), so a job can
    neither forge another job's or sandpit's lines nor change the terminal (title, clipboard,
    cursor, screen). A reader of sandpit's output that goes away (``| head``) ends the live view
    quietly; the jobs' logs still get everything.
    """

    #: a line longer than this is shown in pieces (a job writing without newlines)
    LINE_MAX = 16 * 1024

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.width = 12
        self.broken = False
        self._flushers: dict[str, Callable[[], None]] = {}

    def sink(self, name: str) -> Callable[[str, bytes], None]:
        pending: dict[str, str] = {}
        filters: dict[str, TerminalSanitizer] = {}

        def write(stream: str, data: bytes) -> None:
            screen = filters.get(stream)
            if screen is None:
                screen = filters[stream] = TerminalSanitizer()
            *lines, rest = (pending.get(stream, "") + screen.feed(data)).split("\n")
            while len(rest) > self.LINE_MAX:
                lines.append(rest[:self.LINE_MAX])
                rest = rest[self.LINE_MAX:]
            pending[stream] = rest
            for line in lines:
                self.line(name, visible_line(line))

        def flush() -> None:
            for stream, screen in filters.items():
                rest = pending.get(stream, "") + screen.finish()
                if rest:
                    self.line(name, visible_line(rest))
            pending.clear()

        self._flushers[name] = flush
        return write

    def flush(self, name: str) -> None:
        flusher = self._flushers.pop(name, None)
        if flusher is not None:
            flusher()

    def line(self, name: str, text: str) -> None:
        """One line under ``name``'s prefix; ``text`` is sandpit's own or already sanitized."""
        self.write(f"{quote_for_terminal(name):>{self.width}} | {text}\n")

    def write(self, text: str) -> None:
        with self.lock:
            if self.broken:
                return
            try:
                self.out.write(text)
                self.out.flush()
            except BrokenPipeError:
                self.broken = True
                self._silence()

    def _silence(self) -> None:
        # what is still buffered would fail again at exit ("Exception ignored ... BrokenPipeError")
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)


def run_pipeline(settings: Settings, path: Path, variables: dict[str, str], *, as_json: bool,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr, trust: TrustLevel = "trusted",
                 env: dict[str, str] | None = None, manual: tuple[str, ...] = ()) -> int:
    """Plan, admit under ``trust``'s policy (caps checked and defaults filled as the service
    does; ``SANDPIT_POLICY_*`` from ``env``, default the process's), run, report."""
    try:
        policy = Policy.from_env(os.environ if env is None else env).level(trust)
    except PolicyError as exc:
        print(f"sandpit: {quote_lines(str(exc))}", file=err)
        return 2
    try:
        loaded = load_pipeline(path)
    except OSError as exc:
        print(f"sandpit: cannot read {quote_for_terminal(str(path))}: {exc.strerror}", file=err)
        return 2
    root = Path(loaded.root)
    # the commit's message, time and author in one call (NUL-separated: a message may hold anything)
    message, timestamp, author = ((git(root, "log", "-1", "--format=%B%x00%cI%x00%an <%ae>") or "")
                                  + "\0\0").split("\0")[:3]
    inputs = PipelineInputs(
        trigger="push", ref=git(root, "rev-parse", "--abbrev-ref", "HEAD") or "main",
        sha=git(root, "rev-parse", "HEAD") or "0" * 40, variables=variables,
        existing_files=frozenset(loaded.existing), project_path=root.name, project_dir="/workspace",
        commit_message=message.strip("\n"), commit_timestamp=timestamp, commit_author=author,
        project_url=f"file://{root}",
    )
    planned = plan(loaded.files, inputs, entry=loaded.entry)
    if not isinstance(planned, Plan):
        for problem in planned.items:
            print(quote_lines(problem.render()), file=err)
        return 1
    admitted = admit(planned, policy)
    if not isinstance(admitted, Plan):
        for problem in admitted:
            print(quote_lines(problem.render()), file=err)
        return 1
    planned = admitted
    for warning in planned.warnings:
        print(quote_lines(warning.render()), file=err)
    why = planned.nothing_to_run()
    if why is not None:
        print(f"sandpit: {why}", file=err)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=_local_dir(settings)))
    try:
        return _execute(settings, planned, scratch, root, variables, loaded.files[loaded.entry], as_json, out,
                        trust, manual)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _local_dir(settings: Settings) -> Path:
    d = settings.state_dir / "local"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _execute(settings: Settings, planned: Plan, scratch: Path, root: Path, variables: dict[str, str],
             text: str, as_json: bool, out: TextIO, trust: TrustLevel = "trusted",
             manual: tuple[str, ...] = ()) -> int:
    url = f"sqlite:///{scratch / 'run.db'}"
    migrate(url)
    db = make_engine(url)
    engine = Engine(settings)
    printer = PrefixedOutput(sys.stderr if as_json else out)
    printer.width = min(40, max(len(quote_for_terminal(j.name)) for j in planned.jobs))
    source = project_source(root)
    done_lock = threading.Lock()

    def on_done(job: Job, record: dict[str, Any]) -> None:
        printer.flush(job.name)
        with done_lock:
            reason = f" ({record['reason']})" if record.get("reason") not in (None, "exit_code") else ""
            printer.line(job.name, f"── {record['status']}{reason} in {record['duration_s']:.2f}s")

    ctx = WorkerContext(engine=engine, db=db, worker_id=f"local-{os.getpid()}", lease_s=3.0,
                        source_for=lambda _run: source, sink_for=lambda job: printer.sink(job.name),
                        on_done=on_done)
    with session_scope(db) as s:
        run = create_run(s, planned, trust=trust, source="cli", variables=variables, now=utcnow(),
                         pipeline=text)
        run_id = run.id
    with session_scope(db) as s:
        ready = queued_job_ids(s, run_id)
    if manual:
        ready += _play_manual(db, run_id, manual)
    stop = threading.Event()

    def cancel(_sig: int, _frame: object) -> None:
        stop.set()
        with session_scope(db) as s:
            cancel_run(s, run_id, utcnow())

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, cancel)
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            running = {pool.submit(execute_job, ctx, job_id) for job_id in ready}
            while running:
                finished, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    running |= {pool.submit(execute_job, ctx, job_id) for job_id in future.result()}
    finally:
        engine.close()
    with session_scope(db) as s:
        status = run_status(s, run_id)
        jobs = list(s.exec(select(Job).where(Job.run_id == run_id).order_by(col(Job.position))).all())
        records = [_job_record(j) for j in jobs]
        for record, why in zip(records, waiting_reasons(jobs), strict=True):
            if why:
                record["message"] = why
                printer.line(record["name"], f"── not run: {why}")
        stored = s.get(Run, run_id)
        assert stored is not None
    db.dispose()
    _summary(printer, records, str(status))
    if as_json:
        json.dump({"id": run_id, "status": str(status), "jobs": records}, sys.stdout)
        sys.stdout.write("\n")
    return 0 if str(status) == "succeeded" else 1


def _play_manual(db: Any, run_id: str, wanted: tuple[str, ...]) -> list[str]:
    """Start the manual jobs named by ``--manual`` (as the API's play does); returns what became ready."""
    ready: list[str] = []
    with session_scope(db) as s:
        manual = list(s.exec(select(Job).where(Job.run_id == run_id, Job.status == "manual")).all())
        for job in manual:
            base = (job.spec or {}).get("base_name", job.name)
            if "*" in wanted or job.name in wanted or base in wanted:
                ready += play_job(s, job.id, utcnow())
    return ready


def waiting_reasons(jobs: list[Job]) -> list[str | None]:
    """For each job the run left unstarted (``created``/``queued``/``manual``), what it waits for,
    so a run never ends with jobs silently not run; None for the others."""
    by_name = {job.name: job for job in jobs}
    reasons: list[str | None] = []
    for job in jobs:
        if job.status == "manual":
            reasons.append(f"a manual job (run it with --manual {quote_for_terminal(job.name)})")
            continue
        if job.status not in ("created", "queued"):
            reasons.append(None)
            continue
        waits = [name for name in (job.spec or {}).get("depends_on", [])
                 if by_name.get(name) is not None and by_name[name].status in ("created", "queued", "manual",
                                                                               "running")]
        if waits:
            shown = ", ".join(f"{quote_for_terminal(n)} ({by_name[n].status})" for n in waits)
            reasons.append(f"it waits for {shown}")
        else:
            reasons.append(f"it was left {job.status} although nothing it needs is pending")
    return reasons


def _job_record(job: Job) -> dict[str, Any]:
    record = dict(job.result or {})
    record.update({"name": job.name, "stage": job.stage, "status": job.status, "reason": job.reason,
                   "attempt": job.attempt})
    record.setdefault("exit_code", job.exit_code)
    return record


def _summary(printer: PrefixedOutput, records: list[dict[str, Any]], status: str) -> None:
    lines = [""]
    for r in records:
        reason = f" ({r['reason']})" if r.get("reason") else ""
        lines.append(f"  {r['status']:<10} {quote_for_terminal(r['name'])}{reason}")
    lines.append(f"pipeline {status}")
    printer.write("\n".join(lines) + "\n")
