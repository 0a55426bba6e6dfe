"""``sandpit run PIPELINE.yml``: a whole pipeline on this machine, through the same planner, executor
and advance rules as the service (a private SQLite store per run), jobs in parallel as the DAG allows.

Every job starts with the repository the file lives in (its git work tree: tracked and untracked
but not ignored files; the file's folder outside git) in ``/workspace``, each job its own copy.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pipelines.job_record import JobRecord, Reason, Status
from pipelines.language.loader import load_pipeline
from pipelines.language.model import Job as PlannedJob
from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.policy import PolicyError, TrustLevel, admit
from pipelines.store.advance import should_retry
from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.models import Job
from pipelines.store.reads import queued_job_ids, run_jobs, run_status
from pipelines.store.spec import job_from_spec
from pipelines.store.transitions import cancel_run, create_run, play_job
from worker.executor import WorkerContext, WorkspaceSource, execute_job, image_shell, utcnow
from worker.jobs import JobDefaults, image_name, request_for
from worker.local import cache as local_cache
from worker.local import records as local_records
from worker.local.kept import kept_lines
from worker.sandbox.engine import Engine
from worker.settings import Settings
from worker.terminal import (
    Paint,
    TerminalSanitizer,
    colour_wanted,
    quote_for_terminal,
    quote_lines,
    split_sections,
    strip_colour,
    visible_line,
)
from worker.work_tree import git_listing

log = logging.getLogger("sandpit.run")


def git(root: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def project_source(root: Path) -> WorkspaceSource:
    """The work tree's files (:mod:`worker.work_tree`'s rule, which ``sandpit submit`` sends too)."""
    listed = git_listing(root)
    return WorkspaceSource(root=root) if listed is None else WorkspaceSource(root=root, files=listed)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What ``sandpit run`` was asked beyond the file: which jobs, which pipeline to simulate, and how
    to show it. ``ref``/``sha`` None: the work tree's branch and commit."""

    jobs: tuple[str, ...] = ()
    manual: tuple[str, ...] = ()
    trigger: str = "push"
    ref: str | None = None
    tag: bool = False
    sha: str | None = None
    changed: tuple[str, ...] | None = None
    color: str = "auto"
    timestamps: bool = False


class PrefixedOutput:
    """Job output, line by line, prefixed with the job's name (lines of parallel jobs never mix).

    Names and output are the job's: a name is quoted when it holds anything but printable
    characters, and output goes through ``TerminalSanitizer`` and ``visible_line`` (colour kept,
    every other control sequence dropped, a bare CR cannot overwrite the prefix), so a job can
    neither forge another job's or sandpit's lines nor change the terminal (title, clipboard,
    cursor, screen). A reader of sandpit's output that goes away (``| head``) ends the live view
    quietly; the jobs' logs still get everything.

    On top of that, as a CI job log: GitLab's ``section_start``/``section_end`` markers become a
    section line and, at its end, the section's duration (timed by this host's clock, not the
    job's numbers); a job's output line left without a newline is ended before the script's next
    ``$ command`` echo (the shell cannot know where its output stopped; this side does); without
    colour (``paint.enabled`` False) the jobs' colours are dropped too; ``timestamps`` starts every
    line with the UTC time it was printed.
    """

    #: a line longer than this is shown in pieces (a job writing without newlines)
    LINE_MAX = 16 * 1024

    def __init__(self, out: TextIO, paint: Paint | None = None, timestamps: bool = False) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.width = 12
        self.broken = False
        self.paint = paint or Paint(False)
        self.timestamps = timestamps
        self._flushers: dict[str, Callable[[], None]] = {}

    def sink(self, name: str, echoes: frozenset[str] = frozenset()) -> Callable[[str, bytes], None]:
        """The output sink of job ``name``; ``echoes``: the ``$ command`` lines its script prints."""
        pending: dict[str, str] = {}
        filters: dict[str, TerminalSanitizer] = {}
        sections: dict[str, tuple[str, float]] = {}

        def show(line: str, stream: str = "") -> None:
            for kind, section, text in split_sections(line):
                if kind == "text":
                    for piece in _unglued(text, echoes):
                        if piece in echoes:
                            end_partial_lines(but=stream)
                        self.line(name, self._job_text(piece))
                elif kind == "start":
                    title = self._job_text(text) if text.strip() else quote_for_terminal(section)
                    sections[section] = (title, time.monotonic())
                    self.line(name, self.paint("cyan", "┌ ") + title)
                else:
                    title, began = sections.pop(section, (quote_for_terminal(section), None))
                    took = "" if began is None else f" ({time.monotonic() - began:.2f}s)"
                    self.line(name, self.paint("cyan", "└ ") + title + self.paint("dim", took))

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
                show(line, stream)

        def end_partial_lines(but: str) -> None:
            # the next command starts: what the last one left unfinished on the other stream (a
            # prompt on stderr without a newline) was written before it, so it is shown now
            for other, text in list(pending.items()):
                if other != but and text:
                    pending[other] = ""
                    show(text, other)

        def flush() -> None:
            for stream, screen in filters.items():
                rest = pending.get(stream, "") + screen.finish()
                if rest:
                    show(rest)
            pending.clear()
            for title, began in sections.values():  # a section the job never ended
                took = f" ({time.monotonic() - began:.2f}s, not ended)"
                self.line(name, self.paint("cyan", "└ ") + title + self.paint("dim", took))
            sections.clear()

        self._flushers[name] = flush
        return write

    def _job_text(self, text: str) -> str:
        shown = visible_line(text)
        return shown if self.paint.enabled else strip_colour(shown)

    def flush(self, name: str) -> None:
        flusher = self._flushers.pop(name, None)
        if flusher is not None:
            flusher()

    def line(self, name: str, text: str) -> None:
        """One line under ``name``'s prefix; ``text`` is sandpit's own or already sanitized."""
        stamp = ""
        if self.timestamps:
            now = time.time()
            stamp = self.paint("dim", time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d} ")
        self.write(f"{stamp}{quote_for_terminal(name):>{self.width}} | {text}\n")

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


