"""What local runs and ``sandpit exec`` kept, on this host (adapter): one record per run or exec.

``sandpit run`` works in a private store that is deleted when it ends, and ``exec`` has none, so
without a record their logs and artifacts would be nameless files in the shared stores: nobody
could find them (``sandpit artifacts``) and nothing could ever tell they are no longer needed
(retention). A record names, per job, its logs (every attempt's), the artifacts of its last
attempt (what ``sandpit artifacts`` copies out) and every stored file any attempt kept (what
retention may remove), plus its test report.

``<state>/local/records/<id>.json``, ``id`` the run's id or the exec job's. A record is written
once, through a unique temporary in the same directory and a rename (a reader sees no record or
the whole one; nothing is rewritten in place). Everything read back is checked before it names a
file: ids against the job-id grammar, log names against ``<job id>.jsonl``, sha256s against
their grammar, artifact paths against the artifact-path grammar.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from pipelines.identifiers import artifact_path_problem, is_job_id, is_sha256_hex
from pipelines.record import record as frozen_record
from worker import TYPE_CHECKING

if TYPE_CHECKING:  # typing and dataclasses stay off `sandpit exec`'s start-up path (it writes a record)
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

MAX_RECORD_BYTES = 16 * 1024 * 1024
# a job's log, or one of its services' (``<job id>.svc<N>.jsonl``, worker/sandbox/services/naming.py)
_LOG_NAME = r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.svc[0-9]{1,2})?\.jsonl"


@frozen_record(frozen=True)
class KeptFile:
    """An artifact as a record names it: its path in the workspace and its stored content."""

    path: str
    size: int
    sha256: str


@frozen_record(frozen=True)
class LocalJob:
    id: str
    name: str
    status: str
    logs: tuple[str, ...]  # file names in <state>/logs, checked
    artifacts: tuple[KeptFile, ...]
    tests: Mapping[str, Any] | None = None


@frozen_record(frozen=True)
class LocalRecord:
    id: str
    kind: str  # run | exec
    created: float  # seconds since the epoch
    status: str
    jobs: tuple[LocalJob, ...]
    stored: frozenset[str]  # every sha256 any attempt of any job kept
    path: Path

    @property
    def logs(self) -> tuple[str, ...]:
        return tuple(name for job in self.jobs for name in job.logs)


def records_dir(state_dir: Path) -> Path:
    return state_dir / "local" / "records"


def log_name(log_path: object) -> str | None:
    """The file name of a log the engine wrote (``<state>/logs/<job id>.jsonl``), None if it is
    not one.

    >>> log_name("/var/lib/sandpit/logs/6885fcfd0ec5.jsonl"), log_name("/etc/passwd"), log_name(None)
    ('6885fcfd0ec5.jsonl', None, None)
    >>> log_name("/var/lib/sandpit/logs/6885fcfd0ec5.svc0.jsonl"), log_name("/l/x.svc0.svc1.jsonl")
    ('6885fcfd0ec5.svc0.jsonl', None)
    """
    if not isinstance(log_path, str):
        return None
    name = log_path.rpartition("/")[2]
    return name if re.fullmatch(_LOG_NAME, name, re.ASCII) else None


def write_record(state_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (its ``id`` must pass the job-id grammar) as ``<id>.json``; returns its path."""
    ident = record.get("id")
    if not is_job_id(ident):
        raise ValueError(f"record id {str(ident)[:80]!r} is not a job or run id")
    folder = records_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps(dict(record), sort_keys=True).encode()
    temp = folder / f".tmp-{os.urandom(8).hex()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    os.close(fd)
    final = folder / f"{ident}.json"
    os.replace(temp, final)
    return final


