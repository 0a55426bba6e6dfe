"""Host paths built from job data: a job's ``image:``, a stored ref, a layer key or a workdir never
names a host path, a mount option or a file the job's author chose.

The attack this class started from: ``image: /proc/self/cwd/evil`` made the image store read
``evil.json`` from the repository (``refs/`` joined with an absolute name), whose ``key`` pointed at
a directory with ``rootfs -> /``; under runsc the job's root was the host's, under crun sandpit
created ``<run>/layers/<key>-<uid>`` wherever the key pointed, and a ``:`` in the key was spliced
into overlay's ``lowerdir=`` list. Every case here is a real run (the engine, ``sandpit exec`` or
``sandpit run`` as processes) that must be refused before anything is created.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipelines.record import replace
from tests.sandbox.test_cli_and_teardown import cli_env
from worker.sandbox.engine import Engine
from worker.sandbox.images import ImageStore
from worker.sandbox.request import SandboxRequest

REPO = Path(__file__).resolve().parents[3]
SANDPIT = str(REPO / ".venv" / "bin" / "sandpit")


def sandpit(settings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI process (the console script), crun, the test state dirs."""
    return subprocess.run([SANDPIT, *args], env=cli_env(settings, "crun"), capture_output=True, text=True,
                          timeout=300, cwd=cwd or REPO)


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (symlinks not followed), to prove nothing was created."""
    found = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def stray_views(settings) -> list[str]:
    """Entries of <run>/layers that are not a view of a real key (``<64 hex>-<uid base>``) or the
    lock: what an attacker's key would have made. Listed, not walked: the views are whole images,
    and other tests make and drop them meanwhile."""
    import re

    root = settings.run_dir / "layers"
    names = os.listdir(root) if root.is_dir() else []
    return [n for n in names if n != ".lock" and not re.fullmatch(r"[0-9a-f]{64}-[0-9]+", n)]


def one_line_refusal(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 125, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("sandpit:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture()
def evil_repo(tmp_path: Path, settings) -> Path:
    """A repository as the attacker ships it: ``evil.json`` whose key climbs to a directory of the
    attacker's (``rootfs -> /``), with a ':' variant for overlay's lowerdir list."""
    repo = tmp_path / "repo"
    target = tmp_path / "target"
    (target / "layer").mkdir(parents=True)
    (target / "layer" / "rootfs").symlink_to("/")
    climb = "../" * 12 + str(target).lstrip("/") + "/layer"
    repo.mkdir()
    for name, key in (("evil", climb), ("colon", climb + ":/")):
        (repo / f"{name}.json").write_text(json.dumps({"name": name, "key": key, "env": [], "size": 1,
                                                       "built_at": 0}))
    return repo


# -- image: as a host path ---------------------------------------------------------------------

@pytest.mark.parametrize("image", [
    "/proc/self/cwd/evil", "/proc/self/cwd/colon", "../../../../proc/self/cwd/evil", "./evil", "evil/../../x",
    "//proc/self/cwd/evil", "debian/../../../proc/self/cwd/evil", "debian:12,lowerdir=/", "debian\n",
])
def test_exec_image_that_is_a_path_is_refused_with_125(settings, evil_repo, no_leftovers, image):
    """``sandpit exec --image <path>`` exits 125 with one line, reads nothing the attacker wrote,
    and creates nothing where the attacker's key points (it used to run with the host as root)."""
    target = evil_repo.parent / "target"
    before = tree(target)
    p = sandpit(settings, "exec", "--image", image, "--", "cat", "/etc/shadow", cwd=evil_repo)
    line = one_line_refusal(p)
    assert "is not an image reference" in line
    assert p.stdout == ""
    assert tree(target) == before
    assert stray_views(settings) == []


@pytest.mark.parametrize("image", ["python:3.12", "python:2.7", "python:3.12-slim", "python:3", "debian:latest",
                                   "docker.io/library/debian:12", "localhost:5000/debian", "debian@sha256:" + "0" * 64])
def test_exec_image_no_recipe_provides_is_refused_with_125(settings, no_leftovers, image):
    """A reference the store cannot honour is refused (never run as another version), naming what exists."""
    line = one_line_refusal(sandpit(settings, "exec", "--image", image, "--", "python3", "-V"))
    assert image in line or image.split("@")[0] in line
    assert "debian:12" in line and "python:3.11" in line


