"""``pull_image`` (worker/executor.py): the job's image once, with every progress line its pull said."""

from __future__ import annotations

from typing import Any

import pytest

from worker.executor import pull_image
from worker.sandbox.registry.skopeo import PullError


class Images:
    def __init__(self, fail: tuple[str | None, ...] = ()) -> None:
        self.fail = fail
        self.calls: list[str | None] = []

    def get(self, reference: str, *, progress: Any, policy: str | None, cancel: Any) -> str:
        self.calls.append(policy)
        progress(f"pulling {reference} ({policy})")
        if policy in self.fail:
            raise PullError("registry away")
        progress("layer 1/1 unpacked")
        return f"image:{reference}"


class Engine:
    def __init__(self, images: Images) -> None:
        self.images = images


def test_the_lines_are_those_of_the_whole_pull_and_the_image_comes_with_them():
    images = Images()
    lines, image = pull_image(Engine(images), "r/x:1")  # type: ignore[arg-type]
    assert image == "image:r/x:1" and images.calls == [None]
    assert lines == ("pulling r/x:1 (None)", "layer 1/1 unpacked")


def test_each_policy_is_tried_in_turn_and_the_last_failure_is_raised():
    images = Images(fail=("always",))
    lines, image = pull_image(Engine(images), "r/x:1", policies=("always", "if-not-present"))  # type: ignore[arg-type]
    assert image == "image:r/x:1" and images.calls == ["always", "if-not-present"]
    assert lines[1].startswith("pull_policy always failed (registry away); trying if-not-present")
    with pytest.raises(PullError):
        pull_image(Engine(Images(fail=("always",))), "r/x:1", policies=("always",))  # type: ignore[arg-type]
