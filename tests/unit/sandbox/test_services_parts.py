"""The pure parts of a job's services (tables of cases): ports waited for and read from the socket
table, names on the host, the hosts file, the request's
checks, request_for, the record's JSON; and the output reader on real pipes of a child process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipelines.job_record import JobRecord, ServiceRecord, Status
from pipelines.language.model import Job, Service
from pipelines.language.problems import Loc
from worker.jobs import request_for
from worker.sandbox.logs import JobLog, read_log
from worker.sandbox.request import SandboxRequest, ServiceRequest, service_problems, validate_request
from worker.sandbox.services.hosts import hosts_text
from worker.sandbox.services.logs import OutputPump, ServiceOutput, debug_services
from worker.sandbox.services.naming import container_id, job_of_container, log_name
from worker.sandbox.services.ports import listening_ports, wanted_ports

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1 1 0 100 0 0 10 0
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000 65534        0 3 1 0 20 4 30 10 -1
   3: 0100007F:0050 0100007F:D2C6 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 07 00000000:00000000
"""


@pytest.mark.parametrize(("table", "ports"), [
    (TCP, {8080, 5432}),  # LISTEN on 0.0.0.0 and on 127.0.0.1; ESTABLISHED and TIME_WAIT are not
    (TCP6, {22}),  # LISTEN on ::; a UDP-like 07 (CLOSE) is not
    ("  sl  local_address\n", set()),
    ("header\n garbage line\n   0: nohex:ZZZZ 00:00 0A\n", set()),
])
def test_listening_ports_are_read_from_the_socket_table(table: str, ports: set[int]) -> None:
    """Only sockets in state 0A (LISTEN) count; unparsable lines are skipped."""
    assert listening_ports(table) == ports


@pytest.mark.parametrize(("exposed", "env", "ports", "problem"), [
    (("5432/tcp",), (), (5432,), None),
    (("53/udp", "8080/tcp", "8080", "9000/sctp"), (), (8080,), None),
    (("2375/tcp", "2376/tcp"), (), (2375, 2376), None),
    ((), (), (), None),
    (("2375/tcp", "2376/tcp"), (("HEALTHCHECK_TCP_PORT", "2376"),), (2376,), None),
    ((), (("HEALTHCHECK_TCP_PORT", " 8000 "),), (8000,), None),
    (("80/tcp",), (("HEALTHCHECK_TCP_PORT", "http"),), (80,), "is not a port"),
    (("0/tcp", "65536/tcp", "x/tcp"), (), (), None),
])
def test_wanted_ports(exposed, env, ports, problem) -> None:
    """TCP ExposedPorts, or HEALTHCHECK_TCP_PORT instead (a bad one is said and ignored)."""
    got, said = wanted_ports(exposed, env)
    assert got == ports
    assert (said is None) if problem is None else (problem in (said or ""))


def test_names_on_the_host() -> None:
    """A service container names its job after a '.', which no job id holds."""
    assert container_id("0193a1b2-c3d4", 3) == "sandpit-0193a1b2-c3d4.svc3"
    assert job_of_container("sandpit-0193a1b2-c3d4.svc3") == job_of_container("sandpit-0193a1b2-c3d4") \
        == "0193a1b2-c3d4"
    assert log_name("0193a1b2-c3d4", 0) == "0193a1b2-c3d4.svc0.jsonl"


def test_hosts_text_refuses_what_would_break_a_line() -> None:
    """Every name is one word of one line; a name with a space or '#' is refused before writing."""
    assert hosts_text(("db", "db", "pg")).splitlines()[-1] == "127.0.0.1 sandpit db pg"
    for bad in ("a b", "db#x", "x\n127.0.0.1 evil"):
        with pytest.raises(ValueError, match="cannot be a host name"):
            hosts_text((bad,))


@pytest.mark.parametrize(("value", "on"), [
    ("true", True), ("1", True), ("TRUE", True), ("t", True), ("True", True),
    ("yes", False), ("false", False), ("", False), ("on", False),
])
def test_ci_debug_services_is_go_parsebool(value: str, on: bool) -> None:
    assert debug_services((("CI_DEBUG_SERVICES", value),)) is on


@pytest.mark.parametrize(("service", "words"), [
    (ServiceRequest("Postgres", aliases=("db",)), "is not an image reference"),
    (ServiceRequest("redis"), "it has no host name"),
    (ServiceRequest("redis", aliases=("a b",)), "host name 'a b' is not valid"),
    (ServiceRequest("redis", aliases=("r",), env=(("A-B", "x"),)), "environment name 'A-B'"),
    (ServiceRequest("redis", aliases=("r",), env=(("A", "x\0y"),)), "NUL byte"),
    (ServiceRequest("redis", aliases=("r",), command=("a\0",)), "command contains a NUL byte"),
])
def test_service_requests_are_checked(service: ServiceRequest, words: str) -> None:
    """Each bad service is refused with a sentence naming it; a good one is not."""
    (problem,) = service_problems((service,))
    assert words in problem and problem.startswith("service ")
    assert validate_request(SandboxRequest(argv=("true",), services=(ServiceRequest("redis", aliases=("r",)),))) == []
    assert "at most 16" in service_problems(tuple(ServiceRequest("r", aliases=("r",)) for _ in range(17)))[0]


