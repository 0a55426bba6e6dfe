"""The grammars that stand between job data and host paths: image references, layer keys,
digests, job and run ids, uid slots, cache keys, artifact paths (tables of cases, no services)."""

from __future__ import annotations

import pytest

from pipelines.identifiers import (
    artifact_path_problem,
    cache_key_problem,
    is_digest,
    is_job_id,
    is_layer_key,
    is_run_id,
    is_uid_slot,
)
from pipelines.references import ImageReference, InvalidReference, honoured_by, parse_reference, recipe_provides

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(("text", "parsed"), [
    ("debian", ImageReference(None, "debian")),
    ("debian:12", ImageReference(None, "debian", "12")),
    ("python:3.11-bookworm", ImageReference(None, "python", "3.11-bookworm")),
    ("team/app", ImageReference(None, "team/app")),
    ("a__b/c.d/e--f_g", ImageReference(None, "a__b/c.d/e--f_g")),
    ("localhost/app", ImageReference("localhost", "app")),
    ("localhost:5000/app:v_1.0", ImageReference("localhost:5000", "app", "v_1.0")),
    ("ghcr.io/astral-sh/uv:python3.12-alpine", ImageReference("ghcr.io", "astral-sh/uv", "python3.12-alpine")),
    ("gitlab.7i.uz:5050/docker/docker:dind", ImageReference("gitlab.7i.uz:5050", "docker/docker", "dind")),
    (f"app@sha256:{HEX}", ImageReference(None, "app", None, f"sha256:{HEX}")),
    (f"app:1@sha256:{HEX}", ImageReference(None, "app", "1", f"sha256:{HEX}")),
    ("win10-base", ImageReference(None, "win10-base")),
    ("app:" + "t" * 128, ImageReference(None, "app", "t" * 128)),
])
def test_valid_references_parse(text: str, parsed: ImageReference) -> None:
    """Docker-grammar references parse into host, path, tag and digest, and print back as given."""
    assert parse_reference(text) == parsed
    assert str(parsed) == text


@pytest.mark.parametrize("text", [
    "", "/proc/self/cwd/evil", "/debian", "../debian", "debian/..", "a/../b", "./debian", "a//b", "debian/",
    "Debian", "debian:", "debian:-x", "debian:.x", "debian:" + "t" * 129, "deb ian", "debian\n", "debian\0",
    "debian\x1b[2J", "a:b:c", "a,b", "lowerdir=x", "a:b/c", "-debian", "debian-", "a..b", "a.-b", "a___b",
    "app@sha256:" + HEX[:63], "app@sha256:" + HEX.upper(), "app@md5:" + HEX, "app@", "app@sha256:" + HEX + "\n",
    "ex\u00e4mple", "debian:t\u00e4g", "host..io/app", "-host.io/app", "host.io:port/app", "host.io:123456/app",
    "a" * 256, "/", ":", "@", "debian:12 ", " debian",
])
def test_invalid_references_are_refused(text: str) -> None:
    """Anything outside the grammar (paths, '..', option separators, control characters, Unicode,
    bad tags and digests, over-long names) is refused with one sentence, never a traceback."""
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert "\n" not in message and "\0" not in message and "\x1b" not in message


PROVIDED = {"debian": "debian", "debian:12": "debian", "python": "python", "python:3.11": "python"}


@pytest.mark.parametrize(("text", "recipe"), [
    ("debian", "debian"), ("debian:12", "debian"), ("python", "python"), ("python:3.11", "python"),
])
def test_provided_references_are_honoured(text: str, recipe: str) -> None:
    """A bare recipe name and each declared reference name their recipe."""
    assert honoured_by(text, PROVIDED) == recipe


@pytest.mark.parametrize(("text", "says"), [
    ("python:3.12", "no image python:3.12 here"),
    ("python:2.7", "no image python:2.7 here"),
    ("python:3.12-slim", "no image python:3.12-slim here"),
    ("python:3", "no image python:3 here"),
    ("debian:latest", "no image debian:latest here"),
    ("node:20", "no image node:20 here"),
    ("library/debian", "no image library/debian here"),
    ("docker.io/library/debian:12", "registry host"),
    ("localhost:5000/debian", "registry host"),
    (f"debian@sha256:{HEX}", "digest"),
])
def test_references_the_store_cannot_honour_are_refused(text: str, says: str) -> None:
    """A tag no recipe provides, a registry host or a digest is refused, naming what exists."""
    with pytest.raises(InvalidReference) as caught:
        honoured_by(text, PROVIDED)
    assert says in str(caught.value)
    assert "debian, debian:12, python, python:3.11" in str(caught.value)


def test_recipe_provides_refuses_registry_entries() -> None:
    """A recipe cannot claim a registry reference or a digest."""
    assert recipe_provides("python", ("python:3.11",)) == {"python": "python", "python:3.11": "python"}
    for bad in ("docker.io/python:3.11", f"python@sha256:{HEX}", "Python"):
        with pytest.raises(InvalidReference):
            recipe_provides("python", (bad,))


