"""Readers for the structured job keywords: image, artifacts, cache, retry, allow_failure, sandbox (pure).

Each takes the located YAML value, reports every problem it finds, and returns the domain value
(or None when the value is unusable).

>>> from pipelines.language.yamltree import parse_yaml
>>> sink = ProblemSink()
>>> read_retry(parse_yaml("{max: 2, when: script_failure}", "ci", sink), sink)  # type: ignore[arg-type]
Retry(max=2, when=('script_failure',), exit_codes=())
"""

from __future__ import annotations

from pipelines.language.model import AllowFailure, Artifacts, Cache, Image, Retry, SandboxPolicy, SandboxSpec
from pipelines.language.problems import ProblemSink
from pipelines.language.quantities import parse_cpus, parse_pids, parse_size
from pipelines.language.reader import (
    flatten_items,
    read_bool,
    read_exit_codes,
    read_int,
    read_map,
    read_str,
    read_str_list,
)
from pipelines.language.rules import read_duration
from pipelines.language.schema import check_keys
from pipelines.language.yamltree import YMap, YNode, YScalar, YSeq
from pipelines.references import InvalidReference, parse_reference

RETRY_WHENS = frozenset(
    "always unknown_failure script_failure api_failure stuck_or_timeout_failure runner_system_failure "
    "runner_unsupported stale_schedule job_execution_timeout archived_failure unmet_prerequisites "
    "scheduler_failure data_integrity_failure".split()
)
ARTIFACT_WHENS = ("on_success", "on_failure", "always")
CACHE_POLICIES = ("pull", "push", "pull-push")


def read_image(node: YNode, sink: ProblemSink) -> Image | None:
    """The job's image. Its name must be a docker-style reference (pipelines/references.py): what
    is not one (``/proc/self/cwd/evil``, ``../x``, ``Debian``) is an error here, because run would
    refuse it too. A registry host or a digest is a warning: it is pulled only from a registry the
    operator lists. A name with ``$`` is judged after variables are expanded, at run time."""
    if isinstance(node, YMap):
        check_keys(node, "image", sink)
        name_node = node.get("name")
        if name_node is None:
            sink.error(node.loc, "invalid-value", "image needs a `name:`", "write image: {name: debian:12}")
            return None
        name = read_str(name_node, "image:name", sink)
        entrypoint = None
        if (entry_node := node.get("entrypoint")) is not None:
            entrypoint = read_str_list(entry_node, "image:entrypoint", sink)
        policy = None
        if (policy_node := node.get("pull_policy")) is not None:
            policy = read_str_list(policy_node, "image:pull_policy", sink)
            bad = [p for p in policy or () if p not in PULL_POLICIES]
            if bad or policy == ():
                sink.error(policy_node.loc, "invalid-value",
                           f"image:pull_policy {', '.join(map(repr, bad)) or 'is empty'}: each must be one of "
                           + ", ".join(PULL_POLICIES), "write pull_policy: if-not-present")
                policy = None
        if name is not None:
            _check_image_name(name, name_node, sink)
        return None if name is None else Image(name, entrypoint, policy)
    name = read_str(node, "image", sink)
    if name is not None:
        _check_image_name(name, node, sink)
    return None if name is None else Image(name)


PULL_POLICIES = ("always", "if-not-present", "never")


def _check_image_name(name: str, node: YNode, sink: ProblemSink) -> None:
    if "$" in name:
        return
    try:
        ref = parse_reference(name)
    except InvalidReference as exc:
        sink.error(node.loc, "invalid-value", str(exc), "write image: debian:12 or image: python:3.11")
        return
    if ref.domain is not None or ref.digest is not None:
        what = f"registry host {ref.domain}" if ref.domain is not None else "a digest"
        sink.warning(node.loc, "image-unavailable",
                     f"image {ref} names {what}; sandpit pulls it only from a registry the operator lists "
                     "(SANDPIT_REGISTRIES), else this job will fail",
                     "use an image built from images/ (sandpit images list), e.g. debian:12 or python:3.11")


def read_allow_failure(node: YNode, sink: ProblemSink) -> AllowFailure | None:
    if isinstance(node, YMap):
        check_keys(node, "allow_failure", sink)
        codes_node = node.get("exit_codes")
        codes = read_exit_codes(codes_node, "allow_failure:exit_codes", sink) if codes_node else ()
        return AllowFailure(False, codes)
    allowed = read_bool(node, "allow_failure", sink)
    return None if allowed is None else AllowFailure(allowed)


