"""The service's collection for a state dir (pipelines/retention.py) on a real database and real
files: what has expired goes, what has not stays, and no symlink is ever followed."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from pipelines.files.locks import hold
from pipelines.retention import RetentionLoop, RetentionSettings, collect, collect_if_due
from pipelines.store import repos
from pipelines.store.db import read_scope, session_scope
from pipelines.store.retention import expire_artifacts
from pipelines.store.transitions import cancel_run
from tests.integration.store.conftest import T0, at, record, run_job, start_run

REPO = Path(__file__).resolve().parents[3]
DAY = 86400.0
SETTINGS = RetentionSettings()


def _old(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    return outside


def test_trees_of_ended_runs_go_and_links_inside_are_not_followed(engine: Engine, tmp_path: Path) -> None:
    """`sources/<run>` of an ended run (and of one the store does not know) is removed with the
    links in it, their targets untouched; a running run's tree and a planted top-level link stay."""
    state, outside = tmp_path / "state", _outside(tmp_path)
    ended, running = start_run(engine, "t: {script: [x]}"), start_run(engine, "t: {script: [x]}")
    with session_scope(engine) as session:
        cancel_run(session, ended, at(1))
    for run_id in (ended, running, "0190aaaa-0000-7000-8000-000000000000"):
        tree = state / "sources" / run_id / "depth-20"
        tree.mkdir(parents=True)
        (tree / "file").write_text("x")
        os.symlink(outside, tree / "link-to-outside")
    os.symlink(outside, state / "sources" / "0190bbbb-0000-7000-8000-000000000000")
    done = collect(engine, state, SETTINGS, at(2))
    assert done is not None and done.trees == 2
    assert sorted(os.listdir(state / "sources")) == sorted([running, "0190bbbb-0000-7000-8000-000000000000"])
    assert (outside / "precious").read_text() == "keep me"


def test_mirrors_of_removed_idle_and_ended_go_under_their_lock(engine: Engine, tmp_path: Path) -> None:
    """A removed repository's mirror goes with its lock file; an idle one goes (its lock file stays
    for the next fetch); a fresh one stays; a busy one (its lock held) stays; a per-run mirror goes
    once its run has ended (with its lock file: nothing fetches into them again)."""
    state = tmp_path / "state"
    mirrors = state / "mirrors"
    with session_scope(engine) as session:
        ids = {name: repos.add_repository(session, repos.NewRepository(f"o/{name}", "github", "https://h/x.git", "s"),
                                          T0).id for name in ("gone", "idle", "fresh", "busy")}
        repos.remove_repository(session, ids["gone"])
    ended, running = start_run(engine, "t: {script: [x]}"), start_run(engine, "t: {script: [x]}")
    with session_scope(engine) as session:
        cancel_run(session, ended, at(1))
    names = {**ids, "ended": f"run-{ended}", "running": f"run-{running}"}
    for key in names.values():
        (mirrors / f"{key}.git" / "objects" / "pack").mkdir(parents=True)
        (mirrors / f"{key}.git" / "HEAD").write_text("ref: refs/heads/main\n")
        (mirrors / f"{key}.lock").touch()
    for key in (ids["idle"], ids["busy"]):
        for part in ("objects/pack", "objects", ""):
            _old(mirrors / f"{key}.git" / part, 40 * DAY)
    with hold(mirrors / f"{ids['busy']}.lock"):
        done = collect(engine, state, SETTINGS, at(2))
    assert done is not None and done.mirrors == 3
    assert sorted(os.listdir(mirrors)) == sorted(
        [f"{ids['idle']}.lock", f"{ids['fresh']}.git", f"{ids['fresh']}.lock", f"{ids['busy']}.git",
         f"{ids['busy']}.lock", f"run-{running}.git", f"run-{running}.lock"])


def _blob(store: Path, sha: str, age_s: float) -> Path:
    path = store / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"copy")
    _old(path, age_s)
    return path


def test_this_hosts_copies_of_expired_files_go_an_hour_after_they_expired(engine: Engine, tmp_path: Path) -> None:
    """Another host's sweeper expired the rows; this host (the API's store over HTTP) removes its
    copies an hour on, except one a live row still names, and reads each noted file once."""
    state = tmp_path / "state"
    store = state / "artifacts"
    text = ("t: {script: [x], artifacts: {paths: [a, b], expire_in: 1 minute}}\n"
            "u: {script: [y], artifacts: {paths: [b]}}")
    run_id = start_run(engine, text)
    a, b = "a" * 64, "b" * 64
    run_job(engine, run_id, "t", record(artifacts=[{"path": "a", "size": 4, "sha256": a},
                                                   {"path": "b", "size": 4, "sha256": b}]), now=1)
    run_job(engine, run_id, "u", record(artifacts=[{"path": "b", "size": 4, "sha256": b}]), now=3)  # never expires
    with session_scope(engine) as session:
        assert len(expire_artifacts(session, at(120))) == 2
    copies = {sha: _blob(store, sha, 2 * 3600) for sha in (a, b)}
    done = collect(engine, state, SETTINGS, at(600))  # ten minutes after: too early
    assert done is not None and done.files == 0 and all(p.exists() for p in copies.values())
    done = collect(engine, state, SETTINGS, at(120 + 3601))
    assert done is not None and done.files == 1
    assert not copies[a].exists() and copies[b].exists()  # b: `u` still keeps it
    _blob(store, a, 2 * 3600)  # the same bytes stored again later are not judged again
    done = collect(engine, state, SETTINGS, at(120 + 7200))
    assert done is not None and done.files == 0 and copies[a].exists()


