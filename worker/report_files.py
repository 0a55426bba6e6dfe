"""A job's ``artifacts:reports:junit`` files, from the artifact store into its result record (adapter).

The engine keeps the files the report globs name whatever the job's outcome (GitLab uploads reports
of failed jobs too: that is when they matter); here they join the job's artifacts (so they are kept,
listed and downloadable even when ``paths`` does not name them) and are read into the record's
``tests`` summary by :mod:`worker.junit`. Each stored file is read with ``O_NOFOLLOW``, at most
``MAX_REPORT_BYTES`` of it, and hashed as it is read: bytes that do not match the sha256 the walk
recorded are not parsed.

>>> from pipelines.job_record import JobRecord, Status
>>> record = attach_test_reports(JobRecord("test", Status.SUCCEEDED, None), ("out/*.xml",), Path("/nonexistent"))
>>> record.tests["tests"], record.tests["problems"]
(0, ['no file matched out/*.xml'])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from pipelines.job_record import JobRecord, StoredArtifact
from pipelines.record import replace
from worker.junit import MAX_REPORT_BYTES, TestReport, merge, parse_junit
from worker.sandbox import blobs

MAX_REPORT_FILES = 100


def attach_test_reports(record: JobRecord, patterns: Sequence[str], store: Path) -> JobRecord:
    """``record`` with its report files (``record.report_files``) among its artifacts (those not
    there already) and their summary as its ``tests``; ``record`` itself when the job has no report
    globs."""
    if not patterns:
        return record
    files = record.report_files
    listed = {a.path for a in record.artifacts}
    reports = [_read_one(store, f) for f in sorted(files, key=lambda f: f.path)[:MAX_REPORT_FILES]]
    if not files:
        reports.append(TestReport(problems=(f"no file matched {', '.join(patterns)}",)))
    elif len(files) > MAX_REPORT_FILES:
        reports.append(TestReport(problems=(f"{len(files)} report files; the first {MAX_REPORT_FILES} were read",)))
    return replace(record, artifacts=record.artifacts + tuple(f for f in files if f.path not in listed),
                   tests=merge(reports).as_dict())


def _read_one(store: Path, f: StoredArtifact) -> TestReport:
    if f.size > MAX_REPORT_BYTES:
        return TestReport(files=(f.path,), problems=(
            f"{f.path}: not read: {f.size} bytes, more than the {MAX_REPORT_BYTES} a report may have",))
    try:
        fd = os.open(blobs.blob_path(store, f.sha256), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):
        return TestReport(files=(f.path,), problems=(f"{f.path}: its stored copy cannot be read",))
    try:
        data = os.read(fd, MAX_REPORT_BYTES + 1)
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != f.sha256:
        return TestReport(files=(f.path,), problems=(f"{f.path}: its stored copy does not match its sha256",))
    return parse_junit(data, f.path)