def _unglued(line: str, echoes: frozenset[str]) -> list[str]:
    """``line`` cut before a ``$ command`` echo of the job's script that ends it (output without a
    final newline, then the next command's echo, arrive as one line); else ``[line]``. Only an
    echo the script really prints, at the line's end, cuts: other text is left whole.

    >>> _unglued('{"python": "3.11.2"}$ python3 -V', frozenset({"$ python3 -V"}))
    ['{"python": "3.11.2"}', '$ python3 -V']
    >>> _unglued("costs $ python3 -V", frozenset())
    ['costs $ python3 -V']
    """
    if not echoes or "$ " not in line:
        return [line]
    at = line.find("$ ", 1)
    while at > 0:
        if line[at:] in echoes:
            return [line[:at], line[at:]]
        at = line.find("$ ", at + 1)
    return [line]


def script_echoes(planned: PlannedJob) -> frozenset[str]:
    """The lines worker/jobs.py's script prints before each command (``$ command``, the first line
    of a multi-line one with its note) and before ``after_script``."""
    from worker.jobs import job_script

    script = job_script(planned)
    found = set(re.findall(r"^printf '%s\\n' '((?:[^']|'\\'')*)'$", script, flags=re.M))
    return frozenset(text.replace("'\\''", "'") for text in found)


