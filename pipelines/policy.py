"""The server's policy: what a run of each trust level may ask for, and what it gets unasked (pure).

Two levels, ``trusted`` and ``untrusted``; every run is one of them (the API decides which, see
docs/api.md; ``sandpit run`` is ``trusted`` unless ``--policy untrusted``). Each level has caps
(memory, cpus, pids, disk, timeout, log bytes, the runtimes a job may name, whether egress is
allowed, jobs per run, runs in flight per submitter) and defaults for what a pipeline leaves out.
:func:`admit` checks the planned jobs against the caps and fills the defaults in: a request over
a cap is refused with a problem naming the cap and the setting that raises it, never clamped,
so what the worker runs is what the pipeline asked for or what the server promised.

Settings come from a mapping (the process environment at the entry point), one variable per
value: ``SANDPIT_POLICY_<LEVEL>_<CAP>`` and ``SANDPIT_POLICY_<LEVEL>_DEFAULT_<NAME>``; see
:data:`CAPS` and README "Policy". Environment variables rather than a policy file: every other
setting of sandpit is one, compose and systemd pass them the same way, and one source means no
precedence rules. An unknown ``SANDPIT_POLICY_*`` name is an error (a typo must not leave a level
open). ``none`` lifts a numeric cap.

>>> from pipelines.language.model import Job, Loc, SandboxSpec
>>> policy = Policy.from_env({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "1G"})
>>> big = Job(name="big", stage="test", loc=Loc("ci.yml", 1, 1), sandbox=SandboxSpec(memory_bytes=2 * 1024**3))
>>> [p.message for p in check_jobs([big], policy.untrusted)]
['job `big` asks for memory 2 GiB; the untrusted policy allows at most 1 GiB (SANDPIT_POLICY_UNTRUSTED_MEMORY)']
>>> admit_jobs([Job(name="t", stage="test", loc=Loc("ci.yml", 1, 1))], policy.untrusted)[0].sandbox.memory_bytes
1073741824
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

from pipelines.language.model import Job, Plan, SandboxSpec
from pipelines.language.problems import Loc, Problem
from pipelines.language.quantities import parse_cpus, parse_duration, parse_pids, parse_size

TrustLevel = Literal["trusted", "untrusted"]
TRUST_LEVELS: tuple[TrustLevel, ...] = ("trusted", "untrusted")
RUNTIMES = ("crun", "runc", "runsc")
PREFIX = "SANDPIT_POLICY_"
GiB = 1024**3
MiB = 1024**2


class PolicyError(ValueError):
    """A policy setting that cannot be used (raised at start-up, never per request)."""


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """The caps (None: no cap) and defaults of one trust level. Defaults never exceed caps."""

    level: TrustLevel
    max_memory_bytes: int | None
    max_cpus: float | None
    max_pids: int | None
    max_disk_bytes: int | None
    max_timeout_s: int | None
    max_log_bytes: int | None
    runtimes: tuple[str, ...]
    egress: bool
    max_jobs: int | None
    max_runs_in_flight: int | None
    memory_bytes: int
    cpus: float
    pids: int
    disk_bytes: int
    timeout_s: int
    log_bytes: int
    runtime: str | None  # None: the worker's own choice (only when every runtime is allowed)

    def setting(self, cap: str) -> str:
        """The environment variable that sets ``cap`` (a key of :data:`CAPS`) at this level."""
        return f"{PREFIX}{self.level.upper()}_{cap}"


@dataclass(frozen=True, slots=True)
class Policy:
    trusted: LevelPolicy
    untrusted: LevelPolicy

    def level(self, name: str) -> LevelPolicy:
        if name == "trusted":
            return self.trusted
        if name == "untrusted":
            return self.untrusted
        raise PolicyError(f"the trust level is `trusted` or `untrusted`, not {name!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Policy:
        """The policy the ``SANDPIT_POLICY_*`` entries of ``env`` describe (others ignored).

        >>> Policy.from_env({}).untrusted.egress, Policy.from_env({}).trusted.egress
        (False, True)
        >>> try:
        ...     Policy.from_env({"SANDPIT_POLICY_UNTRUSTED_MEMROY": "1G"})
        ... except PolicyError as exc:
        ...     print(exc)
        SANDPIT_POLICY_UNTRUSTED_MEMROY is not a policy setting (did you mean SANDPIT_POLICY_UNTRUSTED_MEMORY?)
        """
        known = {f"{PREFIX}{level.upper()}_{name}" for level in TRUST_LEVELS for name in SETTINGS}
        for name in sorted(env):
            if name.startswith(PREFIX) and name not in known:
                raise PolicyError(f"{name} is not a policy setting{_did_you_mean(name, known)}")
        return cls(*(_level(level, env) for level in TRUST_LEVELS))


def _did_you_mean(name: str, known: set[str]) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"


# --- the settings ---------------------------------------------------------------------------

Reader = Callable[[str], object]


def _cap(parse: Callable[[str], object]) -> Reader:
    return lambda text: None if text.strip().lower() in ("none", "unlimited") else parse(text)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _runtimes(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    wrong = [name for name in names if name not in RUNTIMES]
    if wrong or not names:
        raise ValueError(f"{text!r} is not a comma-separated list of {', '.join(RUNTIMES)}")
    return names


def _runtime(text: str) -> str | None:
    if text.strip().lower() in ("", "auto"):
        return None
    return _runtimes(text.strip())[0]


def _count(text: str) -> int:
    return parse_pids(text)


#: setting suffix -> (LevelPolicy field, reader, untrusted default, trusted default, what it is)
SETTINGS: dict[str, tuple[str, Reader, str, str, str]] = {
    "MEMORY": ("max_memory_bytes", _cap(parse_size), "4G", "16G", "memory per job"),
    "CPUS": ("max_cpus", _cap(parse_cpus), "2", "8", "cpus per job"),
    "PIDS": ("max_pids", _cap(parse_pids), "2048", "32768", "processes per job"),
    "DISK": ("max_disk_bytes", _cap(parse_size), "8G", "64G", "disk per job"),
    "TIMEOUT": ("max_timeout_s", _cap(parse_duration), "1h", "24h", "timeout per job"),
    "LOG": ("max_log_bytes", _cap(parse_size), "16M", "256M", "log bytes per job"),
    "RUNTIMES": ("runtimes", _runtimes, "crun,runc,runsc", "crun,runc,runsc", "runtimes a job may name"),
    "EGRESS": ("egress", _bool, "false", "true", "whether a job may have network: egress"),
    "JOBS": ("max_jobs", _cap(_count), "500", "500", "jobs per run"),
    "RUNS": ("max_runs_in_flight", _cap(_count), "50", "500", "runs in flight per submitter"),
    "DEFAULT_MEMORY": ("memory_bytes", parse_size, "2G", "2G", "memory of a job that does not say"),
    "DEFAULT_CPUS": ("cpus", parse_cpus, "1", "1", "cpus of a job that does not say"),
    "DEFAULT_PIDS": ("pids", parse_pids, "1024", "1024", "processes of a job that does not say"),
    "DEFAULT_DISK": ("disk_bytes", parse_size, "4G", "4G", "disk of a job that does not say"),
    "DEFAULT_TIMEOUT": ("timeout_s", parse_duration, "1h", "1h", "timeout of a job that does not say"),
    "DEFAULT_LOG": ("log_bytes", parse_size, "16M", "16M", "log bytes of every job"),
    "DEFAULT_RUNTIME": ("runtime", _runtime, "auto", "auto", "runtime of a job that does not say"),
}
#: the caps a problem can name (suffix -> LevelPolicy field)
CAPS = {suffix: spec[0] for suffix, spec in SETTINGS.items() if not suffix.startswith("DEFAULT_")}
_DEFAULT_OF = {"max_memory_bytes": "memory_bytes", "max_cpus": "cpus", "max_pids": "pids",
               "max_disk_bytes": "disk_bytes", "max_timeout_s": "timeout_s", "max_log_bytes": "log_bytes"}


def _level(level: TrustLevel, env: Mapping[str, str]) -> LevelPolicy:
    """One level's values. A built-in default above a cap the operator lowered follows the cap
    down (setting ``..._MEMORY=1G`` alone must work); an explicit default above its cap is an error."""
    values: dict[str, object] = {"level": level}
    explicit: set[str] = set()
    for suffix, (name, read, untrusted, trusted, _what) in SETTINGS.items():
        variable = f"{PREFIX}{level.upper()}_{suffix}"
        given = env.get(variable, "").strip()
        if given:
            explicit.add(name)
        text = given or (trusted if level == "trusted" else untrusted)
        try:
            values[name] = read(text)
        except ValueError as exc:
            raise PolicyError(f"{variable}: {exc}") from None
    for cap, default in _DEFAULT_OF.items():
        limit = values[cap]
        if default not in explicit and limit is not None and values[default] > limit:  # type: ignore[operator]
            values[default] = limit
    runtimes = values["runtimes"]
    assert isinstance(runtimes, tuple)
    if values["runtime"] is None and set(runtimes) != set(RUNTIMES):
        values["runtime"] = runtimes[0]
    policy = LevelPolicy(**values)  # type: ignore[arg-type]
    for cap, default in _DEFAULT_OF.items():
        limit, value = getattr(policy, cap), getattr(policy, default)
        if limit is not None and value > limit:
            raise PolicyError(
                f"{PREFIX}{level.upper()}_DEFAULT_{_suffix(cap)} ({_show(cap, value)}) is over "
                f"{policy.setting(_suffix(cap))} ({_show(cap, limit)})"
            )
    if policy.runtime is not None and policy.runtime not in policy.runtimes:
        raise PolicyError(
            f"{policy.setting('DEFAULT_RUNTIME')} {policy.runtime} is not in {policy.setting('RUNTIMES')}"
        )
    return policy


def _suffix(field_name: str) -> str:
    return next(suffix for suffix, name in CAPS.items() if name == field_name)


def _show(field_name: str, value: float) -> str:
    """A cap or request as people write it: ``2 GiB``, ``1.5``, ``1h 30m``.

    >>> _show("max_memory_bytes", 3 * 1024**3 // 2), _show("max_timeout_s", 5400), _show("max_cpus", 2.0)
    ('1.5 GiB', '1h 30m', '2')
    """
    if field_name in ("max_memory_bytes", "max_disk_bytes", "max_log_bytes"):
        for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
            if value >= size:
                return f"{value / size:.4g} {unit}"
        return f"{int(value)} bytes"
    if field_name == "max_timeout_s":
        hours, rest = divmod(int(value), 3600)
        minutes, seconds = divmod(rest, 60)
        parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
        return " ".join(parts) or "0s"
    return f"{value:g}"


# --- the check ------------------------------------------------------------------------------


def _requests(job: Job) -> dict[str, float | None]:
    sb = job.sandbox
    return {"max_memory_bytes": sb.memory_bytes, "max_cpus": sb.cpus, "max_pids": sb.pids,
            "max_disk_bytes": sb.disk_bytes, "max_timeout_s": job.timeout_seconds,
            "max_log_bytes": sb.log_bytes}


_WORDS = {"max_memory_bytes": "memory", "max_cpus": "cpus", "max_pids": "pids", "max_disk_bytes": "disk",
          "max_timeout_s": "a timeout of", "max_log_bytes": "a log limit of"}


def check_jobs(jobs: Sequence[Job], policy: LevelPolicy) -> tuple[Problem, ...]:
    """Every way the planned ``jobs`` of one run exceed ``policy``, each an ``over-policy`` error at
    the job's definition that names the cap and the setting that raises it.

    >>> from pipelines.language.model import Loc, SandboxSpec
    >>> job = Job(name="net", stage="test", loc=Loc("ci.yml", 4, 1), sandbox=SandboxSpec(network="egress"))
    >>> problem = check_jobs([job], Policy.from_env({}).untrusted)[0]
    >>> str(problem.loc), problem.code, problem.message.endswith("allows no egress (SANDPIT_POLICY_UNTRUSTED_EGRESS)")
    ('ci.yml:4:1', 'over-policy', True)
    """
    out: list[Problem] = []
    level = policy.level
    if policy.max_jobs is not None and len(jobs) > policy.max_jobs:
        first_over = jobs[policy.max_jobs]
        out.append(_problem(
            first_over.loc,
            f"the pipeline plans {len(jobs)} jobs; the {level} policy allows at most {policy.max_jobs} per run "
            f"({policy.setting('JOBS')})",
            f"split the pipeline into several runs of at most {policy.max_jobs} jobs (this is job "
            f"{policy.max_jobs + 1}, `{_quoted(first_over.name)}`)",
        ))
    for job in jobs:
        name = _quoted(job.name)
        for cap, asked in _requests(job).items():
            limit = getattr(policy, cap)
            if asked is None or limit is None or asked <= limit:
                continue
            suffix = _suffix(cap)
            out.append(_problem(
                job.loc,
                f"job `{name}` asks for {_WORDS[cap]} {_show(cap, asked)}; the {level} policy allows at most "
                f"{_show(cap, limit)} ({policy.setting(suffix)})",
                f"ask for at most {_show(cap, limit)}, or leave it out for the default of "
                f"{_show(cap, getattr(policy, _DEFAULT_OF[cap]))}",
            ))
        runtime = job.sandbox.runtime
        if runtime is not None and runtime not in policy.runtimes:
            out.append(_problem(
                job.loc,
                f"job `{name}` asks for runtime {_quoted(runtime)}; the {level} policy allows "
                f"{', '.join(policy.runtimes)} ({policy.setting('RUNTIMES')})",
                f"use runtime: {policy.runtimes[0]}, or leave it out",
            ))
        if job.sandbox.network == "egress" and not policy.egress:
            out.append(_problem(
                job.loc,
                f"job `{name}` asks for network: egress; the {level} policy allows no egress "
                f"({policy.setting('EGRESS')})",
                "leave out `network: egress` (jobs run with loopback only), or run the pipeline as trusted",
            ))
    return tuple(out)


def _problem(loc: Loc, message: str, hint: str) -> Problem:
    return Problem(loc, "error", "over-policy", message, hint)


def _quoted(text: str) -> str:
    """Job-controlled text made safe for a message: control characters and backslashes escaped.

    >>> _quoted("a\\x1b[31mb")
    'a\\\\x1b[31mb'
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else ascii(ch)[1:-1] if ch != "\\" else "\\\\"
                   for ch in text)


