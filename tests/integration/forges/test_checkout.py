"""Commits fetched from a real ``git daemon`` on loopback into the hardened mirror, read, checked
out (files and a shallow ``.git``), and made once per run by a worker's RunSources over a real
database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from pipelines.forges.checkout import CheckoutRefused, checkout_commit
from pipelines.forges.mirror import FetchFailed, ensure_commit, read_pipeline_file, resolve_ref
from pipelines.forges.pipeline_files import KnownProject, load_commit_pipeline
from pipelines.language.model import Job as PlannedJob
from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Loc
from pipelines.store import repos
from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.sources import record_archive_source, record_commit_source, store_archive
from pipelines.store.transitions import cancel_run, create_run
from tests.integration.forges.gitserver import GitServer, Link, git_server
from worker.errors import InvalidRequest
from worker.service.run_sources import RunSources

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
CI = """\
include:
  - local: ci/*.yml
  - {project: acme/templates, ref: v1, file: build.yml}
unit:
  extends: .build
  script: [make check]
  rules:
    - exists: [Makefile]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with git_server(tmp_path_factory.mktemp("git")) as srv:
        srv.create("app")
        for i in range(5):
            srv.commit("app", {f"history/{i}.txt": f"{i}\n"}, f"commit {i}")
        srv.commit("app", {".gitlab-ci.yml": CI, "ci/lint.yml": "lint: {script: [ruff]}\n", "Makefile": "all:\n",
                           "outside": Link("/etc/passwd")}, "pipeline")
        srv.commit("app", {"bin/run.sh": "#!/bin/sh\necho run\n"}, "exec bit", executable=("bin/run.sh",))
        srv.create("templates")
        srv.commit("templates", {"build.yml": "include: common.yml\n.build: {image: debian, before_script: [b]}\n",
                                 "common.yml": "variables: {FROM_TEMPLATES: 'yes'}\n"}, "templates")
        srv.tag("templates", "v1")
        yield srv


def _head(server: GitServer, name: str) -> str:
    return resolve_ref(server.url(name), "main")


def test_fetch_depth_checkout_and_symlinks(server: GitServer, tmp_path: Path) -> None:
    """A shallow fetch holds the depth asked (deepened on a second ask); the checkout has the
    commit's files, its exec bits, its symlink as a link (never followed), and a .git with that
    history, HEAD at the commit."""
    sha = _head(server, "app")
    mirrors = tmp_path / "mirrors"
    mirror = ensure_commit(mirrors, "app", server.url("app"), sha, depth=2)
    assert len(subprocess.run(["git", "--git-dir", str(mirror), "rev-list", sha], capture_output=True, text=True,
                              check=True).stdout.split()) == 2
    ensure_commit(mirrors, "app", server.url("app"), sha, depth=4)
    tree = checkout_commit(mirrors, "app", server.url("app"), sha, 3, tmp_path / "tree")
    root = tree.root
    assert (root / "Makefile").read_text() == "all:\n"
    assert os.readlink(root / "outside") == "/etc/passwd" and (root / "outside").is_symlink()
    assert os.stat(root / "bin/run.sh").st_mode & 0o111
    log = subprocess.run(["git", "-C", str(root), "log", "--format=%H"], capture_output=True, text=True, check=True)
    assert log.stdout.split()[0] == sha and len(log.stdout.split()) == 3
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                            check=True)
    assert status.stdout == ""  # the index matches the files
    assert ".git/HEAD" in tree.entries and "outside" in tree.entries
    remote = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True)
    assert remote.stdout.strip() == server.url("app")
    assert not list(tmp_path.glob(".tree.*.tmp"))


def test_caps_and_bad_commits_are_refused(server: GitServer, tmp_path: Path) -> None:
    """A tree over the file cap is refused before anything is written; a commit the server does
    not have is a FetchFailed with git's words."""
    sha = _head(server, "app")
    ensure_commit(tmp_path / "m", "app", server.url("app"), sha, depth=1)
    with pytest.raises(CheckoutRefused, match="caps"):
        checkout_commit(tmp_path / "m", "app", server.url("app"), sha, 1, tmp_path / "tree", max_files=3)
    assert not (tmp_path / "tree").exists()
    with pytest.raises(FetchFailed):
        ensure_commit(tmp_path / "m", "app", server.url("app"), "f" * 40, depth=1)


def test_pipeline_with_local_and_project_includes_from_commits(server: GitServer, tmp_path: Path) -> None:
    """The entry file, its local glob include and its project include (fetched from the other
    repository at its tag, with that project's own local include) are read; rules:exists sees
    the commit's tree; an unknown project is left for the planner to name."""
    sha = _head(server, "app")
    known = {"acme/templates": KnownProject("templates", server.url("templates"), "main")}
    loaded = load_commit_pipeline(tmp_path, "app", server.url("app"), sha, [".sandpit.yml", ".gitlab-ci.yml"],
                                  known.get, depth=1)
    assert loaded.entry == ".gitlab-ci.yml" and loaded.commit_message == "exec bit"
    assert sorted(loaded.files) == [".gitlab-ci.yml", "ci/lint.yml", "project:acme/templates@v1:build.yml",
                                    "project:acme/templates@v1:common.yml"]
    assert loaded.existing is not None and "Makefile" in loaded.existing
    result = plan(loaded.files, PipelineInputs(existing_files=loaded.existing), entry=loaded.entry)
    assert isinstance(result, Plan), result
    assert {job.name: job.script for job in result.jobs} == {"unit": ("b", "make check"), "lint": ("ruff",)}
    assert result.job("unit").env()["FROM_TEMPLATES"] == "yes"
    unknown = load_commit_pipeline(tmp_path, "app", server.url("app"), sha, [".gitlab-ci.yml"], lambda _n: None,
                                   depth=1)
    problems = plan(unknown.files, PipelineInputs(existing_files=unknown.existing), entry=unknown.entry)
    assert not isinstance(problems, Plan)
    assert [p.code for p in problems.errors][:1] == ["include-not-found"]


def test_the_pipeline_file_read_warms_the_mirror(server: GitServer, tmp_path: Path) -> None:
    """The API's read fetches the default depth, so the worker's checkout needs no fetch."""
    sha = _head(server, "app")
    found = read_pipeline_file(tmp_path, "app", server.url("app"), sha, [".gitlab-ci.yml"])
    assert found.path == ".gitlab-ci.yml" and found.text == CI
    assert ensure_commit(tmp_path, "app", "git://127.0.0.1:1/unreachable.git", sha, depth=5).is_dir()


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    migrate(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _run(db: Engine) -> str:
    planned = plan({"ci.yml": "t: {script: [x]}"})
    assert isinstance(planned, Plan)
    with session_scope(db) as session:
        return create_run(session, planned, trust="trusted", source="webhook", variables={}, now=NOW).run.id


def _job(**env: str) -> PlannedJob:
    return PlannedJob(name="t", stage="test", loc=Loc("ci.yml", 1, 1), variables=tuple(env.items()))


def test_run_sources_make_each_tree_once_and_sweep_ended_runs(server: GitServer, db: Engine, tmp_path: Path) -> None:
    """Jobs of one run share one checkout per GIT_DEPTH (made once however many ask at once);
    GIT_STRATEGY none is an empty workspace, a bad GIT_* fails the job; an uploaded tree is
    unpacked; the trees of a cancelled run go at the next sweep, a tree of a run the store does
    not know once it is an hour old."""
    sha = _head(server, "app")
    with session_scope(db) as session:
        repo_id = repos.add_repository(session, repos.NewRepository("acme/app", "github", server.url("app"), "s"),
                                       NOW).id
    run_id, archive_run, bare_run = _run(db), _run(db), _run(db)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("src/main.c")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"int"))
    with session_scope(db) as session:
        record_commit_source(session, run_id, repo_id, server.url("app"), sha)
        store_archive(session, "d" * 64, buffer.getvalue(), NOW)
        record_archive_source(session, archive_run, "d" * 64)
    sources = RunSources(tmp_path / "state", db)
    from pipelines.store.db import read_scope
    from pipelines.store.reads import read_run_row

    with read_scope(db) as session:
        run, archived, bare = (read_run_row(session, r) for r in (run_id, archive_run, bare_run))
    assert run is not None and archived is not None and bare is not None
    found: list[object] = []
    threads = [threading.Thread(target=lambda: found.append(sources.source_for(run, _job()))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    roots = {getattr(f, "root", None) for f in found}
    assert len(roots) == 1 and (tmp_path / "state/sources" / run_id / "depth-20").is_dir()
    shallow = sources.source_for(run, _job(GIT_DEPTH="1"))
    assert shallow is not None and shallow.root.name == "depth-1"
    assert sources.source_for(run, _job(GIT_STRATEGY="none")) is None
    assert sources.source_for(bare, _job()) is None
    with pytest.raises(InvalidRequest, match="GIT_DEPTH"):
        sources.source_for(run, _job(GIT_DEPTH="lots"))
    with pytest.raises(InvalidRequest, match="GIT_SUBMODULE_STRATEGY"):
        sources.source_for(run, _job(GIT_SUBMODULE_STRATEGY="sometimes"))
    with pytest.raises(InvalidRequest, match="GIT_LFS_SKIP_SMUDGE 0 asks for Git LFS objects"):
        sources.source_for(run, _job(GIT_LFS_SKIP_SMUDGE="0"))
    unpacked = sources.source_for(archived, _job())
    assert unpacked is not None and (unpacked.root / "src/main.c").read_text() == "int"
    stranger = tmp_path / "state/sources/0000-not-this-store"  # another database's worker shares the dir
    (stranger / "depth-20").mkdir(parents=True)
    assert sources.sweep() == [] and stranger.is_dir()
    with session_scope(db) as session:
        cancel_run(session, run_id, NOW)
    assert sources.sweep() == [run_id]
    os.utime(stranger, (0, 0))  # an hour and more: its run is not coming back
    assert sources.sweep() == [stranger.name] and not stranger.exists()
    assert not (tmp_path / "state/sources" / run_id).exists()
    assert (tmp_path / "state/sources" / archive_run).exists()