def read_retry(node: YNode, sink: ProblemSink) -> Retry | None:
    if not isinstance(node, YMap):
        count = read_int(node, "retry", sink, 0, 2)
        return None if count is None else Retry(count)
    check_keys(node, "retry", sink)
    count = 0
    if (max_node := node.get("max")) is not None:
        count = read_int(max_node, "retry:max", sink, 0, 2) or 0
    whens: tuple[str, ...] = ("always",)
    if (when_node := node.get("when")) is not None:
        whens = read_str_list(when_node, "retry:when", sink) or ()
        for when in whens:
            if when not in RETRY_WHENS:
                sink.error(
                    when_node.loc,
                    "invalid-value",
                    f"retry:when `{when}` is not a failure kind",
                    f"use any of: {', '.join(sorted(RETRY_WHENS))}",
                )
    codes: tuple[int, ...] = ()
    if (codes_node := node.get("exit_codes")) is not None:
        codes = read_exit_codes(codes_node, "retry:exit_codes", sink)
    return Retry(count, whens, codes)


def read_timeout(node: YNode, sink: ProblemSink) -> int | None:
    seconds = read_duration(node, "timeout", sink)
    if seconds is not None and seconds < 1:
        sink.error(node.loc, "invalid-duration", "timeout must be at least one second", "write e.g. 10m")
        return None
    return seconds


def read_artifacts(node: YNode, sink: ProblemSink) -> Artifacts | None:
    mapping = read_map(node, "artifacts", sink, "artifacts: {paths: [dist/]}")
    if mapping is None:
        return None
    check_keys(mapping, "artifacts", sink)
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    junit: tuple[str, ...] = ()
    expire: int | None = None
    never = False
    when = "on_success"
    name = None
    for key, value in mapping.items():
        if key == "paths":
            paths = read_str_list(value, "artifacts:paths", sink) or ()
        elif key == "exclude":
            exclude = read_str_list(value, "artifacts:exclude", sink) or ()
        elif key == "expire_in":
            text = read_str(value, "artifacts:expire_in", sink)
            if text is not None and text.strip().lower() == "never":
                never = True
            elif text is not None:
                expire = read_duration(value, "artifacts:expire_in", sink)
        elif key == "when":
            when = _choice(value, "artifacts:when", ARTIFACT_WHENS, sink) or when
        elif key == "name":
            name = read_str(value, "artifacts:name", sink)
        elif key == "untracked" and read_bool(value, "artifacts:untracked", sink):
            sink.error(
                mapping.key_loc(key),
                "unsupported",
                "`untracked: true` in artifacts is GitLab syntax sandpit cannot run",
                "list the files under `paths:` (sandpit does not consult git)",
            )
        elif key == "reports":
            junit = _read_reports(value, sink)
    return Artifacts(paths, exclude, expire, never, when, name, junit)


def _read_reports(node: YNode, sink: ProblemSink) -> tuple[str, ...]:
    mapping = read_map(node, "artifacts:reports", sink, "reports: {junit: report.xml}")
    if mapping is None:
        return ()
    junit: tuple[str, ...] = ()
    for key, value in mapping.items():
        loc = mapping.key_loc(key)
        if key == "junit":
            junit = read_str_list(value, "artifacts:reports:junit", sink) or ()
        elif key == "dotenv":
            sink.error(
                loc,
                "unsupported",
                "`reports: dotenv` is GitLab syntax sandpit cannot run",
                "later jobs would miss its variables; write them to a file artifact and `source` it",
            )
        else:
            sink.warning(
                loc,
                "unsupported-ignored",
                f"`reports: {key}` is not supported and is ignored",
                "the files are still kept if listed under artifacts:paths",
            )
    return junit


def read_caches(node: YNode, sink: ProblemSink) -> tuple[Cache, ...]:
    items = flatten_items(node, "cache", sink) if isinstance(node, YSeq) else [node]
    if len(items) > 4:
        sink.error(node.loc, "invalid-value", "at most 4 caches per job", "merge some caches")
    out: list[Cache] = []
    for item in items:
        mapping = read_map(item, "cache", sink, "cache: {key: deps, paths: [.cache/]}")
        if mapping is None or not mapping.entries:
            continue
        cache = _read_cache(mapping, sink)
        if cache is not None:
            out.append(cache)
    return tuple(out)


