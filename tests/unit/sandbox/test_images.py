"""Image recipes: parsing, and the content key that makes rebuilds no-ops (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ImageError, InvalidRequest
from worker.sandbox.images import ImageStore, parse_recipe, ref_from_json

REPO_IMAGES = Path(__file__).resolve().parents[3] / "images"


def test_shipped_recipes_parse():
    store = ImageStore(Path("/nonexistent"), REPO_IMAGES)
    assert {"debian", "python"} <= set(store.recipe_names())
    python = store.recipe("python")
    assert {"python3", "python3-pip", "python3-venv", "git", "ca-certificates"} <= set(python.packages)


def test_key_ignores_package_order_but_not_content():
    a = parse_recipe("a", 'suite = "bookworm"\npackages = ["git", "curl"]\n')
    b = parse_recipe("b", 'suite = "bookworm"\npackages = ["curl", "git"]\n')
    c = parse_recipe("c", 'suite = "bookworm"\npackages = ["curl"]\n')
    assert a.key() == b.key() != c.key()


@pytest.mark.parametrize("text, fragment", [
    ("suite = ", "image.toml"),
    ("packages = []", "suite"),
    ('suite = "bookworm"\npackages = "git"', "list of strings"),
    ('suite = "bookworm"\nflavour = "x"', "unknown key 'flavour'"),
    ('suite = "bookworm"\nenv = { A = 1 }', "env"),
])
def test_bad_recipes_say_what_is_wrong(text, fragment):
    with pytest.raises(ImageError, match=fragment):
        parse_recipe("x", text)


def test_unknown_and_unbuilt_images(tmp_path):
    store = ImageStore(tmp_path, REPO_IMAGES)
    with pytest.raises(ImageError, match="sandpit images build debian"):
        store.get("debian")
    with pytest.raises(ImageError, match="no image recipe named 'nope'"):
        store.recipe("nope")
    # a reference no recipe provides is a refusal of the request, naming what exists (it used to be
    # looked up under its bare name: python:3.12 ran the python recipe's 3.11)
    with pytest.raises(InvalidRequest, match=r"no image node:20 here: .*\(debian, debian:12, .*python:3.11"):
        store.get("node:20")
    with pytest.raises(ImageError, match="there is no image named 'node'"):
        store.get("node")
    with pytest.raises(ImageError, match="no image recipe"):
        store.recipe("../etc")


def test_shipped_recipes_provide_only_what_they_build():
    """debian is bookworm (12), python is bookworm's 3.11; nothing claims a newer version."""
    provided = ImageStore(Path("/nonexistent"), REPO_IMAGES).provided()
    assert {k: v for k, v in provided.items() if v in ("debian", "python")} == {
        "debian": "debian", "debian:12": "debian", "debian:bookworm": "debian",
        "python": "python", "python:3.11": "python", "python:3.11-bookworm": "python"}


@pytest.mark.parametrize("reference, recipe", [
    ("debian", "debian"), ("debian:12", "debian"), ("debian:bookworm", "debian"), ("python", "python"),
    ("python:3.11", "python"), ("python:3.11-bookworm", "python"),
])
def test_resolve_honours_declared_references(reference, recipe):
    """A bare recipe name or a reference its recipe declares resolves to that recipe."""
    assert ImageStore(Path("/nonexistent"), REPO_IMAGES).resolve(reference) == recipe


@pytest.mark.parametrize("reference, says", [
    ("python:3.12", "no image python:3.12 here"), ("python:2.7", "no image python:2.7"),
    ("python:3.12-slim", "no image python:3.12-slim"), ("python:3", "no image python:3 here"),
    ("python:latest", "no image python:latest"), ("debian:latest", "no image debian:latest"),
    ("debian:13", "no image debian:13"), ("docker.io/library/python:3.11", "registry"),
    ("python@sha256:" + "a" * 64, "digest"), ("/proc/self/cwd/evil", "not an image reference"),
    ("../debian", "not an image reference"), ("debian:12:x", "not an image reference"),
])
def test_resolve_refuses_what_no_recipe_provides(reference, says):
    """Wrong tags, registry hosts, digests and non-references are refused as the request's fault,
    with the list of what exists; never mapped to another version."""
    with pytest.raises(InvalidRequest) as caught:
        ImageStore(Path("/nonexistent"), REPO_IMAGES).resolve(reference)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, why", [
    (b"not json", "not JSON"),
    (b"[]", "not an object"),
    (b'{"name": "x", "key": "../../../../proc/self/cwd", "env": []}', "layer key"),
    (b'{"name": "x", "key": "' + b"a" * 63 + b':", "env": []}', "layer key"),
    (b'{"name": "x", "key": "' + b"A" * 64 + b'", "env": []}', "layer key"),
    (b'{"name": "x", "key": 7, "env": []}', "layer key"),
    (b'{"name": "other", "key": "' + b"a" * 64 + b'", "env": []}', "another image"),
    (b'{"name": "x", "key": "' + b"a" * 64 + b'", "env": {"A": "1"}}', "env"),
    (b'{"name": "x", "key": "' + b"a" * 64 + b'", "env": [["A", 1]]}', "env"),
    (b'{"name": "x", "key": "' + b"a" * 64 + b'", "env": [["A=B", "1"]]}', "env"),
    (b'{"name": "x", "key": "' + b"a" * 64 + b'", "env": [["A", "1", "2"]]}', "env"),
    (b'{"name": "x", "key": "' + b"a" * 64 + b'", "env": [], "size": "big"}', "number"),
])
def test_a_ref_that_fails_its_grammar_is_damaged(text, why):
    """A stored ref is data: a key that is not 64 hex or an env that is not string pairs is refused
    as damage, never used as a path or an environment."""
    with pytest.raises(ImageError, match=f"image 'x' is damaged .*{why}"):
        ref_from_json("x", text)


@pytest.mark.parametrize("provides, fragment", [
    ('"python:3.11"', "list"), ('["docker.io/python:3.11"]', "registry"), ('["Python"]', "not an image reference"),
    ('["python@sha256:' + "a" * 64 + '"]', "registry or digest"),
])
def test_bad_provides_are_refused(provides, fragment):
    """A recipe's provides list is references without host or digest."""
    with pytest.raises(ImageError, match=fragment):
        parse_recipe("python", f'suite = "bookworm"\nprovides = {provides}\n')


def test_provides_does_not_change_the_key():
    """Declaring references does not change what is built, so it does not change the key."""
    a = parse_recipe("a", 'suite = "bookworm"\n')
    b = parse_recipe("a", 'suite = "bookworm"\nprovides = ["a:1"]\n')
    assert a.key() == b.key()