def fill_defaults(job: Job, policy: LevelPolicy, filled: SandboxSpec | None = None) -> Job:
    """``job`` with every limit it leaves out set to the level's default (what the worker runs);
    ``filled``: :func:`filled_sandbox` of its sandbox, if the caller has it.

    >>> from pipelines.language.model import Loc
    >>> job = fill_defaults(Job(name="t", stage="test", loc=Loc("ci.yml", 1, 1)), Policy.from_env({}).untrusted)
    >>> job.sandbox.cpus, job.timeout_seconds, job.sandbox.log_bytes
    (1.0, 3600, 16777216)
    """
    sandbox = filled if filled is not None else filled_sandbox(job.sandbox, policy)
    timeout = job.timeout_seconds if job.timeout_seconds is not None else policy.timeout_s
    return replace(job, sandbox=sandbox, timeout_seconds=timeout)


def filled_sandbox(sb: SandboxSpec, policy: LevelPolicy) -> SandboxSpec:
    """The sandbox request with the level's defaults where it says nothing."""
    return replace(
        sb,
        memory_bytes=sb.memory_bytes if sb.memory_bytes is not None else policy.memory_bytes,
        cpus=sb.cpus if sb.cpus is not None else policy.cpus,
        pids=sb.pids if sb.pids is not None else policy.pids,
        disk_bytes=sb.disk_bytes if sb.disk_bytes is not None else policy.disk_bytes,
        log_bytes=sb.log_bytes if sb.log_bytes is not None else policy.log_bytes,
        runtime=sb.runtime if sb.runtime is not None else policy.runtime,
    )