def test_exec_provided_references_run_what_they_say(settings, no_leftovers):
    """python:3.11 runs bookworm's Python 3.11; debian:12 runs Debian 12; bare names still work."""
    p = sandpit(settings, "exec", "--image", "python:3.11", "--", "python3", "-V")
    assert p.returncode == 0 and p.stdout.startswith("Python 3.11."), p.stderr
    p = sandpit(settings, "exec", "--image", "debian:12", "--", "cat", "/etc/debian_version")
    assert p.returncode == 0 and p.stdout.startswith("12."), p.stderr
    p = sandpit(settings, "exec", "--image", "python", "--", "python3", "-c", "print(1)")
    assert p.returncode == 0 and p.stdout == "1\n", p.stderr


def test_pipeline_image_from_a_variable_fails_the_job_invalid_spec(settings, evil_repo, no_leftovers):
    """``image: $IMG`` expanding to a host path, or to a tag no recipe provides, fails that job
    ``failed``/``invalid_spec`` with a message; the attacker's target stays untouched."""
    target = evil_repo.parent / "target"
    before = tree(target)
    (evil_repo / ".gitlab-ci.yml").write_text(
        "path:\n  image: $IMG\n  variables: {IMG: /proc/self/cwd/evil}\n  script: [cat /etc/shadow]\n"
        "tag:\n  image: python:3.12\n  script: [python3 -V]\n"
        "ok:\n  image: python:3.11\n  script: [python3 -V]\n")
    p = sandpit(settings, "run", str(evil_repo / ".gitlab-ci.yml"), "--json", cwd=evil_repo)
    assert p.returncode == 1, p.stderr
    jobs = {j["name"]: j for j in json.loads(p.stdout)["jobs"]}
    assert (jobs["path"]["status"], jobs["path"]["reason"]) == ("failed", "invalid_spec")
    assert "not an image reference" in jobs["path"]["message"]
    assert (jobs["tag"]["status"], jobs["tag"]["reason"]) == ("failed", "invalid_spec")
    assert "no image python:3.12 here" in jobs["tag"]["message"] and "python:3.11" in jobs["tag"]["message"]
    assert jobs["ok"]["status"] == "succeeded"
    assert tree(target) == before


def test_lint_and_run_refuse_a_literal_path_image_at_its_location(settings, tmp_path, no_leftovers):
    """A literal ``image: /proc/self/cwd/evil`` is an error at file:line:col in lint and run (the
    file is refused before any job starts); a tag no recipe provides is a located warning in lint."""
    ci = tmp_path / "ci.yml"
    ci.write_text("a:\n  image: /proc/self/cwd/evil\n  script: [x]\n")
    for command in ("lint", "run"):
        p = sandpit(settings, command, str(ci), cwd=tmp_path)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert "ci.yml:2:10: error[invalid-value]" in p.stdout + p.stderr
    ci.write_text("a:\n  image: python:3.12\n  script: [x]\n")
    p = sandpit(settings, "lint", str(ci), cwd=tmp_path)
    assert p.returncode == 0
    assert "ci.yml:1:1: warning[image-unavailable]: job a: no image python:3.12 here" in p.stdout


# -- a planted store -----------------------------------------------------------------------------

def planted_store(tmp_path: Path, settings, how: str) -> tuple[Path, Path]:
    """A temporary state dir whose ``debian`` ref or layer is planted: returns (state dir, the
    attacker's directory, which must stay untouched)."""
    real = ImageStore(settings.state_dir, settings.images_dir).get("debian")
    state, attacker = tmp_path / "state", tmp_path / "attacker"
    refs, layers = state / "images" / "refs", state / "images" / "layers"
    refs.mkdir(parents=True)
    layers.mkdir()
    (attacker / "layer").mkdir(parents=True)
    (attacker / "layer" / "rootfs").symlink_to("/")
    good_ref = {"name": "debian", "key": real.key, "env": [], "size": 1, "built_at": 0}
    (attacker / "ref.json").write_text(json.dumps(good_ref))
    if how == "ref is a symlink":
        (refs / "debian.json").symlink_to(attacker / "ref.json")
        (layers / real.key).symlink_to(real.rootfs.parent)
    elif how == "refs dir is a symlink":
        refs.rmdir()
        refs.symlink_to(attacker)
        (attacker / "debian.json").write_text(json.dumps(good_ref))
    elif how == "layer is a symlink":
        (refs / "debian.json").write_text(json.dumps(good_ref))
        (layers / real.key).symlink_to(attacker / "layer")
    elif how == "rootfs is a symlink":
        (refs / "debian.json").write_text(json.dumps(good_ref))
        (layers / real.key).mkdir()
        (layers / real.key / "rootfs").symlink_to("/")
    elif how in ("key climbs", "key has a colon", "key is absolute"):
        key = {"key climbs": "../" * 12 + str(attacker / "layer").lstrip("/"),
               "key has a colon": real.key[:60] + ":/:x",
               "key is absolute": str(attacker / "layer")}[how]
        (refs / "debian.json").write_text(json.dumps({**good_ref, "key": key}))
    elif how == "env is not pairs":
        (refs / "debian.json").write_text(json.dumps({**good_ref, "env": {"LD_PRELOAD": "/x.so"}}))
        (layers / real.key).symlink_to(real.rootfs.parent)
    return state, attacker


