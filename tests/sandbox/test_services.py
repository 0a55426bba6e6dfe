"""``services:`` with real containers: a TCP server image pulled from a loopback registry (and the
``python`` recipe) beside the job, reached by its names and on localhost, with ``network: none``
and ``egress``; the wait for its port and the warning when it never opens; a service over the job's
memory; its logs; teardown, also after SIGKILL and ``sandpit reap``; ``sandpit run`` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.job_record import JobRecord
from pipelines.record import replace
from pipelines.references import parse_reference
from tests.conftest import require_tools
from tests.sandbox.conftest import MADE_LOGS, Runner
from tests.sandbox.images.conftest import debian_tar  # noqa: F401 - the fixture, shared
from tests.sandbox.images.registry import Registry
from tests.sandbox.network.conftest import world  # noqa: F401 - the fixture, shared
from tests.sandbox.services_image import REFERENCE, make_layout
from worker.sandbox.engine import Engine
from worker.sandbox.images import ImageStore
from worker.sandbox.logs import read_log
from worker.sandbox.reaper import containers, leftovers
from worker.sandbox.request import Limits, ServiceRequest
from worker.sandbox.services.naming import job_of_container
from worker.settings import REPO_IMAGES, Settings

SANDPIT = [sys.executable, "-m", "worker"]
#: the job's side: one line from the service by each of its names, over bash's /dev/tcp
ASK = 'exec 3<>"/dev/tcp/{host}/8080" && read -r line <&3 && echo "{host}: $line"'


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, debian_tar: bytes) -> Iterator[Registry]:  # noqa: F811
    require_tools("docker-registry", "skopeo")
    layout = make_layout(tmp_path_factory.mktemp("service-layout") / "oci", debian_tar)
    with Registry(tmp_path_factory.mktemp("service-registry")) as reg:
        reg.push(layout.root, "server", REFERENCE)
        yield reg


@pytest.fixture(scope="module")
def pulling(settings: Settings, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings that may pull from the loopback registry; what was pulled is removed afterwards."""
    conf = registry.registries_conf(tmp_path_factory.mktemp("registries") / "registries.conf")
    yield replace(settings, registries=(registry.host,), registries_conf=conf)
    store = ImageStore(settings.state_dir, REPO_IMAGES, registry=settings.registry())
    for reference, _digest, _size, _used, _source in store.pulled_entries():
        if reference.startswith(registry.host + "/"):
            store.pulled.remove_name(parse_reference(reference))
    store.prune(max_bytes=0, grace_s=0)


@pytest.fixture(scope="module")
def svc_engine(pulling: Settings, engine: Engine) -> Engine:
    """An engine that may pull from the loopback registry (the suite's ``engine`` is asked for so
    that its end of session removes the logs MADE_LOGS names)."""
    return Engine(pulling)


class ServiceRunner(Runner):
    """A Runner whose jobs' service logs are removed with the session's other logs."""

    def __call__(self, *argv: str, **kw: object) -> tuple[JobRecord, str, str]:
        rec, out, err = super().__call__(*argv, **kw)
        MADE_LOGS.extend(Path(s.log_path) for s in rec.services)
        return rec, out, err


@pytest.fixture()
def srun(svc_engine: Engine, runtime: str, no_leftovers: None) -> Runner:
    return ServiceRunner(svc_engine, runtime)


def server(registry: Registry, **kw: object) -> ServiceRequest:
    fields: dict[str, object] = {"aliases": ("web", "test__server", "test-server")} | kw
    return ServiceRequest(f"{registry.host}/{REFERENCE}", **fields)  # type: ignore[arg-type]


def service_log(record: JobRecord, index: int = 0) -> str:
    path = Path(record.services[index].log_path)
    return "".join(text for _t, _s, text in read_log(path))


def job_log(record: JobRecord) -> str:
    assert record.log_path
    return "".join(text for _t, _s, text in read_log(Path(record.log_path)))


def asks(*hosts: str) -> str:
    return " && ".join(ASK.format(host=h) for h in hosts)


