"""Warm sandboxes (worker/sandbox/warm.py): a job started in a sandbox made ahead is the job a cold
start would have run, holds nothing of the job before it, and everything is torn down."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.job_record import JobRecord
from pipelines.record import replace
from tests.sandbox.conftest import MADE_LOGS
from worker.sandbox.engine import Engine
from worker.sandbox.reaper import leftovers
from worker.sandbox.request import Limits, SandboxRequest
from worker.sandbox.seed import Seed
from worker.sandbox.warm import Afterwards, WarmPool, WarmSandbox
from worker.settings import Settings

#: what a job shows of itself: everything a warm start must keep as a cold one has it
PROBE = ("exec 2>&1; env | sort; echo cwd=$(pwd) shlvl=$SHLVL; id; ulimit -a; umask;"
         " grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status;"
         " tr '\\0' '\\n' < /proc/1/environ | sort;"
         " tr '\\0' ' ' < /proc/1/cmdline; echo; hostname; ls -A /workspace | wc -l; echo $0 $$; trap")


@pytest.fixture()
def warm_engine(settings: Settings, no_leftovers: None) -> Iterator[Engine]:
    engine = Engine(settings)
    engine.warm = WarmPool(1, 60.0)
    try:
        yield engine
    finally:
        engine.close()  # the pool's sandboxes too: no_leftovers checks after this


def job(engine: Engine, script: str, shell: str = "/bin/sh", **kw: object) -> tuple[JobRecord, str]:
    """Run ``shell -c script`` as the service worker does (teardown, then a warm sandbox, afterwards)."""
    out: list[bytes] = []
    req = replace(SandboxRequest(argv=(shell, "-c", script), runtime="crun"), **kw)  # type: ignore[arg-type]
    afterwards = Afterwards()
    record = engine.run(req, sink=lambda _s, data: out.append(data), afterwards=afterwards)
    engine.finish(afterwards)
    if record.log_path:
        MADE_LOGS.append(Path(record.log_path))
    return record, b"".join(out).decode(errors="replace")


def waiting(engine: Engine) -> WarmSandbox | None:
    assert engine.warm is not None
    ready = list(engine.warm._ready)
    return ready[-1] if ready else None


def mark_waiting(engine: Engine) -> str | None:
    """Leave a token in the root of the sandbox waiting in ``engine``'s pool (None: none waits)."""
    warm = waiting(engine)
    if warm is None:
        return None
    token = secrets.token_hex(8)
    (warm.box.rootfs.path / ".warm-mark").write_text(token)
    return token


def probe(script: str) -> str:
    """``script``, then the token in the job's root, if any (its last line: ``mark=...``)."""
    return f"{script}; echo mark=$(cat /.warm-mark 2>/dev/null)"


def started_warm(token: str | None, out: str) -> bool:
    """Whether the job whose output is ``out`` ran in the sandbox marked ``token``."""
    last = out.rstrip("\n").rsplit("\n", 1)[-1]
    return token is not None and last == f"mark={token}"


@pytest.mark.parametrize("shell", ["/bin/sh", "/usr/bin/bash"])  # dash, and what GitLab jobs get on debian
def test_a_warm_start_is_the_job_a_cold_start_runs(warm_engine: Engine, shell: str):
    assert waiting(warm_engine) is None
    cold, cold_out = job(warm_engine, probe(PROBE), shell, env=(("A", "1"),))
    before = waiting(warm_engine)
    root = mark_waiting(warm_engine)  # made for the next job like this one
    assert root is not None and cold_out.endswith("mark=\n")
    warm, warm_out = job(warm_engine, probe(PROBE), shell, env=(("A", "1"),))
    assert (cold.status, warm.status) == ("succeeded", "succeeded")
    assert started_warm(root, warm_out)
    assert waiting(warm_engine) not in (None, before)  # and a warm job leaves one for the next too
    assert warm_out.splitlines()[:-1] == cold_out.splitlines()[:-1]
    assert "A=1" in warm_out and "cwd=/workspace" in warm_out and f"{shell} -c exec 2>&1; env | sort" in warm_out


def test_nothing_of_the_job_before_reaches_the_next(warm_engine: Engine):
    first, _ = job(warm_engine, "echo hi > /workspace/left", env=(("TOKEN", "s3cret-one"),))
    assert first.status == "succeeded"
    root = mark_waiting(warm_engine)
    second, out = job(warm_engine, probe("env; tr '\\0' '\\n' < /proc/1/environ; ls -A /workspace"))
    assert second.status == "succeeded" and started_warm(root, out)
    assert "TOKEN" not in out and "s3cret-one" not in out and "left" not in out


def test_values_stay_values(warm_engine: Engine):
    job(warm_engine, "true")
    root = mark_waiting(warm_engine)
    hostile = "a'b\"c $(touch /workspace/ran) `touch /workspace/ran2` \\\n; exec false\nline3 ${HOME} '"
    record, out = job(warm_engine, probe('printf "%s|\\n" "$V"; ls -A /workspace'), env=(("V", hostile),))
    assert record.status == "succeeded" and started_warm(root, out)
    assert out.startswith(hostile + "|")
    assert "ran" not in out.split("|", 1)[1]