def test_old_service_logs_go_and_job_logs_stay(engine: Engine, tmp_path: Path) -> None:
    """`<job>.svc<N>.jsonl` untouched for the retention goes; a recent one, a job's own log and a
    planted link named like a service log stay."""
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    job = "0190cccc-0000-7000-8000-000000000000"
    for name, age in ((f"{job}.svc0.jsonl", 8 * DAY), (f"{job}.svc1.jsonl", DAY), (f"{job}.jsonl", 30 * DAY)):
        (logs / name).write_text("{}\n")
        _old(logs / name, age)
    outside = _outside(tmp_path)
    os.symlink(outside / "precious", logs / f"{job}.svc2.jsonl")
    _old(logs / f"{job}.svc2.jsonl", 30 * DAY)
    done = collect(engine, tmp_path / "state", SETTINGS, at(0))
    assert done is not None and done.service_logs == 1
    assert sorted(os.listdir(logs)) == sorted([f"{job}.svc1.jsonl", f"{job}.jsonl", f"{job}.svc2.jsonl"])
    assert (outside / "precious").read_text() == "keep me"


def test_forge_rows_expire_by_the_settings_and_zero_keeps_them(engine: Engine, tmp_path: Path) -> None:
    """The collection applies the configured periods to the database; 0 keeps a kind for good."""
    with session_scope(engine) as session:
        repo_id = repos.add_repository(session, repos.NewRepository("o/r", "github", "https://h/r.git", "s"), T0).id
        repos.record_delivery(session, repo_id, "push", "bad_signature", 401, "forged", T0)
    keep = RetentionSettings(deliveries_s=0)
    done = collect(engine, tmp_path / "state", keep, at(0) + dt.timedelta(days=400))
    assert done is not None and done.deliveries == 0
    done = collect(engine, tmp_path / "state", SETTINGS, at(0) + dt.timedelta(days=31))
    assert done is not None and done.deliveries == 1
    with read_scope(engine) as session:
        assert repos.list_deliveries(session, repo_id) == []


def test_the_periodic_collection_runs_once_per_period(engine: Engine, tmp_path: Path) -> None:
    """`collect_if_due` collects when the state dir's stamp is old enough, not again before."""
    state = tmp_path / "state"
    assert collect_if_due(engine, state, SETTINGS, at(0)) is not None
    assert collect_if_due(engine, state, SETTINGS, at(1)) is None
    _old(state / "gc" / "service-stamp", SETTINGS.every_s + 1)
    assert collect_if_due(engine, state, SETTINGS, at(2)) is not None
    assert collect_if_due(engine, state, RetentionSettings(every_s=0), at(3)) is None


def test_sandpit_gc_collects_for_the_service_database_too(engine: Engine, db_url: str, tmp_path: Path) -> None:
    """`sandpit gc` on a host whose state dir serves a database (an API host over HTTP, a stopped
    worker's) runs the same collection after the local one, and says what it removed."""
    state = tmp_path / "state"
    ended = start_run(engine, "t: {script: [x]}")
    with session_scope(engine) as session:
        cancel_run(session, ended, at(1))
        repo_id = repos.add_repository(session, repos.NewRepository("o/r", "github", "https://h/r.git", "s"), T0).id
        repos.record_delivery(session, repo_id, "push", "bad_signature", 401, "forged",
                              dt.datetime.now(dt.UTC) - dt.timedelta(days=40))
    (state / "sources" / ended / "archive").mkdir(parents=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDPIT_")}
    done = subprocess.run([sys.executable, "-m", "worker", "gc"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**clean, "SANDPIT_STATE_DIR": str(state), "SANDPIT_DATABASE_URL": db_url})
    assert done.returncode == 0, done.stderr
    assert "service: removed 0 commit status(es), 1 web-hook deliver(ies), 0 uploaded tree(s), " \
           "0 expired stored file(s), 1 run tree(s), 0 mirror(s), 0 service log(s)" in done.stdout, done.stdout
    assert not (state / "sources" / ended).exists()
    refused = subprocess.run([sys.executable, "-m", "worker", "gc"], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env={**clean, "SANDPIT_STATE_DIR": str(state), "SANDPIT_DATABASE_URL": db_url,
                                               "SANDPIT_DELIVERY_RETENTION": "2d"})
    assert refused.returncode == 2 and "SANDPIT_DELIVERY_RETENTION='2d' is under a week" in refused.stderr


def test_the_apis_loop_collects_on_its_own_thread(engine: Engine, tmp_path: Path) -> None:
    """The loop the API starts runs the collection by itself once its period has passed, and stops."""
    state = tmp_path / "state"
    (state / "sources" / "0190dddd-0000-7000-8000-000000000000").mkdir(parents=True)  # a run the store never had
    loop = RetentionLoop(engine, state, RetentionSettings(every_s=0.2))
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while (state / "sources" / "0190dddd-0000-7000-8000-000000000000").exists():
            assert time.monotonic() < deadline, "the loop never collected"
            time.sleep(0.05)
    finally:
        loop.stop()
    assert (state / "gc" / "service-stamp").exists()
