"""Variables: the ``CI_*`` values sandpit predefines, and ``$VAR`` / ``${VAR}`` expansion (pure).

Expansion follows the runner: ``$$`` is a literal dollar, an undefined variable expands to the
empty string, a variable whose value names other variables is expanded recursively (a cycle is
left unexpanded), and a variable declared with ``expand: false`` is used exactly as written.

>>> expand("${CI_COMMIT_REF_SLUG}-$$HOME-$NOPE", {"CI_COMMIT_REF_SLUG": "main"})
'main-$HOME-'
>>> resolve_variables({"A": ("$B/x", True), "B": ("b", True), "C": ("$B", False)})
{'A': 'b/x', 'B': 'b', 'C': '$B'}
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from pipelines.language.model import PipelineInputs

_REFERENCE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_SLUG_DROP = re.compile(r"[^a-z0-9]+")

PIPELINE_SOURCES: dict[str, str] = {
    "push": "push",
    "merge_request": "merge_request_event",
    "web": "web",
    "api": "api",
    "schedule": "schedule",
}

SANDPIT_VERSION = "0.1.0"  # CI_SERVER_VERSION; the project's version (pyproject.toml)

# The predefined variables sandpit provides, with a sentence each; docs/pipeline-language.md lists them.
PREDEFINED: dict[str, str] = {
    "CI": "always `true`",
    "GITLAB_CI": "always `true`: scripts written for GitLab test it",
    "SANDPIT": "always `true` (lets a script tell sandpit from GitLab)",
    "CI_PIPELINE_SOURCE": "push, merge_request_event, web, api or schedule",
    "CI_PIPELINE_ID": "the run's number",
    "CI_PIPELINE_IID": "the run's number within its project (the same as CI_PIPELINE_ID unless told)",
    "CI_COMMIT_SHA": "the commit being built",
    "CI_COMMIT_BEFORE_SHA": "the previous tip of the branch (pushes from a forge); 40 zeros when unknown, as on GitLab",
    "CI_COMMIT_MESSAGE": "the commit's full message (local git trees and forge pushes; empty for an API run "
                         "without a commit)",
    "CI_COMMIT_TITLE": "the message's first line",
    "CI_COMMIT_DESCRIPTION": "the message after its first line",
    "CI_COMMIT_TIMESTAMP": "the commit's time, ISO 8601 (empty when unknown)",
    "CI_COMMIT_AUTHOR": "`Name <email>` of the commit's author (empty when unknown)",
    "CI_COMMIT_SHORT_SHA": "its first 8 characters",
    "CI_COMMIT_REF_NAME": "the branch or tag name",
    "CI_COMMIT_REF_SLUG": "the ref name lowercased, non-alphanumerics as `-`, at most 63 characters",
    "CI_COMMIT_BRANCH": "the branch name (branch pipelines only, not merge requests or tags)",
    "CI_COMMIT_TAG": "the tag name (tag pipelines only)",
    "CI_DEFAULT_BRANCH": "the project's default branch (`main` unless told)",
    "CI_PROJECT_DIR": "where the source is in the job (`/workspace`)",
    "CI_PROJECT_PATH": "namespace/name of the project",
    "CI_PROJECT_NAME": "the last part of CI_PROJECT_PATH",
    "CI_PROJECT_NAMESPACE": "CI_PROJECT_PATH without its last part (`local` for a local tree)",
    "CI_PROJECT_PATH_SLUG": "CI_PROJECT_PATH as a slug",
    "CI_PROJECT_URL": "the project's web address (a forge's); `sandpit://<path>` when there is none",
    "CI_BUILDS_DIR": "the folder that holds CI_PROJECT_DIR (`/`)",
    "CI_SERVER": "always `yes`",
    "CI_SERVER_NAME": "`sandpit`",
    "CI_SERVER_VERSION": "sandpit's version",
    "CI_SERVER_URL": "the service's address; `sandpit://local` for `sandpit run`",
    "CI_SERVER_HOST": "the host part of CI_SERVER_URL",
    "CI_JOB_ID": "the job's id (the API's job id; a new one per `sandpit run`)",
    "CI_JOB_URL": "where the job is seen: the API's job URL, `sandpit://jobs/<id>` without a service",
    "CI_JOB_STATUS": "in after_script only: `success` or `failed` (a cancelled job runs no after_script)",
    "CI_CONCURRENT_ID": "this job's slot among the jobs its worker runs at once, from 0",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "merge request pipelines: the source branch",
    "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "merge request pipelines: the target branch",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": "merge request pipelines: the source branch's tip (the commit built)",
    "CI_MERGE_REQUEST_IID": "merge request pipelines from a forge: the pull/merge request's number",
    "CI_MERGE_REQUEST_TITLE": "merge request pipelines from a forge: its title",
    "CI_MERGE_REQUEST_PROJECT_PATH": "merge request pipelines: the target project (CI_PROJECT_PATH)",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "merge request pipelines: the project the source branch is in "
                                            "(a fork's path for a pull request from a fork)",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_URL": "merge request pipelines: that project's web address",
    "CI_JOB_NAME": "the job's full name (with `1/3` or `[matrix, values]`)",
    "CI_JOB_NAME_SLUG": "the job name as a slug",
    "CI_JOB_STAGE": "the job's stage",
    "CI_NODE_INDEX": "parallel jobs: this job's index, from 1",
    "CI_NODE_TOTAL": "parallel jobs: how many there are (1 otherwise)",
}


def slug(text: str) -> str:
    """GitLab's ref slug: lowercase, ``[^a-z0-9]`` runs as ``-``, 63 characters, no edge dashes.

    >>> slug("Feature/New_UI")
    'feature-new-ui'
    """
    return _SLUG_DROP.sub("-", text.lower())[:63].strip("-")


def pipeline_variables(inputs: PipelineInputs) -> dict[str, str]:
    """The pipeline-wide predefined variables for these inputs.

    >>> v = pipeline_variables(PipelineInputs(project_path="app", commit_message="Fix it\\n\\nBecause."))
    >>> v["CI_PROJECT_PATH"], v["CI_PROJECT_NAMESPACE"], v["CI_COMMIT_TITLE"], v["CI_COMMIT_DESCRIPTION"]
    ('local/app', 'local', 'Fix it', 'Because.')
    """
    # GitLab's projects always live in a namespace; a bare name (a local tree) gets `local/`
    path = inputs.project_path if "/" in inputs.project_path else f"local/{inputs.project_path}"
    title, _newline, rest = inputs.commit_message.partition("\n")
    server_url = inputs.server_url or "sandpit://local"
    values = {
        "CI": "true",
        "GITLAB_CI": "true",
        "SANDPIT": "true",
        "CI_PIPELINE_SOURCE": PIPELINE_SOURCES.get(inputs.trigger, inputs.trigger),
        "CI_PIPELINE_ID": str(inputs.pipeline_id),
        "CI_PIPELINE_IID": str(inputs.pipeline_iid if inputs.pipeline_iid is not None else inputs.pipeline_id),
        "CI_COMMIT_SHA": inputs.sha,
        "CI_COMMIT_SHORT_SHA": inputs.sha[:8],
        "CI_COMMIT_BEFORE_SHA": inputs.before_sha,
        "CI_COMMIT_MESSAGE": inputs.commit_message,
        "CI_COMMIT_TITLE": title.strip(),
        "CI_COMMIT_DESCRIPTION": rest.strip("\n"),
        "CI_COMMIT_TIMESTAMP": inputs.commit_timestamp,
        "CI_COMMIT_AUTHOR": inputs.commit_author,
        "CI_COMMIT_REF_NAME": inputs.ref,
        "CI_COMMIT_REF_SLUG": slug(inputs.ref),
        "CI_DEFAULT_BRANCH": inputs.default_branch,
        "CI_PROJECT_DIR": inputs.project_dir,
        "CI_BUILDS_DIR": posixpath.dirname(inputs.project_dir.rstrip("/")) or "/",
        "CI_PROJECT_PATH": path,
        "CI_PROJECT_PATH_SLUG": slug(path),
        "CI_PROJECT_NAME": path.rsplit("/", 1)[-1],
        "CI_PROJECT_NAMESPACE": path.rsplit("/", 1)[0],
        "CI_PROJECT_URL": inputs.project_url or f"sandpit://{path}",
        "CI_SERVER": "yes",
        "CI_SERVER_NAME": "sandpit",
        "CI_SERVER_VERSION": SANDPIT_VERSION,
        "CI_SERVER_URL": server_url,
        "CI_SERVER_HOST": server_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0],
    }
    if inputs.ref_kind == "tag":
        values["CI_COMMIT_TAG"] = inputs.ref
    elif inputs.trigger == "merge_request":
        values["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"] = inputs.ref
        values["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"] = inputs.merge_request_target or inputs.default_branch
        values["CI_MERGE_REQUEST_SOURCE_BRANCH_SHA"] = inputs.sha
        values["CI_MERGE_REQUEST_PROJECT_PATH"] = path
        values["CI_MERGE_REQUEST_SOURCE_PROJECT_PATH"] = inputs.merge_request_source_project_path or path
        values["CI_MERGE_REQUEST_SOURCE_PROJECT_URL"] = (inputs.merge_request_source_project_url
                                                        or values["CI_PROJECT_URL"])
        if inputs.merge_request_iid is not None:
            values["CI_MERGE_REQUEST_IID"] = str(inputs.merge_request_iid)
        if inputs.merge_request_title:
            values["CI_MERGE_REQUEST_TITLE"] = inputs.merge_request_title
    else:
        values["CI_COMMIT_BRANCH"] = inputs.ref
    return values


def job_variables(name: str, stage: str, node_index: int | None, node_total: int | None) -> dict[str, str]:
    """The per-job predefined variables."""
    values = {
        "CI_JOB_NAME": name,
        "CI_JOB_NAME_SLUG": slug(name),
        "CI_JOB_STAGE": stage,
        "CI_NODE_TOTAL": str(node_total or 1),
    }
    if node_index is not None:
        values["CI_NODE_INDEX"] = str(node_index)
    return values


def expand(text: str, lookup: Mapping[str, str]) -> str:
    """``text`` with ``$VAR``, ``${VAR}`` and ``$$`` replaced (undefined names become empty)."""
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name is None:
            return "$"
        return lookup.get(name, "")

    return _REFERENCE.sub(replace, text)


def resolve_variables(raw: Mapping[str, tuple[str, bool]]) -> dict[str, str]:
    """Every variable expanded against the others; ``raw`` maps a name to (value, expand)."""
    resolved: dict[str, str] = {}
    visiting: set[str] = set()

    def resolve(name: str) -> str:
        done = resolved.get(name)
        if done is not None:
            return done
        value, expandable = raw[name]
        if not expandable or "$" not in value:
            resolved[name] = value
            return value
        if name in visiting:
            return value  # a cycle: the runner leaves such a reference as written
        visiting.add(name)

        def replace(match: re.Match[str]) -> str:
            ref = match.group(1) or match.group(2)
            if ref is None:
                return "$"
            return resolve(ref) if ref in raw else ""

        # re.sub does not rescan what it inserts, so resolved values are never expanded twice.
        result = _REFERENCE.sub(replace, value)
        visiting.discard(name)
        resolved[name] = result
        return result

    return {
        name: value if not expandable or "$" not in value else resolve(name)
        for name, (value, expandable) in raw.items()
    }
