"""``services:``: read from a job, ``default:`` and the top level, checked with file:line:col, expanded
per job, kept in the stored spec; the host names GitLab Runner derives (tables of cases)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pipelines.language.model import Plan, Service
from pipelines.language.planner import plan
from pipelines.language.problems import Problems
from pipelines.language.services import derived_aliases, is_alias, service_aliases, split_aliases
from pipelines.store.spec import job_from_spec, job_to_spec, restore_spec, stored_spec_json

from .test_lang_corpus import plan_corpus


def ok(text: str) -> Plan:
    result = plan({".gitlab-ci.yml": text})
    assert isinstance(result, Plan), "\n".join(p.render() for p in result.items)
    return result


@dataclass(frozen=True)
class ReadCase:
    doc: str
    text: str
    services: tuple[Service, ...]


READ_CASES = [
    ReadCase("a string is the image", "t: {script: [x], services: [postgres:16]}", (Service("postgres:16"),)),
    ReadCase(
        "every key of the long form",
        "t:\n  script: [x]\n  services:\n    - name: postgres:16\n      alias: db\n"
        "      entrypoint: [docker-entrypoint.sh]\n"
        "      command: [postgres, -c, fsync=off]\n      variables: {POSTGRES_PASSWORD: pw, N: 5}\n"
        "      pull_policy: [if-not-present, always]\n",
        (Service("postgres:16", "db", ("docker-entrypoint.sh",), ("postgres", "-c", "fsync=off"),
                 (("POSTGRES_PASSWORD", "pw"), ("N", "5")), ("if-not-present", "always")),),
    ),
    ReadCase(
        "name and alias and variable values are expanded with the job's variables",
        "variables: {REG: reg.example}\nt:\n  variables: {TAG: '7'}\n  script: [x]\n"
        "  services: [{name: '$REG/cache:$TAG', alias: 'c$TAG', variables: {URL: 'redis://$REG'}}]\n",
        (Service("reg.example/cache:7", "c7", variables=(("URL", "redis://reg.example"),)),),
    ),
    ReadCase(
        "default: gives services to every job that has none",
        "default: {services: [redis]}\nt: {script: [x]}\n", (Service("redis"),),
    ),
    ReadCase(
        "the job's own list replaces default's (GitLab does not merge them)",
        "default: {services: [redis]}\nt: {script: [x], services: [mysql]}\n", (Service("mysql"),),
    ),
    ReadCase(
        "the deprecated top-level services: is a default",
        "services: [redis]\nt: {script: [x]}\n", (Service("redis"),),
    ),
    ReadCase(
        "inherit: default: false drops them",
        "default: {services: [redis]}\nt: {script: [x], inherit: {default: false}}\n", (),
    ),
    ReadCase(
        "an anchor list spliced in with !reference-style nesting is flattened",
        ".dbs: &dbs [postgres, redis]\nt: {script: [x], services: [*dbs, mysql]}\n",
        (Service("postgres"), Service("redis"), Service("mysql")),
    ),
    ReadCase(
        "docker: and kubernetes: are ignored (with a warning), the service kept",
        "t: {script: [x], services: [{name: redis, docker: {user: '1000'}}]}\n", (Service("redis"),),
    ),
]


@pytest.mark.parametrize("case", READ_CASES, ids=lambda c: c.doc)
def test_services_are_read_as_written(case: ReadCase) -> None:
    """The planned job holds its services with the job's variables expanded."""
    assert ok(case.text).job("t").services == case.services


@dataclass(frozen=True)
class ProblemCase:
    doc: str
    text: str
    expected: list[tuple[str, int, int, str]]  # (code, line, col, words in the message)


PROBLEM_CASES = [
    ProblemCase("services must be a list", "t:\n  script: [x]\n  services: redis\n",
                [("invalid-type", 3, 13, "services must be a list")]),
    ProblemCase("a name that is no image reference", "t:\n  script: [x]\n  services: [Postgres]\n",
                [("invalid-value", 3, 14, "'Postgres' is not an image reference")]),
    ProblemCase("the long form needs a name", "t:\n  script: [x]\n  services:\n    - alias: db\n",
                [("invalid-value", 4, 7, "needs a `name:`")]),
    ProblemCase("an alias that is no host name",
                "t:\n  script: [x]\n  services:\n    - name: redis\n      alias: 'my db#1'\n",
                [("invalid-value", 5, 14, "'db#1' is not a host name")]),
    ProblemCase("a service variable that is no environment name",
                "t:\n  script: [x]\n  services:\n    - name: redis\n      variables: {'A-B': x}\n",
                [("invalid-value", 5, 19, "'A-B' is not an environment name")]),
    ProblemCase("an unknown pull policy",
                "t:\n  script: [x]\n  services:\n    - name: redis\n      pull_policy: sometimes\n",
                [("invalid-value", 5, 20, "'sometimes'")]),
    ProblemCase("a misspelt key has a suggestion",
                "t:\n  script: [x]\n  services:\n    - name: redis\n      comand: [x]\n",
                [("unknown-key", 5, 7, "unknown key `comand` in a service")]),
    ProblemCase("command of the wrong type",
                "t:\n  script: [x]\n  services:\n    - name: redis\n      command: {a: b}\n",
                [("invalid-type", 5, 16, "services:command must be a string or a list of strings")]),
    ProblemCase("every problem at once", "t:\n  script: [x]\n  services: [Bad, {alias: x}]\n",
                [("invalid-value", 3, 14, "'Bad'"), ("invalid-value", 3, 19, "needs a `name:`")]),
    ProblemCase("more services than one job may have",
                "t:\n  script: [x]\n  services: [" + ", ".join(f"s{i}" for i in range(17)) + "]\n",
                [("invalid-value", 3, 13, "17 services")]),
]


