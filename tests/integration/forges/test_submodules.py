"""Submodules checked out from real repositories served by a ``git daemon`` on loopback: at the
commit the parent records, from registered repositories only, laid out as git lays them out;
hostile ``.gitmodules`` entries refused before anything is fetched or written; and through a
worker's RunSources over a real database (SQLite and PostgreSQL), with the run's trust."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from pipelines.forges.checkout import SubmoduleRequest, checkout_commit
from pipelines.forges.mirror import FetchFailed
from pipelines.forges.strategy import GitOptions, git_options
from pipelines.forges.submodules import Registered, SubmoduleRefused, canonical_url
from pipelines.language.model import Job as PlannedJob
from pipelines.language.model import Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Loc
from pipelines.store import repos
from pipelines.store.db import make_engine, migrate, read_scope, session_scope
from pipelines.store.reads import read_run_row
from pipelines.store.sources import record_commit_source
from pipelines.store.transitions import create_run
from tests.integration.forges.gitserver import Gitlink, GitServer, Link, git_server
from worker.errors import InvalidRequest
from worker.service.run_sources import RunSources

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class Repos:
    """The daemon's repositories: ``app`` records ``lib`` at ``vendor/lib`` (relative URL) and
    ``lib`` records ``deep`` at ``inner/deep`` (absolute URL); the commits recorded are older
    than the branch tips, so a checkout of the tip would show."""

    def __init__(self, server: GitServer) -> None:
        self.server = server
        server.create("deep")
        self.deep = server.commit("deep", {"deep.txt": "deep, recorded\n"}, "deep one")
        server.commit("deep", {"deep.txt": "deep, newer\n"}, "deep two")
        server.create("lib")
        self.lib = server.commit("lib", {"lib.txt": "lib, recorded\n", "inner/deep": Gitlink(self.deep),
                                         ".gitmodules": f'[submodule "deep"]\n\tpath = inner/deep\n'
                                                        f"\turl = {server.url('deep')}\n"}, "lib one")
        server.commit("lib", {"lib.txt": "lib, newer\n"}, "lib two")
        server.create("app")
        self.app = server.commit("app", {
            "README": "app\n", "vendor/lib": Gitlink(self.lib), "docs/manual": Gitlink(self.lib),
            ".gitmodules": '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ../lib.git\n'
                           '[submodule "manual"]\n\tpath = docs/manual\n\turl = ../lib\n'}, "app")

    def registered(self, *names: str) -> dict[str, Registered]:
        return {canonical_url(self.server.url(n)): Registered(n, self.server.url(n)) for n in names}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with git_server(tmp_path_factory.mktemp("git")) as srv:
        yield srv


@pytest.fixture(scope="module")
def made(server: GitServer) -> Repos:
    return Repos(server)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def _options(**env: str) -> GitOptions:
    options = git_options(env)
    assert isinstance(options, GitOptions), options
    return options


def _checkout(made: Repos, tmp_path: Path, env: dict[str, str], registered: dict[str, Registered],
              own: str | None = None, name: str = "app", sha: str = "") -> Path:
    options = _options(**env)
    request = SubmoduleRequest(options.submodules, registered.get, own)
    checkout_commit(tmp_path / "mirrors", name, made.server.url(name), sha or made.app, options.depth,
                    tmp_path / "tree", submodules=request)
    return tmp_path / "tree"


def test_normal_checks_out_the_recorded_commits_as_git_lays_them_out(made: Repos, tmp_path: Path) -> None:
    """normal: each submodule at the commit the parent records (not the branch tip), its files,
    a .git file naming .git/modules/<name>, a complete shallow history; the parent's and the
    submodule's git status are clean and git submodule status shows them initialised at their
    commits; a nested submodule is left empty."""
    root = _checkout(made, tmp_path, {"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_DEPTH": "1"},
                     made.registered("lib", "deep"))
    assert (root / "vendor/lib/lib.txt").read_text() == "lib, recorded\n"
    assert (root / "docs/manual/lib.txt").read_text() == "lib, recorded\n"
    assert (root / "vendor/lib/.git").read_text() == "gitdir: ../../.git/modules/lib\n"
    assert _git(root / "vendor/lib", "rev-parse", "HEAD") == made.lib
    assert _git(root / "vendor/lib", "rev-list", "--count", "HEAD") == "1"
    assert _git(root, "status", "--porcelain") == "" and _git(root / "vendor/lib", "status", "--porcelain") == ""
    status = _git(root, "submodule", "status").splitlines()
    assert sorted(line.split()[:2] for line in status) == [[made.lib, "docs/manual"], [made.lib, "vendor/lib"]]
    assert _git(root, "config", "submodule.lib.url") == made.server.url("lib")
    subprocess.run(["git", "-C", str(root / "vendor/lib"), "fsck", "--strict"], check=True, capture_output=True)
    assert list((root / "vendor/lib/inner/deep").iterdir()) == []


def test_recursive_paths_and_depth(made: Repos, tmp_path: Path) -> None:
    """recursive also checks out the submodule's own submodules at their recorded commits;
    GIT_SUBMODULE_PATHS :(exclude) leaves a path empty; GIT_SUBMODULE_DEPTH sets the history."""
    root = _checkout(made, tmp_path, {"GIT_SUBMODULE_STRATEGY": "recursive", "GIT_SUBMODULE_PATHS": ":(exclude)docs",
                                      "GIT_DEPTH": "1", "GIT_SUBMODULE_DEPTH": "2"}, made.registered("lib", "deep"))
    assert (root / "vendor/lib/inner/deep/deep.txt").read_text() == "deep, recorded\n"
    assert _git(root / "vendor/lib/inner/deep", "rev-parse", "HEAD") == made.deep
    assert (root / "vendor/lib/inner/deep/.git").read_text() == "gitdir: ../../../../.git/modules/lib/modules/deep\n"
    assert _git(root / "vendor/lib", "rev-list", "--count", "HEAD") == "1"  # lib one has no parent
    assert _git(root, "status", "--porcelain") == ""
    assert _git(root / "vendor/lib", "status", "--porcelain") == ""
    assert list((root / "docs/manual").iterdir()) == []


@pytest.mark.parametrize(("gitmodules", "files", "refusal"), [
    ('[submodule "x"]\n\tpath = evil\n\turl = ext::sh -c touch% {marker}\n', {"evil": "lib"},
     "submodule evil: URL 'ext::sh -c touch% {marker}' is refused: the ext:: transport runs a command on the host"),
    ('[submodule "x"]\n\tpath = etc\n\turl = file:///etc\n', {"etc": "lib"},
     "submodule etc: URL 'file:///etc' is refused: it names files on the host"),
    ('[submodule "x"]\n\tpath = ssh\n\turl = git@example.org:acme/lib.git\n', {"ssh": "lib"},
     "URL 'git@example.org:acme/lib.git' is refused: ssh would use the host's keys"),
    ('[submodule "x"]\n\tpath = ../../x\n\turl = ../lib.git\n', {"x": "lib"},
     "submodule 'x' (path '../../x') in .gitmodules is refused: the path is not a plain path inside the tree"),
    ('[submodule "x"]\n\tpath = link/sub\n\turl = ../lib.git\n', {"sub": "lib"},
     "submodule 'x' (path 'link/sub') in .gitmodules is refused: link is a symlink in the tree"),
    ('[submodule "x"]\n\tpath = sub\n\turl = ../deep.git\n', {"sub": "deep"},
     "submodule sub: URL {deep} is not the clone URL of a repository registered with sandpit"),
    ('', {"sub": "lib"}, "submodule sub: the tree has it but .gitmodules has no entry with this path"),
], ids=["ext", "file", "ssh", "dotdot-path", "symlink-path", "unregistered",
        "no-entry"])
def test_hostile_gitmodules_are_refused_before_anything_is_written(
    made: Repos, tmp_path: Path, gitmodules: str, files: dict[str, str], refusal: str,
) -> None:
    """Each hostile or unknown submodule is refused with its path, URL and why, before anything
    is fetched or written: no command ran, no tree was made, no mirror of it was fetched."""
    marker = tmp_path / "ext-ran"
    name = f"hostile-{abs(hash(gitmodules)) % 10**8}"
    made.server.create(name)
    content: dict[str, str | Link | Gitlink | None] = {"link": Link("/tmp"), "README": "x\n"}
    if gitmodules:
        content[".gitmodules"] = gitmodules.format(marker=marker)
    content.update({path: Gitlink(made.lib if repo == "lib" else made.deep) for path, repo in files.items()})
    sha = made.server.commit(name, content, "hostile")
    with pytest.raises(SubmoduleRefused) as refused:
        _checkout(made, tmp_path, {"GIT_SUBMODULE_STRATEGY": "recursive"}, made.registered("lib"), name=name, sha=sha)
    assert refusal.format(marker=marker, deep=made.server.url("deep")) in str(refused.value)
    assert not marker.exists() and not (tmp_path / "tree").exists()
    assert not list(tmp_path.glob(".tree.*.tmp")) and not (tmp_path / "mirrors" / "lib.git").exists()


@pytest.mark.parametrize(("section", "fsck"), [
    ('[submodule "../../hooks"]\n\tpath = sub\n\turl = ../lib\n', "gitmodulesName: disallowed submodule name"),
    ('[submodule "x"]\n\tpath = sub\n\turl = ../lib\n\tupdate = !sh -c id\n',
     "gitmodulesUpdate: disallowed submodule update setting"),
], ids=["name-out-of-modules", "update-command"])
def test_what_git_fsck_knows_is_refused_by_the_mirror_fetch(made: Repos, tmp_path: Path, section: str,
                                                             fsck: str) -> None:
    """A name that would put a git dir outside .git/modules (``../../hooks``), an ``update =
    !command``: the mirror's fsck of what it fetches refuses the commit (git's own checks)
    before sandpit's own (which hold too: tests/unit/forges/test_submodules.py)."""
    name = f"fsck-{abs(hash(section)) % 10**8}"
    made.server.create(name)
    sha = made.server.commit(name, {"sub": Gitlink(made.lib), ".gitmodules": section})
    with pytest.raises(FetchFailed, match=fsck):
        _checkout(made, tmp_path, {"GIT_SUBMODULE_STRATEGY": "normal"}, made.registered("lib"), name=name, sha=sha)
    assert not (tmp_path / "tree").exists()


