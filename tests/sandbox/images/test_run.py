"""Jobs on a pulled image, end to end: ``sandpit run`` and ``sandpit exec`` pull a multi-layer image
with whiteouts from the loopback registry, and the job sees the merged tree the layers describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.references import parse_reference
from tests.conftest import REPO
from tests.sandbox.images.registry import Registry
from worker.sandbox.images import ImageStore
from worker.settings import REPO_IMAGES

CHECKS = [
    "test ! -e /etc/motd",  # whited out by layer 2
    'test "$(ls /usr/share/doc)" = only-this',  # layer 2 made it opaque
    "test ! -e /opt/app/hello.txt",  # added by layer 2, whited out by layer 3
    "cat /opt/app/keep /opt/app/layer3",
    'echo "greeting: $GREETING"',  # the image config's env
    'echo "shell: ${BASH_VERSION:+bash}"',  # the image's bash (in layer 1, behind /bin -> usr/bin)
    "cat /etc/debian_version",
    "touch /etc/written-by-the-job",  # the layers are read-only, the job's upper dir is not
]


@pytest.fixture()
def env(settings, registry: Registry, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A ``sandpit`` environment that may pull from the loopback registry into the suite's store;
    the pulled image is removed again afterwards."""
    conf = registry.registries_conf(tmp_path / "registries.conf")
    yield {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(settings.state_dir),
           "SANDPIT_RUN_DIR": str(settings.run_dir), "SANDPIT_RUNTIME": "crun",
           "SANDPIT_SCRATCH_SIZE": str(settings.scratch_bytes), "SANDPIT_REGISTRIES": registry.host,
           "SANDPIT_REGISTRIES_CONF": str(conf)}
    store = ImageStore(settings.state_dir, REPO_IMAGES, registry=settings.registry())
    for reference, _digest, _size, _used, _source in store.pulled_entries():
        if reference.startswith(registry.host + "/"):
            store.pulled.remove_name(parse_reference(reference))
    store.prune(max_bytes=0, grace_s=0)


def test_sandpit_run_a_job_on_a_pulled_multilayer_image(settings, registry, env, tmp_path, no_leftovers):
    """The job sees layer 3 over layer 2 over Debian: whiteouts and an opaque directory applied,
    the config's env set, the image's bash chosen; the pull's progress is in the job's log."""
    ref = f"{registry.host}/test/multilayer:1"
    script = "".join(f"    - {json.dumps(c)}\n" for c in CHECKS)
    (tmp_path / "ci.yml").write_text(f"job:\n  image: {ref}\n  script:\n{script}"
                                     f"again:\n  needs: [job]\n  image: {ref}\n  script: [cat /opt/app/layer3]\n")
    p = subprocess.run([sys.executable, "-m", "worker", "run", str(tmp_path / "ci.yml"), "--json"], env=env,
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = {j["name"]: j for j in json.loads(p.stdout)["jobs"]}
    assert jobs["job"]["status"] == "succeeded" and jobs["again"]["status"] == "succeeded"
    for text in ("kept", "from layer 3", "greeting: hello from the image config", "shell: bash", "12."):
        assert text in p.stderr, text
    # the pull's per-layer progress opens the first job's log; the second job found the image stored
    first = (Path(jobs["job"]["log"])).read_text()
    assert "layer 1/3" in first and "layer 3/3" in first and "unpacked" in first
    assert "layer 1/3" not in Path(jobs["again"]["log"]).read_text()


def test_exec_pulls_live_and_runs_by_digest(settings, registry, env, no_leftovers):
    """``sandpit exec --image REF`` pulls with its progress on stderr (the command's output stays
    alone on stdout); ``sandpit images pull`` then finds it stored; ``--image REF@DIGEST`` runs it."""
    ref = f"{registry.host}/test/multilayer:1"
    p = subprocess.run([sys.executable, "-m", "worker", "exec", "--image", ref, "--", "cat", "/opt/app/layer3"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout == "from layer 3\n", p.stderr
    assert "[sandpit]" in p.stderr and "layer 1/3" in p.stderr and "unpacked" in p.stderr
    p = subprocess.run([sys.executable, "-m", "worker", "images", "pull", ref],
                       env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr
    name, digest = p.stdout.split()
    assert name == ref and digest.startswith("sha256:") and "already in the store" in p.stderr
    p = subprocess.run([sys.executable, "-m", "worker", "exec", "--image", f"{registry.host}/test/multilayer@{digest}",
                        "--", "cat", "/opt/app/layer3"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout == "from layer 3\n", p.stderr
    assert "layer 1/3" not in p.stderr


def test_a_registry_not_listed_fails_the_job_as_invalid_spec_without_contacting_it(settings, registry, env,
                                                                                   tmp_path, no_leftovers):
    env = {**env, "SANDPIT_REGISTRIES": "registry.sandpit.invalid"}
    before = registry.requests()
    (tmp_path / "ci.yml").write_text(f"job:\n  image: {registry.host}/test/small:1\n  script: [echo hi]\n")
    p = subprocess.run([sys.executable, "-m", "worker", "run", str(tmp_path / "ci.yml"), "--json"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    (job,) = json.loads(p.stdout)["jobs"]
    assert (job["status"], job["reason"]) == ("failed", "invalid_spec")
    assert "is not a registry sandpit may pull from" in job["message"]
    assert registry.requests() == before and "Traceback" not in p.stderr


def test_pull_policy_of_a_job(settings, layout, env, tmp_path, no_leftovers):
    """``image:pull_policy``: ``always`` asks the registry (and fails as infra when it is gone),
    ``[always, if-not-present]`` falls back to the stored image, ``never`` refuses what is absent."""
    reg = Registry(tmp_path / "reg").start()
    try:
        reg.push(layout.root, "1", "test/multilayer:1")
        ref = f"{reg.host}/test/multilayer:1"
        env = {**env, "SANDPIT_REGISTRIES": reg.host,
               "SANDPIT_REGISTRIES_CONF": str(reg.registries_conf(tmp_path / "reg.conf"))}

        def run(policy: str) -> dict:
            (tmp_path / "ci.yml").write_text(
                f"job:\n  image: {{name: '{ref}', pull_policy: {policy}}}\n  script: [cat /opt/app/layer3]\n")
            p = subprocess.run([sys.executable, "-m", "worker", "run", str(tmp_path / "ci.yml"), "--json"], env=env,
                               capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert "Traceback" not in p.stderr, p.stderr
            return json.loads(p.stdout)["jobs"][0]

        job = run("never")
        assert (job["status"], job["reason"]) == ("failed", "invalid_spec") and "never" in job["message"]
        assert run("always")["status"] == "succeeded"
        reg.stop()
        job = run("always")
        assert (job["status"], job["reason"]) == ("error", "infra_error") and "cannot pull" in job["message"]
        job = run("[always, if-not-present]")
        assert job["status"] == "succeeded"
        assert "trying if-not-present" in Path(job["log"]).read_text()
    finally:
        reg.stop()
        store = ImageStore(settings.state_dir, REPO_IMAGES, registry=settings.registry())
        store.pulled.remove_name(parse_reference(f"{reg.host}/test/multilayer:1"))
        store.prune(max_bytes=0, grace_s=0)
