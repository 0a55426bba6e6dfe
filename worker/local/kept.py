"""What ``sandpit run`` prints after its summary table: the jobs' test reports and where their
artifacts are (pure: job records in, lines out).

Test names and messages come from the job's JUnit files and artifact paths from its workspace, so
every one goes through ``quote_for_terminal`` (a report cannot move the cursor or forge a line).

>>> from worker.terminal import Paint
>>> rec = {"name": "test", "id": "j1", "tests": {"tests": 3, "passed": 1, "failed": 1, "errored": 0, "skipped": 1,
...        "files": ["r.xml"], "problems": [], "failures": [{"name": "t.a", "kind": "failed", "message": "boom"}]},
...        "artifacts": [{"path": "r.xml", "size": 2048, "sha256": "0" * 64}]}
>>> print("\\n".join(kept_lines("r1", [rec], Paint(False))))
<BLANKLINE>
tests
  test  3 tests: 1 passed, 1 failed, 1 skipped (r.xml)
    failed t.a: boom
<BLANKLINE>
artifacts (content-addressed in the state dir; `sandpit artifacts ID -o DIR` copies them out)
  test  1 file, 2.0 KB: sandpit artifacts j1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.terminal import Paint, quote_for_terminal

FAILURES_SHOWN = 10  # per job; the record keeps more


def kept_lines(run_id: str, records: Sequence[Mapping[str, Any]], paint: Paint) -> list[str]:
    lines: list[str] = []
    with_tests = [r for r in records if isinstance(r.get("tests"), Mapping)]
    width = max((len(quote_for_terminal(str(r.get("name")))) for r in records), default=4)
    if with_tests:
        lines += ["", paint("bold", "tests")]
        for r in with_tests:
            lines += _test_lines(r, width, paint)
    with_files = [r for r in records if r.get("artifacts")]
    if with_files:
        lines += ["", paint("bold", "artifacts") + paint("dim", " (content-addressed in the state dir; "
                                                                 "`sandpit artifacts ID -o DIR` copies them out)")]
        for r in with_files:
            files = r["artifacts"]
            size = sum(int(f.get("size") or 0) for f in files if isinstance(f, Mapping))
            count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
            lines.append(f"  {quote_for_terminal(str(r.get('name'))).ljust(width)}  {count}, {_size(size)}: "
                         f"sandpit artifacts {r.get('id')}")
        if len(records) > 1:
            lines.append(f"  every job: sandpit artifacts {run_id}")
    return lines


def _test_lines(r: Mapping[str, Any], width: int, paint: Paint) -> list[str]:
    t = r["tests"]
    counts = [f"{t.get('passed', 0)} passed"] + [f"{t.get(k, 0)} {k}" for k in ("failed", "errored", "skipped")
                                                  if t.get(k)]
    files = ", ".join(quote_for_terminal(str(f)) for f in t.get("files") or [])
    bad = bool(t.get("failed") or t.get("errored"))
    summary = paint("red" if bad else "green", f"{t.get('tests', 0)} tests: {', '.join(counts)}")
    out = [f"  {quote_for_terminal(str(r.get('name'))).ljust(width)}  {summary}" + (f" ({files})" if files else "")]
    failures = [f for f in t.get("failures") or [] if isinstance(f, Mapping)]
    for f in failures[:FAILURES_SHOWN]:
        message = str(f.get("message") or "").splitlines()
        first = f": {quote_for_terminal(message[0], quotes=False)}" if message else ""
        out.append(f"    {paint('red', str(f.get('kind', 'failed')))} {quote_for_terminal(str(f.get('name')))}{first}")
        out += [f"      {quote_for_terminal(line, quotes=False)}" for line in message[1:]]
    more = max(0, int(t.get("failed", 0)) + int(t.get("errored", 0)) - min(len(failures), FAILURES_SHOWN))
    if more:
        out.append(f"    … and {more} more (the job record lists up to 50: --json)")
    for problem in t.get("problems") or []:
        out.append(f"    {paint('yellow', 'report')} {quote_for_terminal(str(problem), quotes=False)}")
    return out


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