def test_job_reaches_its_service_by_name_and_localhost(srun: Runner, registry: Registry):
    """network none: the job starts once port 8080 listens and reaches the service by its alias,
    by both names GitLab derives from the image, and on localhost; the service ran as the image's
    User with the job's variables and its own; its output is in its own log, not the job's."""
    svc = server(registry, env=(("GREETING", "a service variable"),))
    rec, out, err = srun("bash", "-c", asks("web", "test__server", "test-server", "localhost", "127.0.0.1"),
                         services=(svc,), env=(("GREETING", "the job"),))
    assert rec.status == "succeeded", (err, job_log(rec))
    assert out.splitlines() == [f"{h}: hello from a service variable as uid 65534" for h in
                                ("web", "test__server", "test-server", "localhost", "127.0.0.1")]
    (state,) = rec.services
    assert state.ready is True and state.alias == "web" and 0 < state.waited_s < 30
    assert "port 8080/tcp open after" in err
    own = service_log(rec)
    assert "listening on 8080" in own and own.count("accepted") == 5
    assert "listening on" not in job_log(rec) and "accepted" not in job_log(rec)
    assert rec.to_json()["services"][0]["log"] == state.log_path


def test_hosts_file_names_every_service(srun: Runner, registry: Registry):
    """Two services: the job's /etc/hosts maps every name of both to 127.0.0.1, read-only."""
    rec, out, err = srun("sh", "-c", "cat /etc/hosts; echo x >> /etc/hosts && echo WROTE",
                         services=(server(registry), server(registry, aliases=("second",),
                                                            env=(("PORT", "8081"),))))
    assert rec.status == "failed", err
    assert "127.0.0.1 sandpit web test__server test-server second\n" in out and "WROTE" not in out


def test_service_from_a_recipe_with_command_and_healthcheck_port(srun: Runner):
    """The python recipe as a service: no image config, so its `command:` runs and
    HEALTHCHECK_TCP_PORT names the port waited for."""
    svc = ServiceRequest("python", aliases=("pyweb",), command=("python3", "-m", "http.server", "8000"),
                         env=(("HEALTHCHECK_TCP_PORT", "8000"),))
    rec, out, err = srun("bash", "-c", "exec 3<>/dev/tcp/pyweb/8000; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; "
                         "head -1 <&3", services=(svc,))
    assert rec.status == "succeeded", err
    assert out.startswith("HTTP/1.0 200") and rec.services[0].ready is True
    assert '"GET / HTTP/1.0" 200' in service_log(rec)


def test_service_that_never_opens_its_port(pulling: Settings, runtime: str, engine: Engine, registry: Registry,
                                           no_leftovers):
    """The job starts after the operator's wait (SANDPIT_SERVICE_WAIT, here 1 s) with GitLab's
    warning in its log; the record says not ready."""
    svc = server(registry, entrypoint=("sleep", "600"))
    started = time.monotonic()
    srun = ServiceRunner(Engine(replace(pulling, service_wait_s=1.0)), runtime)
    rec, out, err = srun("echo", "job ran", services=(svc,))
    assert rec.status == "succeeded" and out == "job ran\n"
    assert time.monotonic() - started >= 1.0
    warning = "WARNING: service web (" + svc.image + ") probably did not start properly: no port of 8080/tcp " \
              "was open after 1s; the job starts anyway"
    assert warning in err and warning in job_log(rec)
    assert rec.services[0].ready is False


def test_a_wait_of_zero_starts_the_job_at_once(pulling: Settings, runtime: str, engine: Engine, registry: Registry,
                                               no_leftovers):
    """SANDPIT_SERVICE_WAIT=0: the job does not wait for a port that never opens, and says so."""
    svc = server(registry, entrypoint=("sleep", "600"))
    srun = ServiceRunner(Engine(replace(pulling, service_wait_s=0.0)), runtime)
    rec, out, err = srun("echo", "job ran", services=(svc,))
    assert rec.status == "succeeded" and out == "job ran\n"
    assert "not waited for (the wait for services is off on this worker)" in err
    assert "probably did not start properly" not in err and rec.services[0].ready is None


