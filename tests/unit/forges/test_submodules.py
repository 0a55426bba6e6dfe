"""Submodule URLs, paths and names judged before anything is fetched (pure; no git, no network)."""

from __future__ import annotations

import pytest

from pipelines.forges.submodules import (
    Declared,
    Registered,
    SubmoduleRefused,
    canonical_url,
    check_name,
    check_path,
    parse_gitmodules,
    plan_submodules,
    resolve_url,
)

LIB = Registered("lib-id", "git://h/acme/lib.git")
SHA = "b" * 40


@pytest.mark.parametrize(("parent", "url", "resolved"), [
    ("git://h/acme/app.git", "../lib.git", "git://h/acme/lib.git"),
    ("git://h/acme/app.git/", "../lib.git", "git://h/acme/lib.git"),
    ("https://h/acme/app", "../../other/lib", "https://h/other/lib"),
    ("https://h/acme/app", "./sub", "https://h/acme/app/sub"),
    ("https://tok@h/acme/app", "../lib", "https://tok@h/acme/lib"),
    ("git://h/acme/app.git", "https://other.example/x/y.git", "https://other.example/x/y.git"),
])
def test_urls_resolve_as_git_resolves_them(parent: str, url: str, resolved: str) -> None:
    """A relative URL climbs the parent's path one ``../`` per component; an absolute one stays."""
    assert resolve_url(parent, url) == resolved


@pytest.mark.parametrize(("url", "why"), [
    ("ext::sh -c touch% /tmp/pwned", "the ext:: transport runs a command"),
    ("fd::3", "remote helper transport"),
    ("file:///etc", "names files on the host"),
    ("/srv/git/lib.git", "names files on the host"),
    ("~/lib.git", "names files on the host"),
    ("ssh://git@h/acme/lib.git", "ssh would use the host's keys"),
    ("git@h:acme/lib.git", "ssh would use the host's keys"),
    ("-uhttps://x", "starts with '-'"),
    ("https://h/a\n--upload-pack=x", "control character"),
    ("../../../../lib.git", "climbs above the host"),
    ("../a/../../b", "not a path relative"),
    ("", "empty"),
    ("lib.git", "only git://, http:// and https:// URLs"),
])
def test_urls_sandpit_never_fetches(url: str, why: str) -> None:
    """Transports that run commands, read the host or use its keys are refused with the reason."""
    with pytest.raises(ValueError, match=why):
        resolve_url("git://h/acme/app.git", url)


@pytest.mark.parametrize(("url", "https"), [
    ("git@h.example:acme/lib.git", "https://h.example/acme/lib.git"),
    ("ssh://git@h.example:2222/acme/lib.git", "https://h.example/acme/lib.git"),
])
def test_force_https_rewrites_ssh_urls(url: str, https: str) -> None:
    """GIT_SUBMODULE_FORCE_HTTPS: ssh and scp URLs are fetched over https, as GitLab's runner does."""
    assert resolve_url("git://h/app.git", url, force_https=True) == https


@pytest.mark.parametrize(("a", "b"), [
    ("https://h/acme/lib.git", "https://h/acme/lib"),
    ("https://H/acme/lib/", "https://h/acme/lib.git"),
    ("https://bot:tok@h/acme/lib.git", "https://h/acme/lib"),
])
def test_one_repository_by_several_spellings(a: str, b: str) -> None:
    assert canonical_url(a) == canonical_url(b)


def test_different_repositories_stay_different() -> None:
    assert canonical_url("http://h/acme/lib") != canonical_url("https://h/acme/lib")
    assert canonical_url("https://h/acme/Lib") != canonical_url("https://h/acme/lib")


MODES = {"vendor": "040000", "vendor/lib": "160000", "link": "120000", "file": "100644"}


@pytest.mark.parametrize(("path", "problem"), [
    ("vendor/lib", ""),
    ("../../x", "not a plain path"),
    ("/abs", "absolute"),
    ("a/./b", "not a plain path"),
    (".git/hooks", "not a plain path"),
    ("x/.GIT", "not a plain path"),
    ("link/sub", "link is a symlink in the tree"),
    ("file/sub", "file is not a directory in the tree"),
    ("bad\nname", "not a plain path"),
])
def test_paths_inside_the_tree_only(path: str, problem: str) -> None:
    """No ``..``, ``.``, ``.git`` or absolute path, and no symlink or file on the way."""
    found = check_path(path, MODES)
    assert (found == "") if not problem else (problem in found)