def admit_jobs(jobs: Sequence[Job], policy: LevelPolicy) -> tuple[Job, ...]:
    """The jobs with defaults filled in; call :func:`check_jobs` first (this does not check).
    Jobs of one pipeline share a few sandbox requests (``default:``, matrix copies): each distinct
    one is filled once."""
    cache: dict[SandboxSpec, SandboxSpec] = {}
    out = []
    for job in jobs:
        filled = cache.get(job.sandbox)
        if filled is None:
            filled = cache[job.sandbox] = filled_sandbox(job.sandbox, policy)
        out.append(fill_defaults(job, policy, filled))
    return tuple(out)


def admit(plan: Plan, policy: LevelPolicy) -> Plan | tuple[Problem, ...]:
    """The plan as the server runs it (defaults filled), or every problem that refuses it.

    >>> from pipelines.language.planner import plan as make_plan
    >>> planned = make_plan({"ci.yml": "t: {script: [x], sandbox: {cpus: 16}}"})
    >>> [p.code for p in admit(planned, Policy.from_env({}).untrusted)]  # type: ignore[arg-type,union-attr]
    ['over-policy']
    """
    problems = check_jobs(plan.jobs, policy)
    if problems:
        return problems
    return replace(plan, jobs=admit_jobs(plan.jobs, policy))


def describe(policy: LevelPolicy) -> dict[str, object]:
    """The level's values as plain data (for ``lint --json`` and docs)."""
    return {f.name: getattr(policy, f.name) for f in fields(policy)}