def run_pipeline(settings: Settings, path: Path, variables: dict[str, str], *, as_json: bool,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr, trust: TrustLevel = "trusted",
                 manual: tuple[str, ...] = (),
                 options: RunOptions | None = None) -> int:
    """Plan (for the pipeline ``options`` simulate: source, ref, tag, sha, changed files), keep
    only the ``--job`` jobs and what they need, admit under ``trust``'s policy (caps checked and
    defaults filled as the service does; ``SANDPIT_POLICY_*`` from ``settings``), run, report."""
    options = options or RunOptions(manual=manual)
    try:
        policy = settings.policy().level(trust)
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
        trigger=options.trigger,  # type: ignore[arg-type]  # argparse checked it (pipeline_source)
        ref=options.ref or git(root, "rev-parse", "--abbrev-ref", "HEAD") or "main",
        ref_kind="tag" if options.tag else "branch",
        sha=options.sha or git(root, "rev-parse", "HEAD") or "0" * 40, variables=variables,
        changed_files=options.changed,
        existing_files=frozenset(loaded.existing), project_path=root.name, project_dir="/workspace",
        commit_message=message.strip("\n"), commit_timestamp=timestamp, commit_author=author,
        project_url=f"file://{root}",
    )
    log.info("pipeline %s: source %s, %s %s at %s", quote_for_terminal(str(path)), inputs.trigger, inputs.ref_kind,
             quote_for_terminal(inputs.ref), inputs.sha[:12])
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
    if options.jobs:
        chosen = only_jobs(planned, options.jobs)
        if isinstance(chosen, str):
            print(f"sandpit: {chosen}", file=err)
            return 2
        planned = chosen
    log.info("planned %d job(s) in stages %s (trust %s)", len(planned.jobs), ", ".join(planned.stages), trust)
    for warning in planned.warnings:
        print(quote_lines(warning.render()), file=err)
    why = planned.nothing_to_run()
    if why is not None:
        print(f"sandpit: {why}", file=err)
        return 0
    from worker.local.retention import collect_if_due

    collect_if_due(settings)  # old local runs' logs and artifacts go
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=_local_dir(settings)))
    try:
        return _execute(settings, planned, scratch, root, variables, loaded.files[loaded.entry], as_json, out,
                        trust, options)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def only_jobs(planned: Plan, wanted: tuple[str, ...]) -> Plan | str:
    """The plan cut down to the jobs named (a name, or a base name for every parallel/matrix
    instance) and what they need: their ``needs``, else their ``dependencies``, else (stage order)
    every job of earlier stages; each kept job then waits only for kept jobs. A name that is not
    in the plan is a sentence saying which names are."""
    by_name = {job.name: job for job in planned.jobs}
    unknown = [w for w in wanted if not any(w in (job.name, job.base_name) for job in planned.jobs)]
    if unknown:
        names = ", ".join(quote_for_terminal(j.name) for j in planned.jobs)
        return (f"no job {', '.join(quote_for_terminal(u) for u in unknown)} in this pipeline (for this source "
                f"and ref); its jobs: {names}")

    def needed(job: PlannedJob) -> tuple[str, ...]:
        if job.needs is not None:
            named: tuple[str, ...] = tuple(n.job for n in job.needs)
        elif job.dependencies is not None:
            named = job.dependencies
        else:
            return job.depends_on
        return tuple(d for d in job.depends_on if any(d == n or d.startswith((n + " ", n + ":")) for n in named))

    keep: set[str] = set()
    todo = [job.name for job in planned.jobs if job.name in wanted or job.base_name in wanted]
    while todo:
        name = todo.pop()
        if name in keep or name not in by_name:
            continue
        keep.add(name)
        todo.extend(needed(by_name[name]))
    jobs = tuple(dataclasses.replace(job, depends_on=tuple(d for d in job.depends_on if d in keep))
                 for job in planned.jobs if job.name in keep)
    return dataclasses.replace(planned, jobs=jobs)


