"""Real-world .gitlab-ci.yml files (shared/corpus/gitlab-ci): every one plans or fails only with
"unsupported" problems, and a hand-checked set plans exactly as GitLab would."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problem

from .conftest import CORPUS

CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.yml")) if CORPUS.is_dir() else []


def acceptable(problem: Problem) -> bool:
    """An error sandpit is allowed to give on a corpus file: a feature it names as unsupported, a
    consequence of such a feature (caused_by), or a local include — the corpus keeps only the entry
    file of each repository, so the files it includes are genuinely absent."""
    return (
        problem.code.startswith("unsupported")
        or problem.caused_by is not None
        or (problem.code == "include-not-found")
    )


def plan_corpus(corpus_dir: Path, name: str, inputs: PipelineInputs | None = None) -> Plan:
    result = plan({name: (corpus_dir / name).read_text()}, inputs)
    assert isinstance(result, Plan), "\n".join(p.render() for p in result.items)
    return result


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_plans_or_fails_only_with_unsupported(corpus_dir: Path, name: str) -> None:
    """Every corpus file plans, or every error is an unsupported feature (or its consequence)."""
    result = plan({name: (corpus_dir / name).read_text()})
    if isinstance(result, Plan):
        problems = result.warnings
    else:
        problems = result.items
        unexpected = [p.render() for p in result.errors if not acceptable(p)]
        assert not unexpected, "\n".join(unexpected)
    assert not [p for p in problems if p.code == "unknown-key"], "a valid GitLab key was called unknown"


def test_corpus_is_complete(corpus_dir: Path) -> None:
    """The corpus has the 40 files listed in SOURCES.tsv."""
    listed = [
        line.split("\t")[0] for line in (corpus_dir / "SOURCES.tsv").read_text().splitlines()[1:] if line
    ]
    assert sorted(listed) == CORPUS_FILES and len(CORPUS_FILES) == 40


@dataclass(frozen=True)
class HandChecked:
    doc: str
    file: str
    stages: tuple[str, ...]
    names: list[str] | None = None  # full list, in plan order
    count: int | None = None
    edges: dict[str, list[str]] = field(default_factory=dict)  # a sample of jobs -> exact predecessors
    manual: list[str] = field(default_factory=list)
    inputs: PipelineInputs = field(default_factory=PipelineInputs)


HAND_CHECKED = [
    HandChecked(
        "2016 file: no stages (GitLab defaults), global before_script, script as a plain string",
        "003_gitlabhq__gitlab-ci.yml",
        (".pre", "build", "test", "deploy", ".post"),
        names=["specs", "rubocop", "brakeman"],
        edges={"specs": [], "brakeman": []},
    ),
    HandChecked(
        "anchors and aliases for job templates; when: manual",
        "019_freedesktop__dbus.yml",
        (".pre", "build", ".post"),
        count=11,
        manual=[
            "build:reduced",
            "build:legacy",
            "build:i686-w64-mingw32-cmake",
            "build:stretch",
            "build:xenial",
        ],
        edges={"build:production": [], "build:xenial": []},
    ),
    HandChecked(
        "14 hidden jobs merged with <<:; test stage waits for every build",
        "023_mirror__x264.yml",
        (".pre", "build", "test", "release", ".post"),
        count=14,
        edges={
            "test-win64": [
                "build-debian-amd64",
                "build-debian-aarch64",
                "build-win32",
                "build-win64",
                "build-llvm-mingw-armv7",
                "build-llvm-mingw-aarch64",
                "build-macos-x86_64",
                "build-macos-arm64",
            ]
        },
    ),
    HandChecked(
        "parallel:matrix names and needs on matrix jobs (by full name and by base name)",
        "034_videolan__dav1d.yml",
        (".pre", "style", "build", "test", ".post"),
        count=64,
        edges={
            "build-debian-bitdepth: [8]": ["style-check", "x86inc-check"],
            "build-debian-bitdepth: [16]": ["style-check", "x86inc-check"],
            "test-win64": ["build-win: [x86_64-w64-mingw32]"],
            "test-debian-riscv64: [rv64,v=true,vext_spec=v1.0,vlen=128,elen=64]": [
                "build-debian-riscv64: [riscv64-linux]",
                "build-debian-riscv64: [riscv64-linux-clang]",
            ],
        },
    ),
    HandChecked(
        "a multi-variable matrix: values joined in key order",
        "040_Nheko-Reborn__nheko.yml",
        (".pre", "build", "sign", "deploy", ".post"),
        names=[
            "build-windows",
            "build-clazy",
            "build-tw",
            "build-macos",
            "build-macos-as",
            "build-flatpak: [amd64, x86_64, 0]",
            "build-flatpak: [arm64, aarch64, 12]",
            "linting",
        ],
    ),
    HandChecked(
        "rules on push to main: needs [] and needs [build]",
        "017_0DevGuru0__UiKit.yml",
        (".pre", "Review", "Build", "Publish", ".post"),
        names=["build", "deploy", "changesets-version-publish"],
        edges={"build": [], "deploy": ["build"], "changesets-version-publish": []},
    ),
    HandChecked(
        "the same file in a merge request to main: only the Review jobs",
        "017_0DevGuru0__UiKit.yml",
        (".pre", "Review", "Build", "Publish", ".post"),
        names=["test", "sonar-scan", "changesets-check"],
        inputs=PipelineInputs(trigger="merge_request", ref="feature", merge_request_target="main"),
    ),
    HandChecked(
        "only: <branch> picks the master jobs, in stage order",
        "018_00010504__smartpos-auth-service.yml",
        (".pre", "build", "migrate", "deploy", ".post"),
        names=["build_image_prod", "migrate_prod", "deploy_to_prod"],
        edges={"deploy_to_prod": ["build_image_prod", "migrate_prod"]},
        inputs=PipelineInputs(ref="master"),
    ),
    HandChecked(
        "workflow:rules and a =~ rule: the production branch runs the deploy job",
        "002_01ssh__Filrouge-Route53.yml",
        (".pre", "deploy-certs", ".post"),
        names=["01-route53-certificates-deployment"],
        inputs=PipelineInputs(ref="production"),
    ),
]


@pytest.mark.parametrize("case", HAND_CHECKED, ids=lambda c: c.doc)
def test_hand_checked_corpus_plans(corpus_dir: Path, case: HandChecked) -> None:
    """Job names after matrix/extends, stages and DAG edges match a reading of the file by hand."""
    result = plan_corpus(corpus_dir, case.file, case.inputs)
    assert result.stages == case.stages
    if case.names is not None:
        assert result.names() == case.names
    if case.count is not None:
        assert len(result.jobs) == case.count
    for name, predecessors in case.edges.items():
        assert list(result.job(name).depends_on) == predecessors, name
    assert sorted(j.name for j in result.jobs if j.when == "manual") == sorted(case.manual)


def test_entrypoint_and_image_from_corpus(corpus_dir: Path) -> None:
    """image: {name, entrypoint: [""]} is kept for the executor (002)."""
    job = plan_corpus(corpus_dir, "002_01ssh__Filrouge-Route53.yml", PipelineInputs(ref="production")).jobs[0]
    assert job.image is not None and job.image.name == "hashicorp/terraform:1.7.4"
    assert job.image.entrypoint == ("",)