def test_service_that_exits_early(srun: Runner, registry: Registry):
    """A service that exits does not hold the job for the whole wait; the warning gives its status."""
    svc = server(registry, entrypoint=("sh", "-c", "echo dying; exit 3"))
    started = time.monotonic()
    rec, _out, err = srun("true", services=(svc,), services_timeout_s=20.0)
    assert rec.status == "succeeded"
    assert time.monotonic() - started < 10
    assert "it exited with status 3 before opening 8080/tcp" in err
    assert "dying" in service_log(rec) and "dying" not in job_log(rec)


def test_ci_debug_services_puts_service_lines_in_the_job_log(srun: Runner, registry: Registry):
    """CI_DEBUG_SERVICES=true: each service line also reaches the job's log with its prefix."""
    rec, _out, err = srun("bash", "-c", asks("web"), services=(server(registry),),
                          env=(("CI_DEBUG_SERVICES", "true"),))
    assert rec.status == "succeeded", err
    text = job_log(rec)
    assert "[service:web] listening on 8080\n" in text and "[service:web] accepted\n" in text
    assert "web: hello from the image" in text
    assert "listening on 8080" in service_log(rec)


def test_service_cannot_exceed_the_jobs_memory(srun: Runner, registry: Registry):
    """A service allocating 4x the job's memory is OOM-killed inside the job's cgroup: the job ends
    failed/oom, the peak stays at the job's limit, and nothing is left on the host."""
    hog = server(registry, entrypoint=("perl", "-e", "$x = 'a' x (512 * 1024 * 1024); sleep 60"))
    limits = Limits(memory_bytes=128 * 1024 * 1024, timeout_s=30)
    rec, _out, err = srun("sh", "-c", "sleep 3", services=(hog,), services_timeout_s=5.0, limits=limits)
    assert (rec.status, rec.reason) == ("failed", "oom"), (rec, err)
    assert 0 < rec.usage.memory_peak_bytes <= 128 * 1024 * 1024 + 4096


def test_limits_cap_job_and_services_together(srun: Runner):
    """The job's pids limit holds for the job and its services together (one cgroup tree)."""
    svc = ServiceRequest("python", aliases=("spawner",),
                         command=("sh", "-c", "for i in $(seq 40); do sleep 60 & done; sleep 60"))
    rec, out, _err = srun("sh", "-c", "sleep 1; for i in $(seq 40); do sleep 5 & done; wait; echo forked",
                          services=(svc,), services_timeout_s=0, limits=Limits(pids=48, timeout_s=30))
    assert (rec.status, rec.reason) == ("failed", "pids_limit") and "forked" not in out


def test_services_with_egress(settings, runtime, pulling, registry, world, no_leftovers):  # noqa: F811
    """network egress: job and service share the job's egress namespace; names and localhost work."""
    engine = Engine(pulling, network=world.settings, host_network=world.network)
    rec, out, err = ServiceRunner(engine, runtime)("bash", "-c", asks("web", "localhost"), services=(server(registry),),
                                            network="egress")
    assert rec.status == "succeeded", err
    assert out.splitlines() == [f"{host}: hello from the image as uid 65534" for host in ("web", "localhost")]


def test_runsc_is_refused_with_services(svc_engine: Engine, no_leftovers):
    """runsc gives each container its own network stack: a job with services is refused by name."""
    from worker.sandbox.runtime import runtime_problem

    if runtime_problem("runsc") is not None:
        pytest.skip(f"runsc: {runtime_problem('runsc')}")
    rec, _out, _err = ServiceRunner(svc_engine, "runsc")("true", services=(ServiceRequest("python", aliases=("p",),
                                                                                    command=("sleep", "9")),))
    assert (rec.status, rec.reason) == ("failed", "invalid_spec")
    assert "services cannot run under runsc" in (rec.message or "")