def _local_dir(settings: Settings) -> Path:
    d = settings.state_dir / "local"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _execute(settings: Settings, planned: Plan, scratch: Path, root: Path, variables: dict[str, str],
             text: str, as_json: bool, out: TextIO, trust: TrustLevel = "trusted",
             options: RunOptions = RunOptions()) -> int:
    url = f"sqlite:///{scratch / 'run.db'}"
    migrate(url)
    db = make_engine(url)
    engine = Engine(settings)
    shown_on = sys.stderr if as_json else out
    paint = Paint(colour_wanted(options.color, shown_on))
    printer = PrefixedOutput(shown_on, paint, options.timestamps)
    printer.width = min(40, max(len(quote_for_terminal(j.name)) for j in planned.jobs))
    source = project_source(root)
    log.info("workspace: %s (%s)", quote_for_terminal(str(root)),
             "the folder, no git" if source.files is None else f"{len(source.files)} files of the git work tree")
    log.info("run store %s; jobs at once: %d", scratch / "run.db", max(1, os.cpu_count() or 1))
    done_lock = threading.Lock()
    defaults = JobDefaults()
    attempts: dict[str, list[dict[str, Any]]] = {}  # every attempt's record, for the run's local record

    def sink_for(job: Job) -> Callable[[str, bytes], None]:
        planned_job = job_from_spec(job.spec)
        printer.line(job.name, job_header(engine, planned_job, defaults, job.attempt, paint))
        return printer.sink(job.name, script_echoes(planned_job))

    def on_done(job: Job, record: JobRecord) -> None:
        log.info("job %s: attempt %s recorded (log %s)", quote_for_terminal(job.name), record.attempt,
                 record.log_path)
        printer.flush(job.name)
        attempts.setdefault(job.id, []).append(record.to_json())
        with done_lock:
            printer.line(job.name, result_line(job_from_spec(job.spec), record, paint))

    ctx = WorkerContext(engine=engine, db=db, worker_id=f"local-{os.getpid()}", lease_s=3.0, defaults=defaults,
                        source_for=lambda _run, _job: source, sink_for=sink_for, on_done=on_done)
    with session_scope(db) as s:
        stored = create_run(s, planned, trust=trust, source="cli", variables=variables, now=utcnow(),
                            pipeline=text)
        run_id = stored.run.id
    caches = local_cache.repository_dir(settings.state_dir, root)
    pulled = local_cache.load_into_run(db, engine.artifact_store, caches,
                                       local_cache.keys_of(planned, root, ("pull", "pull-push")), trust)
    with session_scope(db) as s:
        ready = queued_job_ids(s, run_id)
    if options.manual:
        ready += _play_manual(db, run_id, options.manual)
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
        jobs = run_jobs(s, run_id)
        records = [_job_record(j) for j in jobs]
        for record, why in zip(records, waiting_reasons(jobs), strict=True):
            if why:
                record["message"] = why
                verb = "skipped" if record["status"] == "skipped" else "not run"
                printer.line(record["name"], paint.status(record["status"], f"── {verb}") + f": {why}")
    local_cache.keep_from_run(db, caches, local_cache.keys_of(planned, root, ("push", "pull-push")), trust, pulled)
    db.dispose()
    _summary(printer, records, str(status))
    with contextlib.suppress(OSError):  # the run's result stands without its local record
        local_records.record_run(settings.state_dir, run_id, str(status), str(root), records, attempts)
    printer.write("".join(line + "\n" for line in kept_lines(run_id, records, paint)))
    if as_json:
        json.dump({"id": run_id, "status": str(status), "jobs": records}, sys.stdout)
        sys.stdout.write("\n")
    return 0 if str(status) == "succeeded" else 1


def job_header(engine: Engine, job: PlannedJob, defaults: JobDefaults, attempt: int, paint: Paint) -> str:
    """The line a job starts with, as a CI log's: image, runtime, shell, limits, network (what the
    sandbox is asked for; the engine may still refuse it, and then says why)."""
    reference = image_name(job, defaults.image)
    shell = image_shell(engine, reference)
    req = request_for(job, defaults=defaults, shell=shell)
    try:
        runtime = engine.runtime(req.runtime).for_network(req.network).name
    except Exception:
        runtime = req.runtime or "no runtime"
    lim = req.limits
    retries = f", attempt {attempt} of {job.retry.max + 1}" if job.retry.max else ""
    limits = (f"memory {_size(lim.memory_bytes)}, cpus {lim.cpus:g}, pids {lim.pids}, disk {_size(lim.disk_bytes)}, "
              f"timeout {_duration(lim.timeout_s)}, log {_size(lim.log_bytes)}")
    return (paint("bold", f"── job {quote_for_terminal(job.name)}{retries}") + paint("dim", (
            f": image {quote_for_terminal(reference)}, runtime {runtime}, shell {quote_for_terminal(shell)}, {limits}, "
            f"network {req.network}")))


def result_line(job: PlannedJob, record: JobRecord, paint: Paint) -> str:
    """The line a job (an attempt of it) ends with: its status, why, its exit code and duration,
    and whether it is retried or its failure allowed (as the store will decide, from the job)."""
    status, reason, code = record.status, record.reason, record.exit_code
    failed = status in (Status.FAILED, Status.ERROR, Status.CANCELLED)
    retry = failed and should_retry(job.retry, status=status, reason=reason, exit_code=code, attempt=record.attempt)
    allowed = failed and not retry and (job.allow_failure.allowed or (
        status is Status.FAILED and code is not None and code in job.allow_failure.exit_codes))
    why = "allowed to fail" if allowed else (reason if reason not in (None, Reason.EXIT_CODE) else None)
    text = status + (f" ({why})" if why else "")
    took = f" in {record.duration_s:.2f}s"
    exit_text = f", exit code {code}" if failed and code is not None else ""
    again = f"; retrying (attempt {record.attempt + 1} of {job.retry.max + 1})" if retry else ""
    message = record.message
    told = f": {quote_for_terminal(message, quotes=False)}" if message and status is not Status.SUCCEEDED else ""
    return paint.status(status, f"── {text}", allowed=allowed) + f"{took}{exit_text}{again}{told}"