@pytest.mark.parametrize("case", PROBLEM_CASES, ids=lambda c: c.doc)
def test_bad_services_are_errors_at_their_place(case: ProblemCase) -> None:
    """Each mistake is an error with its file:line:col and a sentence naming it."""
    result = plan({".gitlab-ci.yml": case.text})
    assert isinstance(result, Problems)
    found = [(p.code, p.loc.line, p.loc.col, p.message) for p in result.errors]
    assert len(found) == len(case.expected), found
    for (code, line, col, message), (want_code, want_line, want_col, words) in zip(found, case.expected, strict=True):
        assert (code, line, col) == (want_code, want_line, want_col), found
        assert words in message, message
    assert all(p.loc.file == ".gitlab-ci.yml" and p.hint for p in result.errors)


@pytest.mark.parametrize(("name", "aliases"), [
    ("postgres:16", ("postgres",)),
    ("postgres", ("postgres",)),
    ("mysql:8@sha256:" + "a" * 64, ("mysql",)),
    ("tutum/wordpress:latest", ("tutum__wordpress", "tutum-wordpress")),
    ("registry.example.com/ns/my-db:1", ("registry.example.com__ns__my-db", "registry.example.com-ns-my-db")),
    ("registry.example.com:5000/ns/my-db:1", ("registry.example.com__ns__my-db", "registry.example.com-ns-my-db")),
    ("localhost:5000/db", ("localhost__db", "localhost-db")),
    ("docker:24-dind", ("docker",)),
    ("$NOT_EXPANDED", ()),
])
def test_aliases_are_derived_as_gitlab_runner_does(name: str, aliases: tuple[str, ...]) -> None:
    """Tag and digest stripped, the registry's port dropped, '/' as '__' then as '-' (when different)."""
    assert derived_aliases(name) == aliases
    assert all(is_alias(a) for a in aliases)


@pytest.mark.parametrize(("service", "names"), [
    (Service("postgres:16", alias="db"), ("db", "postgres")),
    (Service("postgres:16", alias="postgres"), ("postgres",)),
    (Service("redis", alias="cache, kv  store"), ("cache", "kv", "store", "redis")),
    (Service("a/b"), ("a__b", "a-b")),
])
def test_a_service_answers_to_its_aliases_then_the_derived_names(service: Service, names: tuple[str, ...]) -> None:
    """Explicit aliases (comma- or space-separated) first, then the derived ones, each once."""
    assert service_aliases(service) == names


@pytest.mark.parametrize(("text", "valid"), [
    ("db", True), ("my-db.local", True), ("a__b", True), ("x" * 253, True), ("x" * 254, False),
    ("", False), ("-db", False), ("db-", False), ("d b", False), ("db#", False), ("db\n", False), ("dé", False),
])
def test_alias_grammar_keeps_hosts_lines_whole(text: str, valid: bool) -> None:
    """Only what cannot split or comment out a line of /etc/hosts is a host name."""
    assert is_alias(text) is valid


def test_a_registry_host_is_a_warning_as_for_image() -> None:
    """A service image on a registry host plans, with the `image-unavailable` warning at its place."""
    result = ok("t:\n  script: [x]\n  services: [registry.example.com/db:1]\n")
    (warning,) = result.warnings
    assert (warning.code, warning.loc.line, warning.loc.col) == ("image-unavailable", 3, 14)
    assert "registry host registry.example.com" in warning.message


def test_split_aliases() -> None:
    """Commas and whitespace separate aliases; empty parts vanish."""
    assert split_aliases(" a,,b c ") == ("a", "b", "c")


def test_services_survive_the_stored_spec() -> None:
    """A planned job's services come back equal from its spec, whole and stored."""
    job = ok("t:\n  script: [x]\n  services:\n    - name: postgres:16\n      alias: db\n      command: [a]\n"
             "      variables: {A: '1'}\n    - redis\n").job("t")
    assert job_from_spec(job_to_spec(job)) == job
    stored = json.loads(stored_spec_json(job, shared_variables=0, leading_jobs=False))
    assert stored["services"][0]["alias"] == "db"
    assert job_from_spec(restore_spec(stored, [], [])) == job
    bare = ok("t: {script: [x]}").job("t")
    assert "services" not in json.loads(stored_spec_json(bare, shared_variables=0, leading_jobs=False))


def test_corpus_services_are_planned(corpus_dir) -> None:
    """The corpus's docker:dind services plan now, with their command (026) or bare (036)."""
    fdroid = plan_corpus(corpus_dir, "026_f-droid__fdroidserver.yml")
    assert fdroid.job("test_deploy_to_s3_with_rclone").services == (Service("docker:dind", command=("--tls=false",)),)
    lint = plan_corpus(corpus_dir, "036_06kellyjac__docker_markdownlint-cli.yml")
    assert lint.job("lint:shell").services == (Service("docker:dind"),)
