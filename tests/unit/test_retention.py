"""``sandpit gc`` (worker/local/retention.py) in a state dir of the test's own, through the real process:
records past their age or the size cap go with their logs and stored files, local caches are
evicted least recently used first, a file something still names stays, nothing is followed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from worker.local import cache as local_cache
from worker.local import records as local_records
from worker.sandbox.blobs import blob_path, store_bytes

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0


def gc(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDPIT_")}
    return subprocess.run([sys.executable, "-m", "worker", "gc"], env={**clean, "SANDPIT_STATE_DIR": str(state), **env},
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def blob(state: Path, content: bytes, age_s: float = 2 * 3600) -> str:
    """A stored file, last written ``age_s`` ago (past the store's one-hour grace by default)."""
    sha = store_bytes(state / "artifacts", content)
    then = time.time() - age_s
    os.utime(blob_path(state / "artifacts", sha), (then, then))
    return sha


def run_record(state: Path, ident: str, age_s: float, files: dict[str, str], log_bytes: int = 10) -> str:
    log = f"{ident[:12]}.jsonl"
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "logs" / log).write_bytes(b"x" * log_bytes)
    job = {"id": ident + "-job", "name": "build", "status": "succeeded", "logs": [log],
           "artifacts": [{"path": p, "size": 1, "sha256": s} for p, s in files.items()],
           "stored": sorted(files.values())}
    local_records.write_record(state, {"kind": "run", "id": ident, "created": time.time() - age_s,
                                       "status": "succeeded", "jobs": [job]})
    return log


def test_old_records_go_with_their_logs_and_files_but_shared_files_stay(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shared, own = blob(state, b"shared"), blob(state, b"only the old run's")
    fresh_only = blob(state, b"the fresh run's", age_s=10)  # inside the grace period: never removed
    old_log = run_record(state, "0ld0000000aa", 8 * DAY, {"a.txt": shared, "b.txt": own})
    new_log = run_record(state, "f4e5h0000000", 60, {"a.txt": shared, "c.txt": fresh_only})
    p = gc(state)
    assert p.returncode == 0, p.stderr
    assert "removed 1 record(s), 1 log(s), 1 stored file(s)" in p.stdout
    assert not (state / "logs" / old_log).exists() and (state / "logs" / new_log).exists()
    assert not blob_path(state / "artifacts", own).exists()
    assert blob_path(state / "artifacts", shared).exists() and blob_path(state / "artifacts", fresh_only).exists()
    assert [r.id for r in local_records.read_records(state)] == ["f4e5h0000000"]


def test_past_the_size_cap_the_oldest_records_go_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for i, ident in enumerate(["aaaa00000001", "aaaa00000002", "aaaa00000003"]):
        run_record(state, ident, 3600 * (3 - i), {f"{i}.bin": blob(state, bytes([i]) * 4000)}, log_bytes=4000)
    p = gc(state, SANDPIT_RETENTION_SIZE="9K")
    assert p.returncode == 0, p.stderr
    assert [r.id for r in local_records.read_records(state)] == ["aaaa00000003"]
    assert sorted(os.listdir(state / "logs")) == ["aaaa00000003.jsonl"]


def cache_entry(state: Path, repo: Path, key: str, content: bytes, used_ago_s: float) -> tuple[str, str]:
    file_sha = blob(state, content)
    manifest = blob(state, json.dumps([{"path": f"deps/{key}", "size": len(content), "sha256": file_sha}]).encode())
    path = local_cache.write_entry(local_cache.repository_dir(state, repo), key, "trusted", manifest, len(content))
    then = time.time() - used_ago_s
    os.utime(path, (then, then))
    return manifest, file_sha


def test_local_caches_are_evicted_least_recently_used_first(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    oldest = cache_entry(state, repo, "k1", b"1" * 3000, 3 * DAY)
    middle = cache_entry(state, repo, "k2", b"2" * 3000, 2 * DAY)
    newest = cache_entry(state, repo, "k3", b"3" * 3000, 60)
    p = gc(state, SANDPIT_CACHE_SIZE="4K")
    assert p.returncode == 0, p.stderr
    assert "2 cache entries" in p.stdout
    assert [e.key for e in local_cache.all_entries(state)] == ["k3"]
    store = state / "artifacts"
    assert not any(blob_path(store, sha).exists() for sha in (*oldest, *middle))
    assert all(blob_path(store, sha).exists() for sha in newest)


def test_a_database_that_cannot_be_asked_keeps_every_file(tmp_path: Path) -> None:
    """Where a service database is configured but does not answer, a file might be the service's:
    the record goes, its file stays."""
    state = tmp_path / "state"
    own = blob(state, b"maybe the service's too")
    run_record(state, "0ld0000000bb", 9 * DAY, {"a": own})
    p = gc(state, SANDPIT_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert p.returncode == 0, p.stderr
    assert local_records.read_records(state) == [] and blob_path(state / "artifacts", own).exists()


def test_nothing_outside_the_stores_is_touched(tmp_path: Path) -> None:
    """A log name that is a symlink loses the link, never its target; a record naming a path
    outside the logs folder names nothing; a dead run's private store goes, a live one stays."""
    state = tmp_path / "state"
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (state / "logs").mkdir(parents=True)
    (state / "logs" / "aaaa0000link.jsonl").symlink_to(outside)
    job = {"id": "j", "name": "x", "status": "failed", "logs": ["aaaa0000link.jsonl", "../../precious.txt"],
           "artifacts": [], "stored": ["../../precious.txt"]}
    local_records.write_record(state, {"kind": "exec", "id": "aaaa0000link", "created": time.time() - 30 * DAY,
                                       "jobs": [job]})
    dead, live = state / "local" / "run-dead", state / "local" / "run-live"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "run.db").write_text("")
    os.utime(dead / "run.db", (time.time() - 2 * DAY,) * 2)
    os.utime(dead, (time.time() - 2 * DAY,) * 2)
    p = gc(state)
    assert p.returncode == 0, p.stderr
    assert outside.read_text() == "keep me"
    assert not (state / "logs" / "aaaa0000link.jsonl").is_symlink()
    assert not dead.exists() and live.exists()
    assert "1 dead run store(s)" in p.stdout


def test_bad_retention_settings_are_refused_by_name(tmp_path: Path) -> None:
    p = gc(tmp_path, SANDPIT_RETENTION="soon")
    assert p.returncode == 125 and "SANDPIT_RETENTION='soon'" in p.stderr and "Traceback" not in p.stderr


def test_what_a_killed_writer_left_is_removed_in_time(tmp_path: Path) -> None:
    """A unique temporary left by a writer killed before its rename goes after an hour, a record
    file that cannot be read after the retention age; a fresh temporary stays (it may be in use)."""
    state = tmp_path / "state"
    folder = local_records.records_dir(state)
    folder.mkdir(parents=True)
    old_temp, new_temp, torn = folder / ".tmp-0a0a0a0a", folder / ".tmp-0b0b0b0b", folder / "deadbeef0000.json"
    for path, age in ((old_temp, 7200), (new_temp, 5), (torn, 8 * DAY)):
        path.write_text('{"id": "dead')
        os.utime(path, (time.time() - age,) * 2)
    p = gc(state)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(folder)) == [".tmp-0b0b0b0b"]