@pytest.mark.parametrize("name", ["../../hooks", "a/../../b", "/etc", ".git", "x\ny"])
def test_names_that_would_leave_the_modules_dir(name: str) -> None:
    assert check_name(name) != ""


def test_gitmodules_listing_is_parsed_by_section() -> None:
    """Names with dots keep them (the variable is after the last dot); other sections are ignored."""
    listing = ("submodule.lib.v2.path\nvendor/lib\0submodule.lib.v2.url\n../lib.git\0submodule.lib.v2.shallow\ntrue\0"
               "core.bare\nfalse\0submodule.x.update\nnone\0")
    assert parse_gitmodules(listing) == {
        "lib.v2": Declared("lib.v2", "vendor/lib", "../lib.git", "", True),
        "x": Declared("x", "", "", "none", False),
    }


def _plan(declared: dict[str, Declared], gitlinks: dict[str, str], **kw: object) -> list[str]:
    options: dict[str, object] = {"depth": 20, "recommend_shallow": False, "force_https": False,
                                  "selects": lambda _p: True, "registered": {canonical_url(LIB.clone_url): LIB}.get,
                                  "own_repo": None, **kw}
    planned = plan_submodules(declared, gitlinks, {**MODES, **dict.fromkeys(gitlinks, "160000")},
                              "git://h/acme/app.git", **options)  # type: ignore[arg-type]
    return [f"{s.path}@{s.sha[:1]}<-{s.source.repo_id}:{s.depth}" for s in planned]


def test_plan_follows_gitlinks_and_gitmodules() -> None:
    """Only gitlinks are checked out (a stale .gitmodules entry is not); update=none skips; shallow
    gives depth 1 under --recommend-shallow; GIT_SUBMODULE_PATHS filters."""
    declared = {"lib": Declared("lib", "vendor/lib", "../lib.git", shallow=True),
                "stale": Declared("stale", "old/lib", "../lib.git"),
                "off": Declared("off", "vendor/off", "../lib.git", update="none")}
    links = {"vendor/lib": SHA, "vendor/off": SHA}
    assert _plan(declared, links) == ["vendor/lib@b<-lib-id:20"]
    assert _plan(declared, links, recommend_shallow=True) == ["vendor/lib@b<-lib-id:1"]
    assert _plan(declared, links, selects=lambda p: p != "vendor/lib") == []


@pytest.mark.parametrize(("declared", "gitlinks", "message"), [
    ({"x": Declared("x", "vendor/lib", "../other.git")}, {"vendor/lib": SHA},
     "submodule vendor/lib: URL git://h/acme/other.git is not the clone URL of a repository registered"),
    ({}, {"vendor/lib": SHA}, "submodule vendor/lib: the tree has it but .gitmodules has no entry"),
    ({"x": Declared("x", "vendor/lib", "../lib.git", update="!rm -rf /")}, {"vendor/lib": SHA}, "would run a command"),
    ({"x": Declared("x", "vendor/lib", "../lib.git", update="sometimes")}, {"vendor/lib": SHA},
     "is not a git update mode"),
    ({"x": Declared("x", "link/x", "../lib.git")}, {}, "link is a symlink in the tree"),
    ({"x": Declared("x", "", "../lib.git")}, {}, "it has no path"),
    ({"x": Declared("x", "vendor/lib", "ext::sh -c id")}, {"vendor/lib": SHA},
     "URL 'ext::sh -c id' is refused: the ext:: transport runs a command"),
])
def test_plan_refusals_name_the_submodule(declared: dict[str, Declared], gitlinks: dict[str, str],
                                          message: str) -> None:
    with pytest.raises(SubmoduleRefused, match=message.replace("(", r"\(").replace("+", r"\+")):
        _plan(declared, gitlinks)


def test_an_untrusted_run_gets_only_its_own_repository() -> None:
    declared = {"lib": Declared("lib", "vendor/lib", "../lib.git")}
    with pytest.raises(SubmoduleRefused, match="this run is untrusted"):
        _plan(declared, {"vendor/lib": SHA}, own_repo="app-id")
    assert _plan(declared, {"vendor/lib": SHA}, own_repo="lib-id") == ["vendor/lib@b<-lib-id:20"]
