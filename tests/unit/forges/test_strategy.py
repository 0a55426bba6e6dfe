"""GIT_* variables read as GitLab's runner reads them; what sandpit cannot honour is refused by name."""

from __future__ import annotations

import pytest

from pipelines.forges.strategy import GitOptions, SubmoduleOptions, git_options


def _ok(**env: str) -> GitOptions:
    options = git_options(env)
    assert isinstance(options, GitOptions), options
    return options


@pytest.mark.parametrize(("env", "expected"), [
    ({}, SubmoduleOptions()),
    ({"GIT_SUBMODULE_STRATEGY": "normal"}, SubmoduleOptions("normal", 20)),
    ({"GIT_SUBMODULE_STRATEGY": "Recursive ", "GIT_DEPTH": "3"}, SubmoduleOptions("recursive", 3)),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_DEPTH": "3", "GIT_SUBMODULE_DEPTH": "0"},
     SubmoduleOptions("normal", 0)),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_PATHS": "libs/a :(exclude)libs/b :!docs  "},
     SubmoduleOptions("normal", 20, ("libs/a",), ("libs/b", "docs"))),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--init --force --jobs 4 -j8 --recursive"},
     SubmoduleOptions("recursive", 20)),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--recommend-shallow --depth=5"},
     SubmoduleOptions("normal", 5, recommend_shallow=True)),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_FORCE_HTTPS": "true"},
     SubmoduleOptions("normal", 20, force_https=True)),
    ({"GIT_STRATEGY": "none", "GIT_SUBMODULE_STRATEGY": "recursive"}, SubmoduleOptions()),
    ({"GIT_SUBMODULE_UPDATE_FLAGS": "--remote"}, SubmoduleOptions()),  # no submodules: the flags are not read
    ({"GIT_LFS_SKIP_SMUDGE": "1"}, SubmoduleOptions()),
])
def test_submodule_options(env: dict[str, str], expected: SubmoduleOptions) -> None:
    """Each variable means what GitLab's runner makes of it."""
    assert _ok(**env).submodules == expected


@pytest.mark.parametrize(("env", "says"), [
    ({"GIT_SUBMODULE_STRATEGY": "all"}, "GIT_SUBMODULE_STRATEGY is 'all'; use none, normal or recursive"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_DEPTH": "-1"}, "GIT_SUBMODULE_DEPTH is '-1'"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_PATHS": ":(glob)**/x"}, "only paths and :(exclude)path"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_PATHS": "../up"}, "is not a path inside the repository"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--remote"},
     "--remote is not supported: checks out the tip of the submodule's branch"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--reference /srv/cache"},
     "--reference is not supported: names a repository on the host"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--filter=blob:none"},
     "--filter is not supported"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--jobs many"}, "--jobs wants a number"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--frobnicate"},
     "--frobnicate is not supported; sandpit takes --recommend-shallow"),
    ({"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_FORCE_HTTPS": "maybe"}, "GIT_SUBMODULE_FORCE_HTTPS is"),
    ({"GIT_LFS_SKIP_SMUDGE": "0"}, "GIT_LFS_SKIP_SMUDGE 0 asks for Git LFS objects, which sandpit does not fetch"),
    ({"GIT_LFS_SKIP_SMUDGE": "false"}, "run `git lfs pull` in the job's script"),
    ({"GIT_LFS_SKIP_SMUDGE": "perhaps"}, "GIT_LFS_SKIP_SMUDGE is 'perhaps'"),
])
def test_refusals_say_which_variable_and_why(env: dict[str, str], says: str) -> None:
    """A value sandpit cannot honour is a sentence naming the variable, never a silent default."""
    refusal = git_options(env)
    assert isinstance(refusal, str) and says in refusal


@pytest.mark.parametrize(("options", "path", "selected"), [
    (SubmoduleOptions("normal"), "any/path", True),
    (SubmoduleOptions("normal", paths=("libs",)), "libs/a", True),
    (SubmoduleOptions("normal", paths=("libs",)), "libsx", False),
    (SubmoduleOptions("normal", paths=("libs/*",)), "libs/a", True),
    (SubmoduleOptions("normal", excluded=("libs/a",)), "libs/a", False),
    (SubmoduleOptions("normal", excluded=("libs/a",)), "libs/ab", True),
])
def test_paths_select_as_git_pathspecs(options: SubmoduleOptions, path: str, selected: bool) -> None:
    """A path is kept by a spec equal to it, a directory above it or a glob over it; an exclusion wins."""
    assert options.selects(path) is selected


def test_each_submodule_choice_is_its_own_tree() -> None:
    """Jobs asking for different submodules never share a run's tree; the names are directory-safe."""
    variants = {_ok(**env).variant for env in (
        {}, {"GIT_SUBMODULE_STRATEGY": "normal"}, {"GIT_SUBMODULE_STRATEGY": "recursive"},
        {"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_PATHS": "a"},
        {"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_PATHS": ":(exclude)a"},
    )}
    assert len(variants) == 5 and "depth-20" in variants
    assert all(v.replace("-", "").isalnum() for v in variants)
