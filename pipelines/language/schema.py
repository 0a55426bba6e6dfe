"""Which keys each part of a pipeline may hold, and what sandpit does with each (pure).

Every GitLab key is in one of three groups, so a valid GitLab key is never "unknown":

* supported — sandpit runs it as GitLab does;
* ignored (warning ``unsupported-ignored``) — sandpit does not act on it, and that does not change
  what the job runs or whether it passes (``tags``, ``environment``, ``coverage`` ...);
* refused (error ``unsupported``) — acting without it would give a different result
  (``trigger``, ``secrets`` ...), so the pipeline is not planned.

>>> KEYS["job"].status("tags"), KEYS["job"].status("trigger"), KEYS["job"].status("scrpt")
('ignored', 'refused', None)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from pipelines.language.problems import ProblemSink
from pipelines.language.yamltree import YMap

Status = Literal["supported", "ignored", "refused"]


@dataclass(frozen=True, slots=True)
class KeyTable:
    where: str
    supported: frozenset[str]
    ignored: dict[str, str]  # key -> why ignoring it is harmless
    refused: dict[str, str]  # key -> what to do instead

    def status(self, key: str) -> Status | None:
        if key in self.supported:
            return "supported"
        if key in self.ignored:
            return "ignored"
        if key in self.refused:
            return "refused"
        return None

    def all_keys(self) -> list[str]:
        return sorted(self.supported | set(self.ignored) | set(self.refused))


def _table(
    where: str, supported: str, ignored: dict[str, str] | None = None, refused: dict[str, str] | None = None
) -> KeyTable:
    return KeyTable(where, frozenset(supported.split()), ignored or {}, refused or {})


_NO_SECRETS = "pass the value with `sandpit run --var NAME=VALUE` or a server-side variable"
_IGNORED_META = "sandpit has no runners to pick, environments or deployments to track"

KEYS: dict[str, KeyTable] = {
    "top": _table(
        "the top level",
        "stages variables default include workflow image services before_script after_script cache",
        refused={
            "types": "rename `types` to `stages`",
        },
    ),
    "job": _table(
        "a job",
        "script before_script after_script image stage extends needs dependencies parallel rules only "
        "except when start_in allow_failure retry timeout interruptible variables artifacts cache inherit sandbox "
        "services",
        ignored={
            "tags": "sandpit has no runner tags; every job runs on any worker",
            "environment": _IGNORED_META,
            "resource_group": "sandpit does not serialise jobs across pipelines",
            "coverage": "sandpit does not parse coverage from the log",
            "release": "sandpit does not create forge releases",
            "pages": "sandpit does not publish GitLab Pages; the job itself still runs",
            "publish": "sandpit does not publish GitLab Pages; the job itself still runs",
            "dast_configuration": "sandpit has no DAST profiles",
            "manual_confirmation": "sandpit asks no confirmation for manual jobs",
        },
        refused={
            "trigger": "sandpit does not start downstream or child pipelines; inline the jobs",
            "secrets": _NO_SECRETS,
            "id_tokens": _NO_SECRETS,
            "identity": _NO_SECRETS,
            "hooks": "move pre_get_sources_script into before_script",
            "run": "write the steps as `script:` lines",
            "type": "rename `type` to `stage`",
        },
    ),
    "default": _table(
        "default",
        "after_script artifacts before_script cache image interruptible retry timeout sandbox services",
        ignored={"tags": "sandpit has no runner tags"},
        refused={
            "id_tokens": _NO_SECRETS,
            "hooks": "move pre_get_sources_script into before_script",
        },
    ),
    "artifacts": _table(
        "artifacts",
        "paths exclude expire_in when name reports untracked",
        ignored={
            "expose_as": "sandpit lists every artifact of a job in its UI anyway",
            "public": "sandpit's artifact access follows the run's access",
            "access": "sandpit's artifact access follows the run's access",
        },
    ),
    "cache": _table(
        "cache",
        "key paths policy when",
        ignored={
            "fallback_keys": "a cache miss only costs time",
            "unprotect": "sandpit has no protected branches",
            "untracked": "a cache miss only costs time",
        },
    ),
    "cache_key": _table("cache:key", "files prefix"),
    "image": _table(
        "image",
        "name entrypoint pull_policy",
        ignored={
            "docker": "sandpit runs images with its own runtime settings",
            "kubernetes": "sandpit runs images with its own runtime settings",
        },
    ),
    "service": _table(
        "a service",
        "name alias entrypoint command variables pull_policy",
        ignored={
            "docker": "sandpit runs service images with its own runtime settings",
            "kubernetes": "sandpit runs service images with its own runtime settings",
        },
    ),
    "retry": _table("retry", "max when exit_codes"),
    "rule": _table(
        "a rule",
        "if changes exists when allow_failure variables start_in interruptible",
        refused={"needs": "put the `needs` on the job and mark them `optional: true`"},
    ),
    "workflow": _table(
        "workflow",
        "rules auto_cancel",
        ignored={"name": "sandpit names runs by their ref"},
    ),
    "workflow_rule": _table(
        "a workflow rule",
        "if changes exists when variables auto_cancel",
    ),
    "auto_cancel": _table("auto_cancel", "on_new_commit on_job_failure"),
    "need": _table(
        "a need",
        "job artifacts optional parallel",
        refused={
            "pipeline": "sandpit cannot fetch artifacts of another pipeline",
            "project": "sandpit cannot fetch artifacts of another project",
            "ref": "sandpit cannot fetch artifacts of another project",
        },
    ),
    "include": _table(
        "an include",
        "local project rules file ref",  # file and ref go with `project`
        ignored={"integrity": "only used with remote includes, which sandpit refuses"},
        refused={
            "remote": "download the file into this repository and use `include: local`",
            "template": "copy GitLab's template into this repository and use `include: local`",
            "component": "copy the component's template into this repository and use `include: local`",
            "inputs": "replace `$[[ inputs.* ]]` in the included file with values",
        },
    ),
    "only": _table(
        "only/except",
        "refs variables changes",
        refused={"kubernetes": "sandpit has no Kubernetes integration; use rules:if"},
    ),
    "changes": _table(
        "changes", "paths", ignored={"compare_to": "sandpit compares with the changed files it is given"}
    ),
    "exists": _table(
        "exists",
        "paths",
        refused={"project": "only this repository's files can be checked", "ref": "only this commit's files"},
    ),
    "variable": _table("a variable", "value description expand options"),
    "allow_failure": _table("allow_failure", "exit_codes"),
    "parallel": _table("parallel", "matrix"),
    "inherit": _table("inherit", "default variables"),
    "sandbox": _table("sandbox", "memory cpus pids disk network runtime profile"),
}


def check_keys(node: YMap, table: str, sink: ProblemSink) -> None:
    """Report every unknown, ignored or refused key of ``node`` (checked against ``KEYS[table]``)."""
    keys = KEYS[table]
    for key in node.entries:
        status = keys.status(key)
        if status == "supported":
            continue
        loc = node.key_loc(key)
        if status == "ignored":
            sink.warning(
                loc,
                "unsupported-ignored",
                f"`{key}` in {keys.where} is not supported and is ignored",
                keys.ignored[key],
            )
        elif status == "refused":
            sink.error(
                loc,
                "unsupported",
                f"`{key}` in {keys.where} is GitLab syntax sandpit cannot run",
                keys.refused[key],
            )
        else:
            close = difflib.get_close_matches(key, keys.all_keys(), n=1)
            hint = (
                f"did you mean `{close[0]}`?"
                if close
                else f"{keys.where} accepts: {', '.join(keys.all_keys())}"
            )
            sink.error(loc, "unknown-key", f"unknown key `{key}` in {keys.where}", hint)
