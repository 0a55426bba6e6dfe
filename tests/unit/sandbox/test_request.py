"""Validation of a sandbox request and the unit parsers (pure)."""

from __future__ import annotations

import pytest

from worker.sandbox.artifacts import match_path
from worker.sandbox.request import (
    Limits,
    SandboxRequest,
    artifact_pattern_problems,
    validate_request,
    workdir_problems,
)
from worker.sandbox.units import parse_cpus, parse_duration, parse_size


@pytest.mark.parametrize("text, value", [
    ("512", 512), ("64k", 65536), ("256M", 256 << 20), ("1G", 1 << 30), ("1Gi", 1 << 30),
    ("2GB", 2 << 30), ("1.5M", int(1.5 * (1 << 20))),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1M", "1X", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text, value", [("30", 30), ("30s", 30), ("1m30s", 90), ("2h", 7200), ("250ms", 0.25)])
def test_parse_duration(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "soon", "1x", "s30", "0s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_cpus():
    assert parse_cpus("1.5") == 1.5
    with pytest.raises(ValueError):
        parse_cpus("zero")
    with pytest.raises(ValueError):
        parse_cpus("0")


@pytest.mark.parametrize("req, fragment", [
    (SandboxRequest(argv=()), "no command"),
    (SandboxRequest(argv=("x",), env=(("1BAD", "v"),)), "environment name"),
    (SandboxRequest(argv=("x",), workdir="rel"), "absolute"),
    (SandboxRequest(argv=("x",), network="bridge"), "network"),  # type: ignore[arg-type]
    (SandboxRequest(argv=("x",), runtime="kata"), "runtime"),
    (SandboxRequest(argv=("x",), limits=Limits(memory_bytes=1024)), "memory"),
    (SandboxRequest(argv=("x",), limits=Limits(pids=1)), "pids"),
    (SandboxRequest(argv=("x",), artifacts=("../up",)), ".."),
])
def test_validate_request_names_the_problem(req, fragment):
    """Each refused request says why."""
    problems = validate_request(req)
    assert any(fragment in p for p in problems), problems


def test_validate_request_collects_all_problems():
    """Every problem is reported at once."""
    req = SandboxRequest(argv=(), workdir="rel", artifacts=("/abs",))
    assert len(validate_request(req)) == 3


@pytest.mark.parametrize("pattern, bad", [
    ("dist/*", False), ("**/*.xml", False), ("a/../b", True), ("/etc/passwd", True), ("..", True),
    ("", True),
])
def test_artifact_patterns(pattern, bad):
    assert bool(artifact_pattern_problems((pattern,))) is bad


@pytest.mark.parametrize("pattern, path, hit", [
    ("dist/*.tar", "dist/app.tar", True),
    ("dist/*.tar", "dist/sub/app.tar", False),
    ("dist", "dist/sub/app.tar", True),
    ("dist/", "dist/a", True),
    ("**/*.xml", "a/b/c.xml", True),
    ("**/*.xml", "c.xml", True),
    ("report.txt", "report.txt", True),
    ("report.txt", "other.txt", False),
    ("*", "a/b", True),
    ("./out", "out/x", True),
])
def test_match_path(pattern, path, hit):
    """GitLab-style globs: * within a segment, ** across segments, directories take their tree."""
    assert match_path(pattern, path) is hit


@pytest.mark.parametrize("workdir", [
    "/proc", "/proc/self", "//proc/self", "///proc", "/./proc", "/./proc/self/cwd", "/proc/", "/proc/../proc",
    "//sys/kernel", "/./sys", "/dev", "//dev/shm", "/dev/./shm", "/.//dev", "/workspace/../proc",
    "/a/../../proc", "/work\nspace", "/work\x1bspace",
])
def test_workdir_under_proc_sys_dev_is_refused_in_any_spelling(workdir):
    """/proc, /sys and /dev are refused however the path is spelt (//, /./, ..), and so are '..'
    and control characters; judged on components, not on normpath's text."""
    assert workdir_problems(workdir), workdir
    assert validate_request(SandboxRequest(argv=("x",), workdir=workdir))


@pytest.mark.parametrize("workdir", ["/", "/workspace", "//workspace", "/./workspace/src", "/procfs", "/devel",
                                     "/system", "/workspace/proc"])
def test_ordinary_workdirs_are_accepted(workdir):
    """Paths that merely look like the banned ones are fine."""
    assert workdir_problems(workdir) == []


@pytest.mark.parametrize("image", ["/proc/self/cwd/evil", "../debian", "debian/../x", "a:b:c", "De bian",
                                   "debian\n", "x,lowerdir=/", ""])
def test_image_that_is_not_a_reference_is_refused(image):
    """The image must parse as a docker-style reference before anything looks it up."""
    problems = validate_request(SandboxRequest(argv=("x",), image=image))
    assert any("reference" in p for p in problems), problems


@pytest.mark.parametrize("image", ["debian", "python:3.12", "ghcr.io/a/b:1"])
def test_well_formed_references_pass_the_pure_check(image):
    """Well-formed references pass the grammar; whether the store honours them is asked later."""
    assert validate_request(SandboxRequest(argv=("x",), image=image)) == []
