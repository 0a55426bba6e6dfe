"""One error root: however a job is refused or sandpit fails it, it ends with a status, a reason
and a message, on every path (``Engine.run``, ``sandpit exec``, ``sandpit run``) and never with a
traceback, an exit 1 of the CLI, or a job left ``running`` until its lease expires.

- a refusal of the request (a bad limit, an unknown image) is ``failed``/``invalid_spec``;
- a failure of sandpit's own (an egress network that cannot be made) is ``error``/``infra_error``;
- an unexpected exception inside the engine is ``error``/``infra_error`` naming its type.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.record import replace
from tests.sandbox.conftest import Runner
from tests.sandbox.test_cli_and_teardown import cli_env
from worker.sandbox.engine import Engine
from worker.sandbox.request import Limits, SandboxRequest

MiB = 1 << 20
SANDPIT = [sys.executable, "-m", "worker"]
REPO = Path(__file__).resolve().parents[3]
MISSING_NETNS = "/run/netns/sandpit-test-no-such-namespace"


def broken_host_netns(tmp_path: Path) -> dict[str, str]:
    """Host network namespaces that cannot be used: a missing file, and a file that is no netns."""
    not_a_netns = tmp_path / "not-a-netns"
    not_a_netns.write_text("")
    return {"missing": MISSING_NETNS, "regular file": str(not_a_netns)}


@pytest.fixture(params=["missing", "regular file"])
def bad_netns(request, tmp_path) -> str:
    return broken_host_netns(tmp_path)[request.param]


def cli(settings, runtime, *args: str, extra_env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(settings, runtime), **(extra_env or {})}
    return subprocess.run([*SANDPIT, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=cwd or REPO)


def assert_no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stderr + p.stdout, p.stderr


# -- sandpit's own failures: error/infra_error -------------------------------------------------

def test_egress_failure_through_the_engine_is_infra_error(settings, runtime, bad_netns, no_leftovers):
    """A host netns that cannot be opened or joined fails the job as infra_error, with a message,
    and leaves nothing behind (it used to escape Engine.run as a FileNotFoundError)."""
    engine = Engine(replace(settings, net_host_netns=Path(bad_netns), net_pool=0))
    try:
        res, _out, _err = Runner(engine, runtime).sh("echo never", network="egress")
    finally:
        engine.close()
    assert (res.status, res.reason) == ("error", "infra_error")
    assert res.message and "network" in res.message


def test_egress_failure_through_sandpit_exec_exits_125(settings, runtime, bad_netns, no_leftovers):
    """The real ``sandpit exec --network egress`` process: exit 125, one ``sandpit:`` line, a JSON
    record with error/infra_error, no traceback."""
    p = cli(settings, runtime, "exec", "--json", "--network", "egress", "--", "echo", "never",
            extra_env={"SANDPIT_NET_HOST_NETNS": bad_netns, "SANDPIT_NET_POOL": "0"})
    assert_no_traceback(p)
    assert p.returncode == 125, p.stderr
    record = json.loads(p.stdout)
    assert (record["status"], record["reason"]) == ("error", "infra_error")
    assert record["message"] and f"sandpit: {record['message']}" in p.stderr
    assert "never" not in p.stderr


def test_egress_failure_through_sandpit_run_finishes_the_job(settings, tmp_path, no_leftovers):
    """Local mode (the executor the service uses): the job is recorded error/infra_error with a
    message (not left running), the run fails with exit 1 and a summary, no traceback."""
    (tmp_path / "p.yml").write_text("job:\n  sandbox: {network: egress}\n  script: [echo never]\n")
    p = cli(settings, "crun", "run", str(tmp_path / "p.yml"), "--json",
            extra_env={"SANDPIT_NET_HOST_NETNS": MISSING_NETNS, "SANDPIT_NET_POOL": "0"})
    assert_no_traceback(p)
    assert p.returncode == 1, p.stderr
    (job,) = json.loads(p.stdout)["jobs"]
    assert (job["status"], job["reason"]) == ("error", "infra_error")
    assert job.get("message") and "network" in job["message"]


def test_unexpected_exception_in_the_engine_is_infra_error(engine, runtime, no_leftovers):
    """A bug-shaped input (bytes where the command's words should be) ends error/infra_error with
    the exception's type in the message; Engine.run returns instead of raising."""
    res = engine.run(SandboxRequest(argv=(b"true",), runtime=runtime))  # type: ignore[arg-type]
    assert (res.status, res.reason) == ("error", "infra_error")
    assert res.message and "TypeError" in res.message


# -- refusals of the request: failed/invalid_spec ------------------------------------------------

REFUSED = [
    pytest.param({"image": "no-such-image"}, ["--image", "no-such-image"], "no-such-image", id="unknown image"),
    pytest.param({"limits": Limits(memory_bytes=1 * MiB)}, ["--memory", "1M"], "memory", id="memory below 8M"),
    pytest.param({"limits": Limits(pids=1)}, ["--pids", "1"], "pids", id="pids below 4"),
    pytest.param({"env": (("1BAD", "x"),)}, ["--env", "1BAD=x"], "1BAD", id="bad env name"),
]


@pytest.mark.parametrize("request_kw, _args, fragment", REFUSED)
def test_refused_request_through_the_engine_is_invalid_spec(run, request_kw, _args, fragment):
    """The same refusals end failed/invalid_spec whether caught by validation or by the image
    store (an unknown image used to end error/invalid_spec)."""
    res, _out, _err = run("true", **request_kw)
    assert (res.status, res.reason) == ("failed", "invalid_spec")
    assert res.message and fragment in res.message


@pytest.mark.parametrize("_kw, args, fragment", REFUSED)
def test_refused_request_through_sandpit_exec_is_invalid_spec(settings, runtime, no_leftovers, _kw, args, fragment):
    p = cli(settings, runtime, "exec", "--json", *args, "--", "true")
    assert_no_traceback(p)
    assert p.returncode == 125, p.stderr
    record = json.loads(p.stdout)
    assert (record["status"], record["reason"]) == ("failed", "invalid_spec")
    assert fragment in record["message"] and f"sandpit: {record['message']}" in p.stderr


@pytest.mark.parametrize("args, fragment", [(["--memory", "abc"], "abc"), (["--cpus", "lots"], "lots"),
                                             (["--timeout", "soon"], "soon")])
def test_option_refused_by_sandpit_exec_itself_is_invalid_spec(settings, runtime, no_leftovers, args, fragment):
    """A value sandpit exec cannot even turn into a request: the same record as any refusal."""
    p = cli(settings, runtime, "exec", "--json", *args, "--", "true")
    assert_no_traceback(p)
    assert p.returncode == 125, p.stderr
    record = json.loads(p.stdout)
    assert (record["status"], record["reason"]) == ("failed", "invalid_spec")
    assert fragment in record["message"] and f"sandpit: {record['message']}" in p.stderr


def test_unknown_image_through_sandpit_run_is_invalid_spec(settings, tmp_path, no_leftovers):
    (tmp_path / "p.yml").write_text("job:\n  image: node:20\n  script: [node -v]\n")
    p = cli(settings, "crun", "run", str(tmp_path / "p.yml"), "--json")
    assert_no_traceback(p)
    assert p.returncode == 1
    (job,) = json.loads(p.stdout)["jobs"]
    assert (job["status"], job["reason"]) == ("failed", "invalid_spec")
    assert "node" in (job.get("message") or "")
