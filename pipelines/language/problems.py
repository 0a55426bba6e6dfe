"""Problems found in a pipeline file: where, how bad, a stable code, and how to fix it (pure).

Every stage of the language (YAML, includes, extends, job fields, rules, graph) appends to one
:class:`ProblemSink`, so a user sees every mistake at once instead of one per run.

>>> sink = ProblemSink()
>>> sink.error(Loc(".gitlab-ci.yml", 3, 5), "unknown-key", "unknown key 'scrpt'", "did you mean 'script'?")
>>> sink.problems()[0].render()
".gitlab-ci.yml:3:5: error[unknown-key]: unknown key 'scrpt'\\n  hint: did you mean 'script'?"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True, order=True)
class Loc:
    """A position in a source file; line and column count from 1."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding. ``caused_by`` points at an unsupported or unloaded include that probably
    defines what this problem says is missing, so tools can tell root causes from consequences."""

    loc: Loc
    severity: Severity
    code: str
    message: str
    hint: str
    caused_by: Loc | None = None

    def render(self) -> str:
        """The compiler-style form: ``file:line:col: error[code]: message`` and a hint line."""
        text = f"{self.loc}: {self.severity}[{self.code}]: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        if self.caused_by is not None:
            text += (
                f"\n  note: probably defined in the include at {self.caused_by}, which sandpit did not load"
            )
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.loc.file,
            "line": self.loc.line,
            "col": self.loc.col,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "caused_by": None if self.caused_by is None else str(self.caused_by),
        }


@dataclass(frozen=True, slots=True)
class Problems:
    """The result of a pipeline that cannot be planned: at least one error, plus any warnings."""

    items: tuple[Problem, ...]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.items if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.items if p.severity == "warning")

    def codes(self) -> list[str]:
        return [p.code for p in self.items]


class ProblemSink:
    """Collects problems from every stage; sorted by location when read."""

    __slots__ = ("_items", "_seen")

    def __init__(self) -> None:
        self._items: list[Problem] = []
        self._seen: set[tuple[Loc, str, str]] = set()

    def add(self, problem: Problem) -> None:
        # The same YAML node reached through an anchor or through `extends` would report twice.
        key = (problem.loc, problem.code, problem.message)
        if key not in self._seen:
            self._seen.add(key)
            self._items.append(problem)

    def error(self, loc: Loc, code: str, message: str, hint: str, caused_by: Loc | None = None) -> None:
        self.add(Problem(loc, "error", code, message, hint, caused_by))

    def warning(self, loc: Loc, code: str, message: str, hint: str) -> None:
        self.add(Problem(loc, "warning", code, message, hint))

    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self._items)

    def problems(self) -> tuple[Problem, ...]:
        return tuple(sorted(self._items, key=lambda p: (p.loc, p.code)))


# Every code sandpit emits, with its severity and one line of meaning; docs/pipeline-language.md
# lists the same table and a test keeps the two in step.
CODES: dict[str, tuple[Severity, str]] = {
    "yaml-syntax": ("error", "the file is not valid YAML"),
    "yaml-structure": ("error", "the YAML is valid but not a pipeline (e.g. the top level is a list)"),
    "yaml-tag": ("error", "a YAML tag sandpit does not know (only !reference is supported)"),
    "yaml-too-large": ("error", "aliases expand to an unreasonably large document"),
    "duplicate-key": ("warning", "a key appears twice in one mapping; the last one wins, as in GitLab"),
    "unknown-key": ("error", "a key that is neither GitLab nor sandpit syntax (often a typo)"),
    "invalid-type": ("error", "a value of the wrong type (e.g. a list where a string belongs)"),
    "invalid-value": ("error", "a value outside what the key accepts"),
    "unsupported": ("error", "valid GitLab syntax sandpit cannot run; ignoring it would change the result"),
    "unsupported-ignored": ("warning", "valid GitLab syntax sandpit ignores; it does not change what runs"),
    "include-not-found": ("error", "`include: local` names a file that is not in the repository"),
    "include-outside-repo": ("error", "`include: local` leaves the repository (.. or an absolute host path)"),
    "unknown-extends": ("error", "`extends` names a job or template that does not exist"),
    "extends-cycle": ("error", "`extends` chains loop back on themselves"),
    "extends-too-deep": ("error", "`extends` nests more than 11 levels"),
    "unknown-reference": ("error", "`!reference` names a job or key that does not exist"),
    "reference-cycle": ("error", "`!reference` values refer back to themselves"),
    "blank-rules": ("error", "`rules: []`: GitLab refuses blank rules"),
    "need-later-stage": ("error", "a need names a job of a later stage"),
    "artifact-outside-project": ("error", "an artifacts path outside the project directory"),
    "invalid-expression": ("error", "a rules:if / only:variables expression does not parse"),
    "invalid-regex": ("error", "a /regex/ that does not compile"),
    "invalid-duration": ("error", "a duration sandpit cannot read (timeout, expire_in, start_in)"),
    "invalid-size": ("error", "a sandbox size or count sandpit cannot read"),
    "over-policy": ("error", "a sandbox request above what the server policy allows"),
    "unknown-stage": ("error", "a job's stage is not in `stages`"),
    "missing-script": ("error", "a visible job without script (or run/trigger)"),
    "no-jobs": ("error", "the pipeline defines no visible job"),
    "invalid-parallel": ("error", "parallel outside 1..200 or a malformed matrix"),
    "duplicate-job": ("error", "two jobs end up with the same name (e.g. after parallel:matrix)"),
    "conflicting-keys": ("error", "keys that GitLab forbids together (rules with only/except)"),
    "unknown-need": ("error", "`needs` names a job that does not exist"),
    "need-not-planned": ("error", "`needs` names a job that rules or only/except removed from this run"),
    "needs-cycle": ("error", "`needs` edges form a cycle"),
    "unknown-dependency": ("error", "`dependencies` names a job that does not exist or is not planned"),
    "dependency-not-needed": ("error", "`dependencies` names a job not listed in the job's `needs`"),
    "dependency-later-stage": ("error", "`dependencies` names a job of the same or a later stage"),
    "invalid-character": ("error", "a NUL or lone surrogate in a value, or a control character in a name or key"),
    "name-too-long": ("error", "a job or stage name longer than 255 characters (or a key past YAML's 1,024)"),
    "image-unavailable": ("warning", "an image the image store cannot run (registry host, digest, unprovided tag)"),
    "variable-type": ("warning", "a variable value that is not a string or number; sandpit stringifies it"),
}