PLANTS = ["ref is a symlink", "refs dir is a symlink", "layer is a symlink", "rootfs is a symlink", "key climbs",
          "key has a colon", "key is absolute", "env is not pairs"]


@pytest.mark.parametrize("how", PLANTS)
def test_planted_store_is_refused_as_damaged(settings, tmp_path, no_leftovers, how):
    """A symlinked ref, refs folder, layer or rootfs, or a ref whose key or env fails its grammar,
    makes the image "damaged": the job ends with that message, the attacker's directory is not
    touched, and nothing (job dir, disk, log, layer view) is created in the state dir."""
    state, attacker = planted_store(tmp_path, settings, how)
    before_attacker, before_state = tree(attacker), tree(state)
    engine = Engine(replace(settings, state_dir=state))
    result = engine.run(SandboxRequest(argv=("cat", "/etc/shadow"), image="debian"))
    assert result.status == "error" and result.exit_code is None, result
    assert "image 'debian' is damaged" in (result.message or "")
    assert tree(attacker) == before_attacker
    assert tree(state) == before_state
    assert stray_views(settings) == []


@pytest.mark.parametrize("how", ["ref is a symlink", "layer is a symlink", "rootfs is a symlink"])
def test_planted_store_through_the_cli(settings, tmp_path, no_leftovers, how):
    """The same planted store behind ``sandpit exec`` (its own process and settings): exit 125."""
    state, attacker = planted_store(tmp_path, settings, how)
    before = tree(attacker)
    env = {**cli_env(settings, "crun"), "SANDPIT_STATE_DIR": str(state)}
    p = subprocess.run([SANDPIT, "exec", "--", "cat", "/etc/shadow"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 125 and "damaged" in p.stderr and p.stdout == "", p.stderr
    assert tree(attacker) == before
    assert not (state / "scratch").exists() and not (state / "jobs").exists()


def test_images_list_and_rm_ignore_planted_entries(settings, tmp_path):
    """``images list`` shows no planted entry and ``images rm`` never removes through a symlink."""
    state, attacker = planted_store(tmp_path, settings, "layer is a symlink")
    (state / "images" / "refs" / "..evil.json").write_text("{}")
    (state / "images" / "refs" / "Evil.json").symlink_to(attacker / "ref.json")
    store = ImageStore(state, settings.images_dir)
    assert store.list() == []
    before = tree(attacker)
    with pytest.raises(Exception, match="damaged"):
        store.remove("debian")
    assert tree(attacker) == before


# -- --workdir ---------------------------------------------------------------------------------

@pytest.mark.parametrize("workdir", ["//proc/self", "///proc/self/cwd", "/./proc/self", "/proc/../proc/self",
                                     "//sys/kernel", "/./dev/shm", "//dev", "/workspace/../proc"])
def test_exec_workdir_under_proc_sys_dev_in_any_spelling_is_refused(settings, no_leftovers, workdir):
    """--workdir is judged component by component: //proc/self used to pass the ban."""
    line = one_line_refusal(sandpit(settings, "exec", "--workdir", workdir, "--", "ls", "-l", "."))
    assert "workdir" in line


# -- job ids -----------------------------------------------------------------------------------

@pytest.mark.parametrize("job_id", ["../../../tmp/x", "a/b", "..", "x\n", "x:y", "X", "a" * 65, "-x"])
def test_engine_refuses_a_job_id_outside_the_grammar(settings, tmp_path, no_leftovers, job_id):
    """A job id names <state>/jobs/<id>, logs/<id>.jsonl, a lock, a cgroup and a disk: one outside
    the grammar is refused at Engine.run's entry, before any of them exists (a fresh state dir
    stays empty, and nothing appears beside it)."""
    state = tmp_path / "deep" / "er" / "state"
    state.mkdir(parents=True)
    result = Engine(replace(settings, state_dir=state)).run(SandboxRequest(argv=("true",)), job_id=job_id)
    assert (result.status, result.reason) == ("failed", "invalid_spec")
    assert "job id" in (result.message or "") and result.job_id is None
    assert tree(tmp_path) == {"deep", "deep/er", "deep/er/state"}
