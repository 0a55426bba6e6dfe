"""JUnit reports read into a summary (worker/junit.py): real formats counted right, hostile XML refused."""

from __future__ import annotations

import resource
import time

import pytest

from worker.junit import MAX_FAILURES, MAX_REPORT_BYTES, TestReport, merge, parse_junit

PYTEST = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="0.1">
<testcase classname="tests.test_app" name="test_ok" time="0.001"/>
<testcase classname="tests.test_app" name="test_math" time="0.002">
<failure message="assert 1 == 2">def test_math():
&gt;       assert 1 == 2
E       assert 1 == 2
tests/test_app.py:5: AssertionError</failure></testcase>
<testcase classname="tests.test_app" name="test_fixture" time="0">
<error message="failed on setup with &quot;boom&quot;">trace</error></testcase>
<testcase classname="tests.test_app" name="test_later" time="0"><skipped type="pytest.skip" message="later"/></testcase>
</testsuite></testsuites>"""

SUREFIRE = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.example.AppTest" tests="2" failures="5">
<testcase name="adds" classname="com.example.AppTest" time="0.01"/>
<testcase name="divides" classname="com.example.AppTest" time="0.01">
<failure type="java.lang.ArithmeticException">java.lang.ArithmeticException: / by zero
\tat com.example.App.divide(App.java:9)
\tat com.example.AppTest.divides(AppTest.java:14)
\tat more</failure></testcase></testsuite>"""


def test_pytest_report_counts_each_outcome_and_names_what_failed() -> None:
    """Passed, failed, errored and skipped cases are counted from the cases; failures keep their
    class-qualified name and the message attribute."""
    r = parse_junit(PYTEST, "report.xml")
    assert (r.tests, r.passed, r.failed, r.errored, r.skipped) == (4, 1, 1, 1, 1)
    assert [(f.name, f.kind, f.message) for f in r.failures] == [
        ("tests.test_app.test_math", "failed", "assert 1 == 2"),
        ("tests.test_app.test_fixture", "errored", 'failed on setup with "boom"'),
    ]
    assert r.problems == () and r.files == ("report.xml",)


def test_counts_come_from_cases_not_from_the_suite_attributes() -> None:
    """Surefire's suite says failures="5" (a lie here); the cases say one. Without a message attribute
    the first lines of the failure's text are kept (three at most)."""
    r = parse_junit(SUREFIRE, "TEST-App.xml")
    assert (r.tests, r.failed) == (2, 1)
    assert r.failures[0].message.splitlines() == [
        "java.lang.ArithmeticException: / by zero", "\tat com.example.App.divide(App.java:9)",
        "\tat com.example.AppTest.divides(AppTest.java:14)"]


def test_namespaced_elements_and_a_bare_testcase_root_are_read() -> None:
    r = parse_junit(b'<x:testsuite xmlns:x="urn:x"><x:testcase name="a"><x:skipped/></x:testcase></x:testsuite>', "n")
    assert (r.tests, r.skipped) == (1, 1)
    assert parse_junit(b'<testcase name="solo"/>', "s").tests == 1


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<testsuite><testcase name="x"><failure message="&lol9;"/></testcase></testsuite>"""

HOSTILE = {
    "billion laughs": BILLION_LAUGHS,
    "external entity": b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY xxe SYSTEM "file:///etc/shadow">]>'
                       b'<testsuite><testcase name="a"><failure message="&xxe;"/></testcase></testsuite>',
    "external DTD": b'<?xml version="1.0"?><!DOCTYPE testsuite SYSTEM "http://127.0.0.1:9/x.dtd">'
                    b'<testsuite><testcase name="a"/></testsuite>',
    "parameter entity": b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                        b'<testsuite/>',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_dtds_and_entities_are_refused_without_expanding_anything(kind: str) -> None:
    """Every DOCTYPE is refused before a declaration is used: nothing expands, nothing is fetched or
    read, the counts stay 0 and the problem says why; it takes no time and no memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    r = parse_junit(HOSTILE[kind], "evil.xml")
    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert (r.tests, r.failures) == (0, ())
    assert r.problems == ("evil.xml: refused: the report declares a DTD or entities (not allowed in a test report)",)
    assert "root:" not in repr(r)


def test_a_report_over_the_size_cap_is_not_parsed() -> None:
    """A huge file is refused by its size before a byte of it is parsed."""
    huge = b"<testsuite>" + b"<testcase name='a'/>" * (MAX_REPORT_BYTES // 20) + b"</testsuite>"
    assert len(huge) > MAX_REPORT_BYTES
    started = time.perf_counter()
    r = parse_junit(huge, "big.xml")
    assert time.perf_counter() - started < 0.1
    assert r.tests == 0 and r.problems[0].startswith("big.xml: not read: ")


def test_many_cases_are_counted_exactly_but_listed_up_to_the_cap() -> None:
    """Under the cap a report of many cases is walked case by case; failures named are capped,
    messages are cut to lines and characters."""
    cases = b"".join(b'<testcase name="t%d"><failure message="%s"/></testcase>' % (i, b"x" * 1000)
                     for i in range(5000))
    r = parse_junit(b"<testsuite>" + cases + b"</testsuite>", "many.xml")
    assert (r.tests, r.failed, len(r.failures)) == (5000, 5000, MAX_FAILURES)
    assert len(r.failures[0].message) == 200 and r.failures[0].message.endswith("…")


@pytest.mark.parametrize(("data", "says"), [
    (b"<testsuite><testcase name='a'>", "not a readable XML report"),
    (b"", "not a readable XML report"),
    (b"\xff\xfe<garbage", "not a readable XML report"),
    (b"<html><body>oops</body></html>", "not a JUnit report (its root element is <html>)"),
    (b"not xml at all", "not a readable XML report"),
])
def test_malformed_or_foreign_files_give_a_problem_not_an_exception(data: bytes, says: str) -> None:
    r = parse_junit(data, "r.xml")
    assert r.tests == 0 and len(r.problems) == 1 and says in r.problems[0], r.problems


def test_reports_merge_and_serialise_for_the_record() -> None:
    a = parse_junit(PYTEST, "a.xml")
    b = parse_junit(b"<oops", "b.xml")
    both = merge([a, b, TestReport()])
    record = both.as_dict()
    counts = [record[k] for k in ("tests", "passed", "failed", "errored", "skipped")]
    assert counts == [4, 1, 1, 1, 1]
    assert record["files"] == ["a.xml", "b.xml"] and len(record["problems"]) == 1
    assert record["failures"][0] == {"name": "tests.test_app.test_math", "kind": "failed",
                                     "message": "assert 1 == 2", "report": "a.xml"}