def test_a_job_unlike_the_sandbox_starts_cold_and_the_sandbox_goes(warm_engine: Engine, settings: Settings):
    job(warm_engine, "true")
    before = waiting(warm_engine)
    root = mark_waiting(warm_engine)
    record, out = job(warm_engine, probe("true"), limits=Limits(memory_bytes=300 * 1024 * 1024))
    assert record.status == "succeeded" and not started_warm(root, out)
    # the sandbox it did not fit was closed; the one made for it waits (held by its lease)
    assert waiting(warm_engine) not in (None, before)
    assert leftovers(settings) == []


def test_a_job_with_files_to_plant_never_starts_warm(warm_engine: Engine, tmp_path: Path):
    job(warm_engine, "true")
    before = waiting(warm_engine)
    root = mark_waiting(warm_engine)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    out: list[bytes] = []
    req = SandboxRequest(argv=("/bin/sh", "-c", probe("cat f")), runtime="crun")
    afterwards = Afterwards()
    record = warm_engine.run(req, sink=lambda _s, d: out.append(d), seed=Seed(source_dir=tmp_path / "src"),
                             afterwards=afterwards)
    warm_engine.finish(afterwards)
    if record.log_path:
        MADE_LOGS.append(Path(record.log_path))
    text = b"".join(out).decode()
    assert record.status == "succeeded" and text.startswith("x") and not started_warm(root, text)
    assert waiting(warm_engine) is before  # it left the waiting sandbox alone, and made none


def test_the_deadline_counts_from_the_job_not_from_the_sandbox(warm_engine: Engine):
    job(warm_engine, "true")
    root = mark_waiting(warm_engine)
    time.sleep(1.5)  # the sandbox has waited longer than the job may run
    record, out = job(warm_engine, probe("sleep 0.3"), limits=Limits(timeout_s=1.0))
    assert record.status == "succeeded" and started_warm(root, out)


def test_a_dead_launcher_costs_the_job_nothing(warm_engine: Engine):
    job(warm_engine, "true")
    assert warm_engine.warm is not None
    (waiting,) = warm_engine.warm._ready
    time.sleep(0.3)  # its launcher is up and in its cgroup
    waiting.box.cg.kill_all()  # as an OOM kill or an operator would
    deadline = time.monotonic() + 5
    while waiting.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not waiting.alive()
    record, out = job(warm_engine, probe("echo ok"))
    assert record.status == "succeeded" and out.startswith("ok")


def test_idle_sandboxes_are_closed(warm_engine: Engine, settings: Settings):
    assert warm_engine.warm is not None
    warm_engine.warm.idle_s = 0.2
    job(warm_engine, "true")
    assert len(warm_engine.warm) == 1
    time.sleep(0.3)
    assert warm_engine.warm.expire() == 1
    assert len(warm_engine.warm) == 0
    assert leftovers(settings) == []


def test_secrets_are_masked_in_a_warm_job(warm_engine: Engine):
    job(warm_engine, "true")
    root = mark_waiting(warm_engine)
    out: list[bytes] = []
    req = SandboxRequest(argv=("/bin/sh", "-c", probe('echo "k=$K"')), runtime="crun", env=(("K", "hunter2-secret"),))
    afterwards = Afterwards()
    record = warm_engine.run(req, sink=lambda _s, d: out.append(d), secrets=("hunter2-secret",),
                             afterwards=afterwards)
    warm_engine.finish(afterwards)
    assert record.status == "succeeded" and record.log_path
    MADE_LOGS.append(Path(record.log_path))
    assert started_warm(root, b"".join(out).decode())
    stored = Path(record.log_path).read_text()
    assert "hunter2-secret" not in stored and "k=[MASKED]" in stored


def test_a_program_that_is_not_a_shell_never_launches(warm_engine: Engine):
    out: list[bytes] = []
    afterwards = Afterwards()
    record = warm_engine.run(SandboxRequest(argv=("/usr/bin/env", "-u", "X"), runtime="crun"),
                             sink=lambda _s, d: out.append(d), afterwards=afterwards)
    warm_engine.finish(afterwards)
    if record.log_path:
        MADE_LOGS.append(Path(record.log_path))
    assert record.status == "succeeded" and waiting(warm_engine) is None


def test_the_log_is_whole_before_the_teardown_that_waits(warm_engine: Engine):
    """With the teardown left for later, the job's log file and its live reader already have every
    byte when ``run`` returns: the record that says the job ended never comes before its output."""
    assert whole_before_teardown(warm_engine) == "cold"
    assert whole_before_teardown(warm_engine) == "warm"


def whole_before_teardown(engine: Engine) -> str:
    out: list[bytes] = []
    afterwards = Afterwards()
    token = mark_waiting(engine)
    req = SandboxRequest(argv=("/bin/sh", "-c", probe("seq 1 20000; echo tail-line >&2")), runtime="crun")
    record = engine.run(req, sink=lambda _s, d: out.append(d), afterwards=afterwards)
    try:
        assert record.status == "succeeded" and record.log_path and afterwards.stacks
        live = b"".join(out).decode()
        stored = "".join(json.loads(line)["d"] for line in Path(record.log_path).read_text().splitlines())
        for text in (live, stored):
            assert text.startswith("1\n2\n") and "\n20000\n" in text and "tail-line" in text
        return "warm" if started_warm(token, live) else "cold"
    finally:
        engine.finish(afterwards)
        if record.log_path:
            MADE_LOGS.append(Path(record.log_path))
