"""overlay's option string: paths that would change its meaning are refused (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import SandboxError
from worker.sandbox.rootfs import layer_view, overlay_options, overlay_path


@pytest.mark.parametrize("path", [
    "/a:b", "/a,b", "/a\\b", "/a\nb", "/a\tb", "/a\0b", "/a\x7fb", "relative", "", "/x,upperdir=/",
    "/x:/proc/self/cwd",
])
def test_paths_with_option_syntax_are_refused(path):
    """':' (lowerdir list), ',' (option list), '\\' (overlay's escape) and control characters never
    reach the option string; the refusal is a SandboxError with a sentence, not a wrong mount."""
    with pytest.raises(SandboxError, match="overlay mount"):
        overlay_path(path)
    with pytest.raises(SandboxError):
        overlay_options(["/ok", path], "/d/upper", "/d/work")
    with pytest.raises(SandboxError):
        overlay_options(["/ok"], path, "/d/work")


def test_ordinary_paths_make_the_options():
    """Top layer first, then upper and work dirs, volatile."""
    options = overlay_options(["/l/base", "/l/top"], "/d/u", "/d/w")
    assert options == "lowerdir=/l/top:/l/base,upperdir=/d/u,workdir=/d/w,volatile"


@pytest.mark.parametrize("key", ["../" + "a" * 61, "a" * 63 + ":", "a" * 64 + ",x", "A" * 64, "", "a" * 65])
def test_layer_view_refuses_a_key_outside_the_grammar(key, tmp_path: Path):
    """A layer key must be 64 hex digits before it names <run>/layers/<key>-<uid>; nothing is created."""
    with pytest.raises(SandboxError, match="layer key"):
        layer_view(tmp_path, key, tmp_path / "layer", 100000, 65536)
    assert list(tmp_path.iterdir()) == []
