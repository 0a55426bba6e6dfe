"""A job's JUnit report as a table: its test cases, failed ones first (adapter: reads kept artifacts).

Where a report comes from, in order:

1. ``result["tests"]``, the summary the worker records (``worker.junit.TestReport.as_dict``: exact
   counts, the first failed tests with their messages, problems): the counts and the failed tests;
2. the job's kept artifacts whose paths match its ``artifacts:reports:junit`` patterns, parsed here
   with ``defusedxml`` (the XML is the job's: no DTDs, no entities, no external references; a file
   over :data:`MAX_REPORT_BYTES` is not read): every case, passed ones too, when they were kept.

A report that cannot be read is named with the reason instead of failing the page.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

MAX_REPORT_BYTES = 10 * 1024 * 1024
MAX_CASES = 5000
_ORDER = {"failed": 0, "error": 1, "skipped": 2, "passed": 3}


@dataclass(frozen=True, slots=True)
class TestCase:
    suite: str
    classname: str
    name: str
    status: str  # failed | error | skipped | passed
    time: float | None
    message: str


@dataclass(slots=True)
class Report:
    cases: list[TestCase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recorded: dict[str, int] | None = None  # the worker's exact counts, when it recorded them

    @property
    def counts(self) -> dict[str, int]:
        if self.recorded is not None:
            return self.recorded
        counts = dict.fromkeys(_ORDER, 0)
        for case in self.cases:
            counts[case.status] = counts.get(case.status, 0) + 1
        return counts

    def ordered(self) -> list[TestCase]:
        return sorted(self.cases, key=lambda c: (_ORDER.get(c.status, 9), c.suite, c.classname, c.name))


def junit_patterns(spec: dict[str, Any]) -> list[str]:
    artifacts = spec.get("artifacts")
    patterns = artifacts.get("junit") if isinstance(artifacts, dict) else None
    return [p for p in patterns or () if isinstance(p, str)]


def matching_paths(patterns: Sequence[str], paths: Sequence[str]) -> list[str]:
    """The kept artifact paths a report pattern names (globs as in ``artifacts:reports:junit``).

    >>> matching_paths(["reports/*.xml"], ["reports/a.xml", "dist/x"])
    ['reports/a.xml']
    """
    return [p for p in paths if any(p == pattern or fnmatch.fnmatchcase(p, pattern) for pattern in patterns)]


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def parse_junit(data: bytes, into: Report, source: str) -> None:
    """Add the cases of one JUnit XML document (``<testsuites>`` or a lone ``<testsuite>``).

    >>> r = Report()
    >>> parse_junit(b'<testsuite name="s"><testcase name="ok"/><testcase name="bad">'
    ...             b'<failure message="boom"/></testcase></testsuite>', r, "r.xml")
    >>> [(c.name, c.status, c.message) for c in r.ordered()]
    [('bad', 'failed', 'boom'), ('ok', 'passed', '')]
    """
    try:
        root = SafeET.fromstring(data)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        into.problems.append(f"{source}: not readable JUnit XML ({type(exc).__name__}: {str(exc)[:120]})")
        return
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        for case in suite.iter("testcase"):
            if len(into.cases) >= MAX_CASES:
                into.problems.append(f"{source}: only the first {MAX_CASES} test cases are shown")
                return
            status, message = "passed", ""
            for kind, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                found = case.find(kind)
                if found is not None:
                    status = word
                    message = (found.get("message") or (found.text or "")).strip()[:2000]
                    break
            into.cases.append(TestCase(suite.get("name", ""), case.get("classname", ""), case.get("name", ""),
                                       status, _float(case.get("time")), message))


def _count(summary: dict[str, Any], name: str) -> int:
    value = summary.get(name)
    return value if isinstance(value, int) and value >= 0 else 0


def from_result(result: dict[str, Any]) -> Report | None:
    """The worker's recorded summary (``result["tests"]``) as a report, None when there is none.

    >>> r = from_result({"tests": {"tests": 3, "passed": 2, "failed": 1, "errored": 0, "skipped": 0,
    ...                  "failures": [{"name": "t.b", "kind": "failed", "message": "boom", "report": "r.xml"}]}})
    >>> r.counts["failed"], [(c.name, c.status) for c in r.cases]
    (1, [('t.b', 'failed')])
    """
    summary = result.get("tests")
    if not isinstance(summary, dict):
        return None
    report = Report(recorded={"failed": _count(summary, "failed"), "error": _count(summary, "errored"),
                              "skipped": _count(summary, "skipped"), "passed": _count(summary, "passed")})
    for item in summary.get("failures") or ():
        if isinstance(item, dict):
            status = "error" if item.get("kind") == "errored" else "failed"
            report.cases.append(TestCase(str(item.get("report", "")), "", str(item.get("name", "")), status, None,
                                         str(item.get("message", ""))[:2000]))
    report.problems.extend(str(p) for p in summary.get("problems") or () if isinstance(p, str))
    return report


def from_files(files: Sequence[tuple[str, Path]]) -> Report:
    """Parse the kept report files ``(artifact path, stored file)``."""
    report = Report()
    for name, path in files:
        try:
            size = path.stat().st_size
            if size > MAX_REPORT_BYTES:
                report.problems.append(f"{name}: {size} bytes, over the {MAX_REPORT_BYTES} bytes a page reads")
                continue
            parse_junit(path.read_bytes(), report, name)
        except OSError as exc:
            report.problems.append(f"{name}: cannot be read ({exc.strerror})")
    return report