def test_an_untrusted_run_checks_out_no_other_repository(made: Repos, tmp_path: Path) -> None:
    """A fork's run (own_repo set) is refused a submodule from another registered repository."""
    with pytest.raises(SubmoduleRefused, match="this run is untrusted"):
        _checkout(made, tmp_path, {"GIT_SUBMODULE_STRATEGY": "normal"}, made.registered("lib"), own="app")


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    migrate(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_run_sources_check_out_submodules_of_registered_repositories(made: Repos, db: Engine, tmp_path: Path) -> None:
    """Through the worker's RunSources: a trusted run's job asking for submodules gets them from
    the repository registered under that URL (its own mirror), in a tree of its own; an untrusted
    run's job fails with the sentence; a job without them shares the plain tree."""
    server = made.server
    with session_scope(db) as session:
        app = repos.add_repository(session, repos.NewRepository("acme/app", "gitlab", server.url("app"), "s"), NOW)
        lib = repos.add_repository(session, repos.NewRepository("acme/lib", "gitlab", server.url("lib") + "/", "s"),
                                   NOW)
        app_id, lib_id = app.id, lib.id
    planned = plan({"ci.yml": "t: {script: [x]}"})
    assert isinstance(planned, Plan)
    ids = []
    for trust in ("trusted", "untrusted"):
        with session_scope(db) as session:
            run_id = create_run(session, planned, trust=trust, source="webhook", variables={}, now=NOW).run.id
            record_commit_source(session, run_id, app_id, server.url("app"), made.app)
        ids.append(run_id)
    with read_scope(db) as session:
        trusted, untrusted = (read_run_row(session, r) for r in ids)
    assert trusted is not None and untrusted is not None
    sources = RunSources(tmp_path / "state", db)
    job = PlannedJob(name="t", stage="test", loc=Loc("ci.yml", 1, 1),
                     variables=(("GIT_SUBMODULE_STRATEGY", "normal"), ("GIT_SUBMODULE_PATHS", "vendor")))
    found = sources.source_for(trusted, job)
    assert found is not None and (found.root / "vendor/lib/lib.txt").read_text() == "lib, recorded\n"
    assert "vendor/lib/lib.txt" in (found.files or ()) and "vendor/lib/.git" in (found.files or ())
    assert (tmp_path / "state/mirrors" / f"{lib_id}.git").is_dir()
    plain = sources.source_for(trusted, PlannedJob(name="u", stage="test", loc=Loc("ci.yml", 1, 1)))
    assert plain is not None and plain.root.name == "depth-20" and plain.root != found.root
    assert list((plain.root / "vendor/lib").iterdir()) == []
    with pytest.raises(InvalidRequest, match="untrusted"):
        sources.source_for(untrusted, job)
