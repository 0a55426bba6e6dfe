"""Artifacts: collected after the job is dead, never through a symlink, never outside the workspace."""

from __future__ import annotations

import hashlib

from worker.sandbox.artifacts import artifact_path
from worker.sandbox.request import Limits


def by_path(result):
    return {a.path: a for a in result.artifacts}, {r.path: r.why for r in result.rejected_artifacts}


def test_files_are_collected_with_sha256(run, engine):
    res, _out, _err = run.sh("mkdir -p dist/sub && printf hello > dist/app.tar && printf x > dist/sub/b.txt "
                             "&& printf no > other.txt", artifacts=("dist",))
    kept, rejected = by_path(res)
    assert set(kept) == {"dist/app.tar", "dist/sub/b.txt"} and not rejected
    app = kept["dist/app.tar"]
    assert app.size == 5 and app.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert artifact_path(engine.artifact_store, app.sha256).read_bytes() == b"hello"


def test_symlinks_to_host_files_are_rejected(run):
    """A link to /etc/shadow (or the host's state) is reported, not followed."""
    res, _out, _err = run.sh("mkdir out && ln -s /etc/shadow out/shadow && ln -s /var/lib/sandpit out/state "
                             "&& ln -s ../../../../../etc/passwd out/up && echo ok > out/real",
                             artifacts=("out/*",))
    kept, rejected = by_path(res)
    assert set(kept) == {"out/real"}
    assert rejected == {"out/shadow": "symlink", "out/state": "symlink", "out/up": "symlink"}


def test_directory_symlink_and_loops_terminate(run):
    """A directory symlink is rejected; symlink loops do not trap the walk."""
    res, _out, _err = run.sh("mkdir -p a/b && ln -s .. a/b/loop && ln -s / rootlink && ln -s self self "
                             "&& echo x > a/file", artifacts=("**", "rootlink/etc/passwd"))
    kept, rejected = by_path(res)
    assert set(kept) == {"a/file"}
    assert rejected == {"a/b/loop": "symlink", "rootlink": "symlink", "self": "symlink"}


def test_matched_directory_that_is_a_symlink(run):
    res, _out, _err = run.sh("ln -s /etc dist", artifacts=("dist",))
    kept, rejected = by_path(res)
    assert not kept and rejected == {"dist": "symlink"}


def test_hostile_file_names(run):
    """Names with newlines, leading dashes, spaces and invalid UTF-8 are handled without harm."""
    res, _out, _err = run("python3", "-c", r"""
import os
os.makedirs('o', exist_ok=True)
for n in [b'-rf', b'new\nline', b'sp ace', b'\xff\xfe', b'..dots', b'$(reboot)']:
    open(b'o/' + n, 'wb').write(b'x')
os.mkfifo('o/fifo')
""", image="python", artifacts=("o",))
    kept, rejected = by_path(res)
    assert set(kept) == {"o/-rf", "o/new\nline", "o/sp ace", "o/..dots", "o/$(reboot)"}
    assert rejected == {"o/\\xff\\xfe": "file name is not valid UTF-8", "o/fifo": "not a regular file"}


def test_caps_on_size_count_and_total(run):
    limits = Limits(artifact_file_bytes=1000, artifact_count=3, artifact_total_bytes=1500)
    res, _out, _err = run.sh("mkdir o && head -c 2000 /dev/zero > o/big && for i in 1 2 3 4; do "
                             "head -c 600 /dev/zero > o/f$i; done", artifacts=("o",), limits=limits)
    kept, rejected = by_path(res)
    assert "file larger" in rejected["o/big"]
    assert len(kept) == 2  # 600 + 600; a third would pass the 1500-byte total
    assert sum(a.size for a in kept.values()) <= 1500
    assert all("cap" in why or "limit" in why for why in rejected.values())


def test_bad_patterns_refused_before_start(run, engine):
    """Absolute or '..' patterns fail the request (invalid_spec) before any container exists."""
    res, _out, _err = run("touch", "/workspace/x", artifacts=("../etc/passwd", "/etc/shadow"))
    assert (res.status, res.reason) == ("failed", "invalid_spec")
    assert ".." in res.message and "absolute" in res.message
    assert res.exit_code is None


def test_artifacts_collected_when_job_fails(run):
    res, _out, _err = run.sh("echo partial > log.txt; exit 3", artifacts=("log.txt",))
    assert res.status == "failed" and [a.path for a in res.artifacts] == ["log.txt"]


def test_background_writer_is_dead_before_collection(run):
    """A process left running cannot swap a file for a symlink after the check: all are killed first."""
    res, _out, _err = run.sh("(while true; do rm -f o/f; echo x > o/f; rm -f o/f; ln -s /etc/shadow o/f; done) "
                             "& mkdir -p o; sleep 0.2; exit 0", artifacts=("o",))
    kept, rejected = by_path(res)
    assert set(kept) | set(rejected) <= {"o/f"}
    assert all(a.size <= 2 for a in kept.values())
