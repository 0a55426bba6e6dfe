"""Workers announce themselves and beat; the list shows a SIGKILLed one as gone, and its job is
retried on the other worker by the lease expiry (the heartbeat decides nothing about jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.integration.deploy.conftest import REPO, USER_TOKEN, Deployment, pid_of_worker

SLOW_JOB = """
slow:
  script:
    - touch /workspace/started
    - sleep 8
    - echo done
  retry:
    max: 1
    when: [runner_system_failure]
"""


def _by_host(deploy: Deployment) -> dict[str, dict[str, object]]:
    return {str(w["id"]): w for w in deploy.workers()}


def test_workers_register_beat_and_a_killed_one_is_gone_while_its_job_is_retried(deployment: Deployment) -> None:
    """Two worker hosts register (host, capacity, runtimes, images, version); the one running
    the job is SIGKILLed: it is listed gone after three missed heartbeats, the job's second
    attempt runs on the other and succeeds, and a clean stop is listed stopped."""
    deployment.start_api()
    first = deployment.host("one")
    first.start_worker(concurrency=1)
    workers = deployment.wait_for("the first worker registering", lambda: deployment.workers())
    assert len(workers) == 1
    one = workers[0]
    assert one["state"] == "alive" and one["concurrency"] == 1 and one["transport"] == "local"
    assert one["memory_bytes"] > 0 and one["cpus"] > 0 and one["version"]
    assert set(one["runtimes"]) >= {"runc"} and "runsc" in one["runtimes"]
    assert {"debian", "python"} <= {i["name"] for i in one["images"]}
    assert one["last_seen_age_s"] < 5

    second = deployment.host("two")
    second.start_worker(concurrency=1)
    deployment.wait_for("the second worker registering", lambda: len(deployment.workers()) == 2)

    run = deployment.submit(SLOW_JOB)
    job_id = run["jobs"][0]["id"]
    running = deployment.wait_for("a worker holding the job", lambda: [
        w for w in deployment.workers() if w["running_jobs"] == 1])
    victim = str(running[0]["id"])
    assert deployment.run(run["id"])["jobs"][0]["status"] == "running"
    os.kill(pid_of_worker(victim), signal.SIGKILL)
    killed_host = first if victim == one["id"] else second

    gone = deployment.wait_for("the killed worker shown gone",
                               lambda: _by_host(deployment)[victim]["state"] == "gone", timeout=30)
    assert gone
    listed = _by_host(deployment)
    assert float(listed[victim]["last_seen_age_s"]) > 3 * 0.5  # type: ignore[arg-type]
    survivor = next(w for w in listed.values() if w["id"] != victim)
    assert survivor["state"] == "alive"

    ended = deployment.wait(run["id"], timeout=90)
    assert ended["status"] == "succeeded", [j["message"] for j in ended["jobs"]]
    attempts = deployment.attempts(job_id)
    assert [(a.attempt, a.reason) for a in attempts] == [(1, "worker_lost"), (2, None)]
    assert attempts[0].worker_id == victim and attempts[1].worker_id == survivor["id"]

    # what the SIGKILLed worker left on its host is removed by the next sandpit there
    reap = subprocess.run([sys.executable, "-m", "worker", "reap"], env=killed_host.env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert reap.returncode == 0, reap.stderr

    (second if killed_host is first else first).stop()
    assert _by_host(deployment)[str(survivor["id"])]["state"] == "stopped"


def test_the_workers_list_is_for_admin_tokens_only(deployment: Deployment) -> None:
    """An untrusted token gets 403 with a message naming the need for a trusted token; no token, 401."""
    deployment.start_api()
    with deployment.client(USER_TOKEN) as c:
        refused = c.get("/api/v1/workers")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert ":trusted" in refused.json()["message"]
    with deployment.client("") as c:
        assert c.get("/api/v1/workers", headers={"Authorization": ""}).status_code == 401