def _read_cache(mapping: YMap, sink: ProblemSink) -> Cache | None:
    check_keys(mapping, "cache", sink)
    key = "default"
    files: tuple[str, ...] = ()
    prefix: str | None = None
    paths: tuple[str, ...] = ()
    policy = "pull-push"
    when = "on_success"
    for name, value in mapping.items():
        if name == "key" and isinstance(value, YMap):
            check_keys(value, "cache_key", sink)
            files_node = value.get("files")
            if files_node is None:
                sink.error(
                    value.loc, "invalid-value", "cache:key needs `files:`", "key: {files: [Gemfile.lock]}"
                )
            else:
                files = read_str_list(files_node, "cache:key:files", sink) or ()
                if len(files) > 2:
                    sink.error(
                        files_node.loc,
                        "invalid-value",
                        "cache:key:files takes at most 2 files",
                        "keep the two files whose changes should renew the cache",
                    )
            if (prefix_node := value.get("prefix")) is not None:
                prefix = read_str(prefix_node, "cache:key:prefix", sink)
        elif name == "key":
            key = read_str(value, "cache:key", sink) or key
        elif name == "paths":
            paths = read_str_list(value, "cache:paths", sink) or ()
        elif name == "policy":
            policy = _choice(value, "cache:policy", CACHE_POLICIES, sink) or policy
        elif name == "when":
            when = _choice(value, "cache:when", ARTIFACT_WHENS, sink) or when
    return Cache(key, files, prefix, paths, policy, when)


def _choice(node: YNode, what: str, allowed: tuple[str, ...], sink: ProblemSink) -> str | None:
    text = read_str(node, what, sink)
    if text is not None and text not in allowed and "$" not in text:
        sink.error(
            node.loc, "invalid-value", f"{what} `{text}` is not allowed", f"use one of: {', '.join(allowed)}"
        )
        return None
    return text


def read_sandbox(node: YNode, policy: SandboxPolicy, sink: ProblemSink) -> SandboxSpec:
    """sandpit's ``sandbox:`` block, with units checked and the server policy applied."""
    mapping = read_map(node, "sandbox", sink, "sandbox: {memory: 512M, cpus: 1.5}")
    if mapping is None:
        return SandboxSpec()
    check_keys(mapping, "sandbox", sink)
    values: dict[str, object] = {}
    parsers = {"memory": parse_size, "disk": parse_size, "cpus": parse_cpus, "pids": parse_pids}
    examples = {"memory": "512M or 1Gi", "disk": "1G", "cpus": "1.5", "pids": "256"}
    choices = {"network": policy.networks, "runtime": policy.runtimes, "profile": policy.profiles}
    known = {
        "network": ("none", "egress"),
        "runtime": ("crun", "runc", "runsc"),
        "profile": ("default", "strict"),
    }
    for key, value in mapping.items():
        if key in parsers:
            text = read_str(value, f"sandbox:{key}", sink)
            if text is None:
                continue
            try:
                values[key] = parsers[key](text)
            except ValueError as exc:
                sink.error(
                    value.loc, "invalid-size", f"sandbox:{key}: {exc}", f"write e.g. {key}: {examples[key]}"
                )
        elif key in choices:
            text = _choice(value, f"sandbox:{key}", known[key], sink)
            if text is not None and text not in choices[key]:
                sink.error(
                    value.loc,
                    "over-policy",
                    f"sandbox:{key} `{text}` is not allowed on this server",
                    f"this server allows: {', '.join(choices[key])}",
                )
            elif text is not None:
                values[key] = text
    _check_caps(mapping, values, policy, sink)
    return _spec(values)


def _check_caps(mapping: YMap, values: dict[str, object], policy: SandboxPolicy, sink: ProblemSink) -> None:
    caps: dict[str, int | float | None] = {
        "memory": policy.max_memory_bytes,
        "disk": policy.max_disk_bytes,
        "cpus": policy.max_cpus,
        "pids": policy.max_pids,
    }
    for key, cap in caps.items():
        value = values.get(key)
        if cap is not None and isinstance(value, int | float) and value > cap:
            node = mapping.get(key)
            assert node is not None
            sink.error(
                node.loc,
                "over-policy",
                f"sandbox:{key} asks for {_show(node)}, over this server's cap of {cap}",
                f"ask for at most {cap}{' bytes' if key in ('memory', 'disk') else ''}",
            )
            del values[key]


def _show(node: YNode) -> str:
    return node.text() if isinstance(node, YScalar) else "?"


def _spec(values: dict[str, object]) -> SandboxSpec:
    def num(key: str) -> int | None:
        value = values.get(key)
        return value if isinstance(value, int) else None

    cpus = values.get("cpus")
    text = {k: v for k, v in values.items() if isinstance(v, str)}
    return SandboxSpec(
        memory_bytes=num("memory"),
        cpus=cpus if isinstance(cpus, float) else None,
        pids=num("pids"),
        disk_bytes=num("disk"),
        network=text.get("network"),
        runtime=text.get("runtime"),
        profile=text.get("profile"),
    )
