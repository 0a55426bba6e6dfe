"""Image recipes: parsing, and the content key that makes rebuilds no-ops (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ImageError
from worker.sandbox.images import ImageStore, parse_recipe

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
    with pytest.raises(ImageError, match=r"there is no image named 'node:20' \(images: debian, python"):
        store.get("node:20")
    with pytest.raises(ImageError, match="no image recipe"):
        store.recipe("../etc")
