"""The image store against real mmdebstrap builds."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tools
from worker.sandbox.images import ImageStore


def test_rebuilding_an_unchanged_recipe_is_a_no_op(settings):
    store = ImageStore(settings.state_dir, settings.images_dir)
    started = time.monotonic()
    image, built = store.build("debian")
    assert built is False
    assert time.monotonic() - started < 1
    assert image.rootfs.is_dir() and (image.rootfs / "bin" / "sh").exists()


@pytest.mark.slow
def test_concurrent_builds_of_one_image_are_safe(tmp_path):
    """Two processes build the same new recipe at once: one builds, the other waits and reuses it."""
    require_root()
    require_tools("mmdebstrap")
    marker = uuid.uuid4().hex
    recipes = tmp_path / "images"
    (recipes / "tiny").mkdir(parents=True)
    (recipes / "tiny" / "image.toml").write_text(
        f'suite = "bookworm"\nvariant = "minbase"\ncustomize = ["echo {marker} > /etc/sandpit-marker"]\n')
    state = tmp_path / "state"
    code = (f"from pathlib import Path; from worker.sandbox.images import ImageStore; "
            f"img, built = ImageStore(Path({str(state)!r}), Path({str(recipes)!r})).build('tiny'); "
            f"print(built, img.key)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outs) == ["False", "True"]
    assert outs[0][1] == outs[1][1]
    store = ImageStore(state, recipes)
    image = store.get("tiny")
    assert (image.rootfs / "etc" / "sandpit-marker").read_text().strip() == marker
    assert [p.name for p in (state / "images" / "layers").iterdir()] == [image.key]
    store.remove("tiny")
    assert not Path(image.rootfs).exists()