def test_service_without_a_command_is_refused(srun: Runner):
    """A recipe image has no Entrypoint or Cmd: a service of it without `command:` is refused."""
    rec, _out, _err = srun("true", services=(ServiceRequest("debian", aliases=("d",)),))
    assert (rec.status, rec.reason) == ("failed", "invalid_spec")
    assert "service d (debian): it has nothing to run" in (rec.message or "")


# -- sandpit run, and a SIGKILLed sandpit ------------------------------------------------------

def cli_env(settings: Settings, runtime: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(settings.state_dir),
           "SANDPIT_RUN_DIR": str(settings.run_dir), "SANDPIT_RUNTIME": runtime,
           "SANDPIT_SCRATCH_SIZE": str(settings.scratch_bytes)}
    if settings.registries:
        env |= {"SANDPIT_REGISTRIES": ",".join(settings.registries),
                "SANDPIT_REGISTRIES_CONF": str(settings.registries_conf)}
    return env


PIPELINE = """
variables:
  GREETING: the pipeline
test:
  image: debian
  services:
    - name: {image}
      alias: db
      variables: {{GREETING: its own variable}}
  script:
    - 'exec 3<>/dev/tcp/db/8080 && read -r line <&3 && echo "db says: $line"'
    - 'exec 4<>/dev/tcp/localhost/8080 && read -r line <&4 && echo "localhost says: $line"'
"""


def test_sandpit_run_a_pipeline_with_services(pulling, registry, runtime, tmp_path, engine, no_leftovers):
    """`sandpit run` plans `services:`, runs the service beside the job and names its log in the
    job's record."""
    (tmp_path / "ci.yml").write_text(PIPELINE.format(image=f"{registry.host}/{REFERENCE}"))
    p = subprocess.run([*SANDPIT, "run", str(tmp_path / "ci.yml"), "--json"], env=cli_env(pulling, runtime),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (job,) = json.loads(p.stdout)["jobs"]
    assert job["status"] == "succeeded"
    assert "db says: hello from its own variable as uid 65534" in p.stderr
    assert "localhost says: hello from its own variable as uid 65534" in p.stderr
    (svc,) = job["services"]
    assert svc["alias"] == "db" and svc["ready"] is True
    MADE_LOGS.extend((Path(svc["log"]), Path(job["log"])))
    assert "accepted" in Path(svc["log"]).read_text()


def test_sigkilled_sandpit_leaves_nothing_reap_cannot_remove(settings, runtime, engine, no_leftovers, tmp_path):
    """SIGKILL of `sandpit run` while its job and service run leaves their containers, cgroups,
    mounts and disk; `sandpit reap` removes them all, service containers included."""
    marker = f"77.{os.getpid()}"
    (tmp_path / "ci.yml").write_text(
        "test:\n  services:\n    - name: python\n      alias: web\n"
        f"      command: [sh, -c, 'sleep {marker}']\n  script: ['sleep {marker}']\n")
    known = set(containers(settings))
    new: set[str] = set()
    proc = subprocess.Popen([*SANDPIT, "run", str(tmp_path / "ci.yml")], env=cli_env(settings, runtime),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(containers(settings)) - known
            if any(".svc0" in c for c in new) and any(".svc" not in c for c in new):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the job and its service never both started")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = leftovers(settings)
    assert any(x.startswith("container") and ".svc0" in x for x in left), left
    assert any(x.startswith("cgroup") for x in left) and any(x.startswith("mount") for x in left)
    reaped = subprocess.run([*SANDPIT, "reap"], env=cli_env(settings, runtime), capture_output=True, text=True,
                            timeout=60)
    assert reaped.returncode == 0, reaped.stderr
    assert ".svc0" in reaped.stdout
    assert leftovers(settings) == []
    ps = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
    for job_id in {job_of_container(c) for c in new}:  # the killed job's logs: no record will name them
        MADE_LOGS.extend(settings.state_dir / "logs" / name for name in (f"{job_id}.jsonl", f"{job_id}.svc0.jsonl"))
