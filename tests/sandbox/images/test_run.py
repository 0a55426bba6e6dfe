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
from worker.sandbox.logs import read_log
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


# -- the image's config applied to the job, as GitLab Runner's Docker executor applies it ------------

ENTRY = b"""#!/bin/sh
echo "entrypoint ran as $(id -u):$(id -g) with $# arguments"
export FROM_ENTRYPOINT=yes
exec "$@"
"""
OTHER_ENTRY = b'#!/bin/sh\necho "the other entrypoint ran"\nexec "$@"\n'
TOOL = b'#!/bin/sh\necho "tool from the image PATH"\n'
PASSWD = b"root:x:0:0:root:/root:/bin/bash\nbuilder:x:1500:1501::/home/builder:/bin/sh\n"
GROUP = b"root:x:0:\nbuilder:x:1501:\ndocker:x:1600:builder\n"


@pytest.fixture(scope="module")
def configured(layout, debian_tar: bytes, registry: Registry) -> dict[str, str]:
    """Two images over the suite's Debian layer (shared: pushed and unpacked once) with a config
    as real ones have: ``user:1`` (User 1234, not in its passwd), ``builder:1`` (User builder from
    its own passwd and group); both with an Entrypoint script, a PATH and Env of their own and a
    WorkingDir the job must not use."""
    from tests.sandbox.images.layers import directory, member, tar_bytes

    extra = tar_bytes([directory("opt"), member("opt/entry.sh", ENTRY, mode=0o755),
                       member("opt/other.sh", OTHER_ENTRY, mode=0o755), directory("opt/tool"),
                       directory("opt/tool/bin"), member("opt/tool/bin/image-tool", TOOL, mode=0o755),
                       directory("srv/app")])
    env = ("IMAGE_VAR=from the image", "OVERRIDDEN=by the image")
    path = "/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    common = {"env": env, "path": path, "entrypoint": ["/opt/entry.sh"], "workdir": "/srv/app"}
    layout.tag("user-1", layout.image([(debian_tar, "zstd"), (extra, "gzip")], user="1234", **common))
    users = tar_bytes([member("etc/passwd", PASSWD), member("etc/group", GROUP),
                       directory("home"), member("home/builder", kind=b"5", mode=0o755, uid=1500, gid=1501)])
    layout.tag("builder-1", layout.image([(debian_tar, "zstd"), (extra, "gzip"), (users, "gzip")],
                                         user="builder", **common))
    registry.push(layout.root, "user-1", "test/user:1")
    registry.push(layout.root, "builder-1", "test/builder:1")
    return {"user": f"{registry.host}/test/user:1", "builder": f"{registry.host}/test/builder:1"}


SHOW = ['echo "id: $(id -u):$(id -g) groups: $(id -G)"', 'echo "home: $HOME pwd: $(pwd)"',
        'echo "entry: ${FROM_ENTRYPOINT:-none} var: $IMAGE_VAR overridden: $OVERRIDDEN"', "image-tool",
        "touch made-by-the-job", 'echo "owners: $(stat -c %u made-by-the-job) $(stat -c %u ci.yml)"']


def test_a_job_runs_through_the_image_entrypoint_as_its_user_with_its_env(settings, configured, env, tmp_path,
                                                                           no_leftovers):
    """As GitLab Runner's Docker executor: the script goes through the image's Entrypoint (replaced
    by ``image:entrypoint``, removed by ``[""]``); the job runs as the image's User (numeric, or a
    name from the image's own passwd with its group, supplementary groups and home), owns its
    workspace and source; the image's PATH and Env apply under the pipeline's variables; the job
    runs in /workspace whatever the image's WorkingDir."""
    script = "".join(f"    - {json.dumps(c)}\n" for c in SHOW)
    jobs = {"plain": configured["user"],
            "cleared": f"{{name: '{configured['user']}', entrypoint: ['']}}",
            "other": f"{{name: '{configured['user']}', entrypoint: [/opt/other.sh]}}",
            "named": configured["builder"]}
    text = "variables:\n  OVERRIDDEN: by the pipeline\n" + "".join(
        f"{name}:\n  image: {image}\n  script:\n{script}" for name, image in jobs.items())
    (tmp_path / "ci.yml").write_text(text)
    p = subprocess.run([sys.executable, "-m", "worker", "run", str(tmp_path / "ci.yml"), "--json"], env=env,
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    records = {j["name"]: j for j in json.loads(p.stdout)["jobs"]}
    logs = {name: "".join(text for _t, _s, text in read_log(Path(job["log"]))) for name, job in records.items()}
    assert all(job["status"] == "succeeded" for job in records.values()), logs
    for name, log in logs.items():
        assert "pwd: /workspace" in log, name  # not the image's WorkingDir
        assert "tool from the image PATH" in log and "var: from the image overridden: by the pipeline" in log, name
    assert "entrypoint ran as 1234:0 with 3 arguments" in logs["plain"]  # the shell, -c, the script
    assert "id: 1234:0 groups: 0\n" in logs["plain"] and "home: / " in logs["plain"]  # runc's defaults
    assert "entry: yes" in logs["plain"] and "owners: 1234 1234" in logs["plain"]
    assert "entrypoint ran" not in logs["cleared"] and "entry: none" in logs["cleared"]
    assert "the other entrypoint ran" in logs["other"] and "entry: none" in logs["other"]
    assert "entrypoint ran as 1500:1501" in logs["named"] and "id: 1500:1501 groups: 1501 1600" in logs["named"]
    assert "home: /home/builder " in logs["named"] and "owners: 1500 1500" in logs["named"]