def test_request_for_gives_services_the_jobs_variables_then_their_own() -> None:
    """The job's variables (and the worker's extra ones) first, the service's own last; names
    derived as GitLab Runner does."""
    job = Job(name="t", stage="test", loc=Loc("ci", 1, 1), variables=(("A", "job"), ("B", "job")),
              services=(Service("registry.example:5000/ns/db:1", alias="db", variables=(("B", "svc"),),
                                pull_policy=("never",)),))
    (svc,) = request_for(job, extra_env=(("CI_JOB_ID", "7"),)).services
    assert svc.aliases == ("db", "registry.example__ns__db", "registry.example-ns-db")
    assert svc.env == (("A", "job"), ("B", "job"), ("CI_JOB_ID", "7"), ("B", "svc"))
    assert svc.pull_policy == ("never",) and svc.image == "registry.example:5000/ns/db:1"
    assert request_for(Job(name="u", stage="test", loc=Loc("ci", 1, 1))).services == ()


def test_the_record_names_service_logs_only_when_there_are_services() -> None:
    """``services`` comes after the documented keys, and only for a job that had services."""
    plain = JobRecord(name="t", status=Status.SUCCEEDED, reason=None)
    assert "services" not in plain.to_json()
    rec = JobRecord(name="t", status=Status.SUCCEEDED, reason=None,
                    services=(ServiceRecord("postgres:16", "db", "/l/x.svc0.jsonl", True, 0.25),))
    assert list(rec.to_json())[-1] == "services"
    assert rec.to_json()["services"] == [{"name": "postgres:16", "alias": "db", "log": "/l/x.svc0.jsonl",
                                          "ready": True, "waited_s": 0.25}]


def _child(script: str) -> tuple[int, int, int]:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", script], {"PATH": "/usr/bin:/bin"},
                         file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
    os.close(out_w)
    os.close(err_w)
    return pid, out_r, err_r


@pytest.mark.parametrize("debug", [False, True])
def test_the_reader_keeps_a_log_per_service_and_copies_whole_lines_when_asked(tmp_path: Path, debug: bool) -> None:
    """Each service's output goes to its own log (masked); with CI_DEBUG_SERVICES every line,
    whole and prefixed, also reaches the job's log, including lines from before it was attached
    and a last line without its newline; the exit status is kept."""
    pump = OutputPump(debug)
    log = JobLog(tmp_path / "svc.jsonl", 1 << 20, None, secrets=("hunter22",))
    pid, out_fd, err_fd = _child("printf 'one\\ntw'; sleep 0.2; printf 'o\\n'; echo hunter22 >&2; printf last; exit 5")
    pump.add(ServiceOutput("db", log, pid, out_fd, err_fd))
    pump.start()
    time.sleep(0.1)  # "one" is read before the job's log exists: it waits, then is copied first
    job = JobLog(tmp_path / "job.jsonl", 1 << 20, None, secrets=("hunter22",))
    pump.attach(job)
    deadline = time.monotonic() + 10
    while pump.outputs[0].exit_code is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.stop()
    job.close()
    own = "".join(text for _t, _s, text in read_log(tmp_path / "svc.jsonl"))
    assert own == "one\ntwo\n[MASKED]\nlast"
    assert pump.outputs[0].exit_code == 5
    copied = [(s, text) for _t, s, text in read_log(tmp_path / "job.jsonl")]
    if not debug:
        assert copied == []
        return
    text = "".join(t for _s, t in copied)
    assert text.count("[service:db] ") == 4 and text.startswith("[service:db] one\n")
    for line in ("[service:db] one\n", "[service:db] two\n", "[service:db] [MASKED]\n", "[service:db] last\n"):
        assert line in text
    assert ("err", "[service:db] [MASKED]\n") in copied


def test_a_local_record_names_the_service_logs_so_retention_removes_them() -> None:
    """A local run's record lists each attempt's service logs beside its own; a planted path is not one."""
    from worker.local.records import job_entry

    attempt = {"log": "/s/logs/abc.jsonl", "services": [{"log": "/s/logs/abc.svc0.jsonl"}, {"log": "/etc/passwd"},
                                                         "junk"]}
    assert job_entry("abc", "t", "succeeded", [attempt])["logs"] == ["abc.jsonl", "abc.svc0.jsonl"]
