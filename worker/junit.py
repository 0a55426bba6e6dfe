"""JUnit XML test reports (``artifacts:reports:junit``) read into a summary (pure: bytes in, values out).

A report is written by the job, so it is hostile input. It is parsed with ``defusedxml`` (chosen over
the standard library's parsers, which expand internal entities, the "billion laughs", and over a
hand-written reader: defusedxml wraps expat and refuses, by construction, every DTD, entity
declaration and external reference), with ``forbid_dtd``: a report needs no DOCTYPE, so any one is
refused before its first declaration is read. Its size is capped before parsing (``MAX_REPORT_BYTES``),
so a job cannot make the host hold or walk a huge tree; what is kept of it is capped too (failed
tests listed, lines and characters of their messages).

Counting follows the ``<testcase>`` elements themselves, not the ``tests=``/``failures=`` attributes
of ``<testsuite>`` (which a tool may omit or get wrong): a case with a ``<failure>`` child failed,
with an ``<error>`` child errored, with ``<skipped>`` was skipped, otherwise it passed. That is how
GitLab counts, and it works for pytest, JUnit/Surefire, Go's go-junit-report and jest-junit alike.

A file that cannot be read as a report gives a ``problems`` line naming it and why; it never fails
the job (GitLab: "the job succeeds, the report is not shown").

>>> r = parse_junit(b'<testsuite><testcase name="a"/><testcase classname="t" name="b">'
...                 b'<failure message="boom">trace</failure></testcase></testsuite>', "r.xml")
>>> r.tests, r.failed, r.failures[0].name, r.failures[0].message
(2, 1, 't.b', 'boom')
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

MAX_REPORT_BYTES = 32 * 1024 * 1024  # a 5,900-test pytest report is ≈ 1.5 MB; past this it is refused
MAX_FAILURES = 50  # failed tests named in a record; the counts stay exact past it
MESSAGE_LINES = 3
LINE_CHARS = 200
NAME_CHARS = 300


@dataclass(frozen=True, slots=True)
class TestFailure:
    """One failed or errored test: ``kind`` is ``failed`` or ``errored``."""

    __test__ = False  # not a pytest test class, whatever its name says

    name: str
    kind: str
    message: str
    report: str


@dataclass(frozen=True, slots=True)
class TestReport:
    """What the job's JUnit reports say, all files together."""

    __test__ = False

    tests: int = 0
    failed: int = 0
    errored: int = 0
    skipped: int = 0
    failures: tuple[TestFailure, ...] = ()
    files: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.errored - self.skipped

    def as_dict(self) -> dict[str, Any]:
        """The record's ``tests`` value (JSON)."""
        return {"tests": self.tests, "passed": self.passed, "failed": self.failed, "errored": self.errored,
                "skipped": self.skipped, "files": list(self.files), "problems": list(self.problems),
                "failures": [{"name": f.name, "kind": f.kind, "message": f.message, "report": f.report}
                             for f in self.failures]}


def parse_junit(data: bytes, name: str) -> TestReport:
    """The report in ``data`` (the file ``name``, for messages); a report that is too large, not
    XML, or declares a DTD or entities gives counts of 0 and a problem saying why.

    >>> parse_junit(b"<!DOCTYPE x [<!ENTITY a 'b'>]><testsuite/>", "x.xml").problems
    ('x.xml: refused: the report declares a DTD or entities (not allowed in a test report)',)
    """
    if len(data) > MAX_REPORT_BYTES:
        return TestReport(files=(name,), problems=(
            f"{name}: not read: {len(data)} bytes, more than the {MAX_REPORT_BYTES} a report may have",))
    counts = {"tests": 0, "failed": 0, "errored": 0, "skipped": 0}
    failures: list[TestFailure] = []
    try:
        _walk(data, name, counts, failures)
    except DefusedXmlException:
        return TestReport(files=(name,), problems=(
            f"{name}: refused: the report declares a DTD or entities (not allowed in a test report)",))
    except _NotJunit as exc:
        return TestReport(files=(name,), problems=(
            f"{name}: not a JUnit report (its root element is <{_clip(str(exc), 60)}>)",))
    except (ParseError, ValueError) as exc:
        return TestReport(files=(name,), problems=(f"{name}: not a readable XML report: {_one_line(str(exc))}",))
    return TestReport(counts["tests"], counts["failed"], counts["errored"], counts["skipped"], tuple(failures),
                      (name,))


class _NotJunit(Exception):
    """The document's root element is not a JUnit one (the message is its name)."""


def _walk(data: bytes, name: str, counts: dict[str, int], failures: list[TestFailure]) -> None:
    """Count the test cases of ``data`` as they are read (``iterparse``): each finished case is
    judged, then dropped from its parent, so memory holds one case at a time, not the tree (a
    32 MB report of a million empty cases would otherwise be a few hundred MB of elements)."""
    stack: list[Element] = []
    for event, element in iterparse(io.BytesIO(data), events=("start", "end"), forbid_dtd=True,
                                    forbid_entities=True, forbid_external=True):
        if event == "start":
            if not stack and _local(element.tag) not in ("testsuites", "testsuite", "testcase"):
                raise _NotJunit(_local(element.tag))
            stack.append(element)
            continue
        stack.pop()
        if _local(element.tag) != "testcase":
            continue
        counts["tests"] += 1
        outcome = _outcome(element)
        if outcome is not None:
            kind, detail = outcome
            counts[kind] += 1
            if kind != "skipped" and len(failures) < MAX_FAILURES:
                failures.append(TestFailure(_case_name(element), kind, _message(detail), name))
        if stack:
            stack[-1].remove(element)


def merge(reports: list[TestReport]) -> TestReport:
    """Several files' reports as one (counts added, failures in file order, capped).

    >>> a, b = TestReport(tests=2, failed=1), TestReport(tests=3, skipped=1)
    >>> (merge([a, b]).tests, merge([a, b]).passed)
    (5, 3)
    """
    failures = tuple(f for r in reports for f in r.failures)[:MAX_FAILURES]
    return TestReport(
        tests=sum(r.tests for r in reports), failed=sum(r.failed for r in reports),
        errored=sum(r.errored for r in reports), skipped=sum(r.skipped for r in reports),
        failures=failures, files=tuple(f for r in reports for f in r.files),
        problems=tuple(p for r in reports for p in r.problems),
    )


def _local(tag: object) -> str:
    """An element's name without its namespace (``{urn:x}testcase`` is a testcase)."""
    text = tag if isinstance(tag, str) else ""
    return text.rpartition("}")[2]


def _outcome(case: Element) -> tuple[str, Element] | None:
    for child in case:
        kind = {"failure": "failed", "error": "errored", "skipped": "skipped"}.get(_local(child.tag))
        if kind is not None:
            return kind, child
    return None


def _case_name(case: Element) -> str:
    name = (case.get("name") or "").strip() or "(unnamed)"
    classname = (case.get("classname") or "").strip()
    return _clip(f"{classname}.{name}" if classname else name, NAME_CHARS)


def _message(element: Element) -> str:
    """The first lines of a failure: its ``message`` attribute, else its text (a traceback)."""
    text = element.get("message") or element.text or ""
    lines = [_clip(line.rstrip(), LINE_CHARS) for line in text.strip().splitlines()[:MESSAGE_LINES]]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return _clip(" ".join(text.split()), LINE_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["MAX_REPORT_BYTES", "TestFailure", "TestReport", "merge", "parse_junit"]