def job_entry(job_id: str, name: str, status: str, attempts: Iterable[Mapping[str, Any]],
              tests: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job of a record, from the result records of its attempts (last one last)."""
    attempts = list(attempts)
    last = attempts[-1] if attempts else {}
    logs = [n for a in attempts if (n := log_name(a.get("log"))) is not None]
    logs += [n for a in attempts for svc in a.get("services") or () if isinstance(svc, dict)
             and (n := log_name(svc.get("log"))) is not None]  # its services' logs go with it
    stored = sorted({str(f.get("sha256")) for a in attempts for f in _files(a.get("artifacts"))})
    return {"id": job_id, "name": name, "status": status, "logs": logs,
            "artifacts": [dict(f) for f in _files(last.get("artifacts"))], "stored": stored,
            "tests": tests if tests is not None else last.get("tests")}


def _files(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [f for f in value if isinstance(f, dict) and is_sha256_hex(f.get("sha256"))]


def record_run(state_dir: Path, run_id: str, status: str, pipeline: str, jobs: Sequence[Mapping[str, Any]],
               attempts: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """The record of a local run: ``jobs`` are its final job records (with the store's ``id``),
    ``attempts`` every attempt's result record by job id."""
    entries = [job_entry(str(j["id"]), str(j["name"]), str(j["status"]), attempts.get(str(j["id"]), [j]),
                         j.get("tests")) for j in jobs]
    return write_record(state_dir, {"kind": "run", "id": run_id, "created": time.time(), "status": status,
                                    "pipeline": pipeline, "jobs": entries})


def record_exec(state_dir: Path, result: Mapping[str, Any]) -> Path | None:
    """The record of one ``sandpit exec`` (its job id is the record's); None if it has no id."""
    job_id = result.get("job_id")
    if not is_job_id(job_id):
        return None
    entry = job_entry(str(job_id), "exec", str(result.get("status")), [result])
    return write_record(state_dir, {"kind": "exec", "id": job_id, "created": time.time(),
                                    "status": result.get("status"), "jobs": [entry]})


def read_records(state_dir: Path) -> list[LocalRecord]:
    """Every readable record, oldest first (one that cannot be read is skipped: retention then
    removes it by its age)."""
    folder = records_dir(state_dir)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if ext != "json" or not dot or not is_job_id(stem):
            continue
        record = read_record_file(folder / name)
        if record is not None:
            found.append(record)
    return sorted(found, key=lambda r: r.created)


def read_small_json(path: Path, max_bytes: int) -> tuple[object, float] | None:
    """(the JSON in ``path``, its mtime), never through a symlink; None when it cannot be read,
    is longer than ``max_bytes`` or is not JSON. Local records and cache index entries are such
    files: written whole by a rename, read whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, max_bytes + 1)
        mtime = os.fstat(fd).st_mtime
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        return None
    try:
        return json.loads(raw), mtime
    except ValueError:
        return None


def read_record_file(path: Path) -> LocalRecord | None:
    """The record in ``path``; None when it is not one (torn, foreign, too large)."""
    read = read_small_json(path, MAX_RECORD_BYTES)
    if read is None:
        return None
    data, created = read
    if not isinstance(data, dict) or not is_job_id(data.get("id")):
        return None
    jobs = []
    stored: set[str] = set()
    for job in data.get("jobs") or []:
        if not isinstance(job, dict):
            continue
        kept = tuple(KeptFile(str(f["path"]), int(f.get("size") or 0), str(f["sha256"]))
                     for f in _files(job.get("artifacts")) if isinstance(f.get("path"), str)
                     and artifact_path_problem(f["path"]) is None)
        stored |= {f.sha256 for f in kept}
        stored |= {s for s in job.get("stored") or [] if is_sha256_hex(s)}
        logs = tuple(n for n in job.get("logs") or [] if log_name(n) == n)
        tests = job.get("tests") if isinstance(job.get("tests"), dict) else None
        jobs.append(LocalJob(str(job.get("id") or ""), str(job.get("name") or ""), str(job.get("status") or ""),
                             logs, kept, tests))
    when = data.get("created")
    return LocalRecord(id=data["id"], kind=str(data.get("kind") or "run"),
                       created=float(when) if isinstance(when, int | float) else created,
                       status=str(data.get("status") or ""), jobs=tuple(jobs), stored=frozenset(stored), path=path)


def find(state_dir: Path, ident: str) -> tuple[LocalRecord, tuple[LocalJob, ...]] | str:
    """The record and jobs ``ident`` names: a run's id (all its jobs), a job's id, or a unique
    prefix of either (at least 4 characters); ``last``: the newest run. A sentence when none or
    several match."""
    records = read_records(state_dir)
    if ident == "last":
        runs = [r for r in records if r.kind == "run"]
        return (runs[-1], runs[-1].jobs) if runs else "no local run is recorded on this host yet"
    if len(ident) < 4 or not is_job_id(ident):
        return f"{ident[:80]!r} is not a run or job id (or a prefix of one, 4 characters or more)"
    hits: list[tuple[LocalRecord, tuple[LocalJob, ...]]] = []
    for record in records:
        if record.id.startswith(ident):
            hits.append((record, record.jobs))
            continue
        hits += [(record, (job,)) for job in record.jobs if job.id.startswith(ident)]
    exact = [h for h in hits if h[0].id == ident or any(j.id == ident for j in h[1])]
    hits = exact or hits
    if not hits:
        return f"no local run or job {ident!r} is recorded on this host (it may have expired: SANDPIT_RETENTION)"
    if len(hits) > 1:
        return f"{ident!r} names {len(hits)} runs or jobs; give more of the id"
    return hits[0]


def remove_record(record: LocalRecord) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record.path)