def _size(n: int) -> str:
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size and n % (size // 16) == 0:
            return f"{n / size:g}{unit}"
    return f"{n}B"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v)


def _play_manual(db: Any, run_id: str, wanted: tuple[str, ...]) -> list[str]:
    """Start the manual jobs named by ``--manual`` (as the API's play does); returns what became ready."""
    ready: list[str] = []
    with session_scope(db) as s:
        for job in [job for job in run_jobs(s, run_id) if job.status == "manual"]:
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
        if job.status == "skipped":
            reasons.append(_skip_reason(job, by_name))
            continue
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


def _skip_reason(job: Job, by_name: dict[str, Job]) -> str:
    """Why the run skipped ``job``, from what it waited for (the rule is pipelines/store/advance.py's)."""
    spec = job.spec or {}
    if job.reason == "dependency_failed":
        failed = [n for n in spec.get("depends_on", []) if n in by_name and (
            (by_name[n].status in ("failed", "error", "cancelled") and not by_name[n].allow_failure)
            or (by_name[n].status == "skipped" and by_name[n].reason == "dependency_failed"))]
        shown = ", ".join(f"{quote_for_terminal(n)} ({by_name[n].status})" for n in failed) or "an earlier job"
        return f"a job it waits for did not succeed: {shown}"
    if spec.get("when") == "on_failure":
        return "when: on_failure, and nothing before it failed"
    if job.reason:
        return str(job.reason)
    return "its condition did not apply"


def _job_record(job: Job) -> dict[str, Any]:
    record = dict(job.result or {})
    record.update({"id": job.id, "name": job.name, "stage": job.stage, "status": job.status, "reason": job.reason,
                   "attempt": job.attempt, "allowed_failure": bool(job.allow_failure) and job.status != "succeeded"})
    record.setdefault("exit_code", job.exit_code)
    if record.get("duration_s") is None:
        record["duration_s"] = job.duration_s
    return record


def _summary(printer: PrefixedOutput, records: list[dict[str, Any]], status: str) -> None:
    """The table after the run: every job with its status (an allowed failure says so), the
    reason, the exit code, the duration and, where a job was retried, its attempts; then the
    pipeline's status (that last line is never coloured)."""
    paint = printer.paint
    retried = any(int(r.get("attempt") or 0) > 1 for r in records)
    header = ["JOB", "STATUS", "REASON", "EXIT", "DURATION"] + (["ATTEMPTS"] if retried else [])
    rows = []
    for r in records:
        shown = r["status"] + (" (allowed to fail)" if r.get("allowed_failure") else "")
        duration = r.get("duration_s")
        row = [quote_for_terminal(r["name"]), shown, quote_for_terminal(str(r.get("reason") or "-")),
               "-" if r.get("exit_code") is None else str(r["exit_code"]),
               f"{duration:.2f}s" if isinstance(duration, int | float) else "-"]
        if retried:
            row.append(str(r.get("attempt") or "-"))
        rows.append((row, r))
    widths = [max(len(h), *(len(row[i]) for row, _ in rows)) for i, h in enumerate(header)]

    def cells(row: list[str], status_of: dict[str, Any] | None = None) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width) if i < len(row) - 1 else cell
            if i == 1 and status_of is not None:
                padded = paint.status(status_of["status"], padded, allowed=bool(status_of.get("allowed_failure")))
            out.append(padded)
        return "  " + "  ".join(out)

    lines = ["", paint("bold", cells(header))]
    lines += [cells(row, r) for row, r in rows]
    lines.append(f"pipeline {status}")
    printer.write("\n".join(lines) + "\n")