@pytest.mark.parametrize(("check", "good", "bad"), [
    (is_layer_key, [HEX, "f" * 64], ["", HEX[:63], HEX + "0", HEX.upper(), "../" + HEX[3:], HEX[:63] + ":",
                                     HEX[:63] + "\n", f"sha256:{HEX}", None, 7]),
    (is_digest, [f"sha256:{HEX}"], [HEX, f"sha256:{HEX.upper()}", f"sha256:{HEX}\n", f"sha512:{HEX}", "sha256:"]),
    (is_job_id, ["3f2a9c0d1e4b", "c9d5e7a2-61b4-4f0a-9d3e-2b8f1a6c7d90", "a", "a" * 64],
     ["", "a" * 65, "../x", "a/b", ".", "..", "-a", "a-", "A1", "a_b", "a.b", "a\n", "a b", "a:b", "a,b", None]),
    (is_run_id, ["c9d5e7a2-61b4-4f0a-9d3e-2b8f1a6c7d90"], ["", "../r", "r/1", "r\0", "R"]),
    (is_uid_slot, ["0", "1", "63", "999999"], ["", "-1", "01", "1 ", "1\n", "+1", "1e3", "x", "1234567", None]),
])
def test_identifier_grammars(check, good, bad) -> None:  # type: ignore[no-untyped-def]
    """Each identifier grammar accepts exactly its values (whole-string, ASCII, no trailing newline)."""
    assert [v for v in good if not check(v)] == []
    assert [v for v in bad if check(v)] == []


def test_uid_slot_is_bounded_by_the_number_of_slots() -> None:
    """A slot read back from a file is below the configured number of slots."""
    assert is_uid_slot("3", slots=4) and not is_uid_slot("4", slots=4)


@pytest.mark.parametrize(("key", "ok"), [
    ("deps", True), ("deps-3.11_x", True), ("main-" + "a" * 40, True), ("a.b", True),
    ("", False), (".", False), ("..", False), ("%2e", False), ("%2E%2e", False), ("a/b", False), ("a%2Fb", False),
    ("a\\b", False), ("a\nb", False), ("a\0", False), ("k" * 256, False),
])
def test_cache_key_grammar(key: str, ok: bool) -> None:
    """Cache keys follow GitLab's rule (no '/', not '.' or '..') and carry no control characters."""
    assert (cache_key_problem(key) is None) is ok


@pytest.mark.parametrize(("path", "ok"), [
    ("dist/app.tar", True), ("a", True), ("a/b/c.d", True), ("..a/b..", True), ("d\u00e9j\u00e0", True),
    ("", False), ("/etc/passwd", False), ("../x", False), ("a/../b", False), ("a/..", False), ("a//b", False),
    ("./a", False), ("a/.", False), ("a/", False), ("a\\b", False), ("a\nb", False), ("a\x1b[2J", False),
    ("a\0b", False), ("a" * 4097, False),
])
def test_artifact_path_grammar(path: str, ok: bool) -> None:
    """Artifact paths are relative, normal, printable and bounded."""
    assert (artifact_path_problem(path) is None) is ok


def _lint(text: str, images: dict[str, str] | None = None) -> tuple[int, str]:
    import io
    import tempfile
    from pathlib import Path

    from pipelines.language.cli import lint_main

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "ci.yml").write_text(text)
        out, err = io.StringIO(), io.StringIO()
        code = lint_main([str(Path(d) / "ci.yml")], out, err, images=images)
    return code, out.getvalue()


@pytest.mark.parametrize(("image", "col"), [
    ("/proc/self/cwd/evil", 10), ("../../x", 10), ("Debian", 10), ("a:b:c", 10), ("'x,lowerdir=/'", 10),
])
def test_lint_reports_an_image_that_is_not_a_reference_at_its_location(image: str, col: int) -> None:
    """An image that is not a reference is an error at the image's own line and column."""
    code, out = _lint(f"job:\n  image: {image}\n  script: [x]\n")
    assert code == 1
    assert f"ci.yml:2:{col}: error[invalid-value]" in out and "is not an image reference" in out


def test_lint_warns_at_a_registry_host_or_digest() -> None:
    """sandpit does not pull yet: a registry host or a digest is a located warning, the file plans."""
    code, out = _lint(f"a:\n  image: {{name: 'ghcr.io/x/y:1'}}\n  script: [x]\nb:\n  image: y@sha256:{HEX}\n"
                      "  script: [x]\n")
    assert code == 0
    assert "ci.yml:2:17: warning[image-unavailable]" in out and "registry host ghcr.io" in out
    assert "ci.yml:5:10: warning[image-unavailable]" in out and "digest" in out


def test_lint_warns_where_no_recipe_provides_the_tag() -> None:
    """With the store's references, lint warns at the job for python:3.12 (after variables are
    expanded too) and says what exists; python:3.11 and a bare name are fine."""
    text = ("a:\n  image: python:3.12\n  script: [x]\nb:\n  image: $IMG\n  variables: {IMG: 'python:2.7'}\n"
            "  script: [x]\nc:\n  image: python:3.11\n  script: [x]\nd:\n  image: debian\n  script: [x]\n")
    code, out = _lint(text, PROVIDED)
    assert code == 0
    assert "ci.yml:1:1: warning[image-unavailable]: job a: no image python:3.12 here" in out
    assert "ci.yml:4:1: warning[image-unavailable]: job b: no image python:2.7 here" in out
    assert "job c:" not in out and "job d:" not in out
    assert "debian, debian:12, python, python:3.11" in out
