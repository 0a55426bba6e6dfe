"""``sandpit repos add|list|show|rm|rotate-secret`` and ``sandpit approve``: forge repositories on a
running service, and the runs of forks' pull requests waiting for an admin.

A client of ``/api/v1/repos`` like ``sandpit submit`` (SANDPIT_API_URL, SANDPIT_TOKEN; a trusted
token). The web-hook secret is never an argument (it would land in the shell's history and in
``ps``): it is read from ``--secret-file``, else from ``SANDPIT_WEBHOOK_SECRET``, else made here
(``secrets.token_urlsafe``) and printed once, to paste into the forge's web-hook form. The API
never gives it back. The forge token for statuses comes the same way (``--token-file`` or
``SANDPIT_FORGE_TOKEN``).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from worker.settings import Settings

GENERATED_SECRET_BYTES = 32


def add_repos_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``repos`` subcommand and its actions."""
    env = "environment: SANDPIT_API_URL, SANDPIT_TOKEN (a trusted token)"
    repos = sub.add_parser("repos", parents=[common], help="manage forge repositories on a running service",
                           description=f"Register forge repositories whose web-hooks start runs ({env}).")
    actions = repos.add_subparsers(dest="repos_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help="register a repository; prints its web-hook URL")
    add.add_argument("name", help="what sandpit calls it, e.g. owner/project")
    add.add_argument("--forge", required=True, choices=("github", "gitlab", "gitea"),
                     help="the forge kind (Forgejo is gitea)")
    add.add_argument("--clone-url", required=True, help="git://, http:// or https:// URL the commits come from")
    add.add_argument("--secret-file", type=Path, help="a file holding the web-hook secret (default: "
                     "SANDPIT_WEBHOOK_SECRET, else a new one, printed once)")
    add.add_argument("--token-file", type=Path, help="a file holding the forge API token for commit statuses "
                     "(default: SANDPIT_FORGE_TOKEN, else none)")
    add.add_argument("--pipeline-path", default=".gitlab-ci.yml", help="the pipeline file (default: .gitlab-ci.yml; "
                     ".sandpit.yml is also looked for)")
    add.add_argument("--default-branch", default="main", help="the repository's default branch (default: main)")
    add.add_argument("--fork-policy", choices=("run", "approve", "never"), default="approve",
                     help="pull requests from forks: run untrusted, wait for approval, or never (default: approve)")
    add.add_argument("--api-url", help="the forge's REST API for commit statuses, e.g. https://lab.example/api/v4 "
                     "(default: derived from the clone URL)")
    actions.add_parser("list", parents=[common], help="list registered repositories")
    show = actions.add_parser("show", parents=[common], help="a repository and its latest web-hook deliveries")
    show.add_argument("repo", help="its name or id")
    rm = actions.add_parser("rm", parents=[common], help="forget a repository (its runs stay)")
    rm.add_argument("repo", help="its name or id")
    rot = actions.add_parser("rotate-secret", parents=[common], help="replace the web-hook secret")
    rot.add_argument("repo", help="its name or id")
    rot.add_argument("--secret-file", type=Path, help="a file holding the new secret (default: "
                     "SANDPIT_WEBHOOK_SECRET, else a new one, printed once)")
    approve = sub.add_parser("approve", parents=[common], help="run a fork's pull request held for approval",
                             description=f"Approve a run waiting for approval, or list them ({env}).")
    approve.add_argument("run", nargs="?", help="the run's id (without it: list the runs waiting)")


def _secret(path: Path | None, configured: str | None, generate: bool) -> tuple[str | None, bool]:
    """(the value, whether it was made here)."""
    if path is not None:
        try:
            return path.read_text().strip(), False
        except OSError as exc:
            raise SystemExit(f"sandpit: cannot read {path}: {exc.strerror}") from None
    if configured:
        return str(configured), False
    if generate:
        return secrets.token_urlsafe(GENERATED_SECRET_BYTES), True
    return None, False


def repos_command(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.remote import Client

    client = Client(settings)
    if args.command == "approve":
        return _approve(client, args.run)
    action = args.repos_command
    if action == "add":
        secret, made = _secret(args.secret_file, settings.webhook_secret, generate=True)
        token, _ = _secret(args.token_file, settings.forge_token, generate=False)
        body = {"name": args.name, "forge": args.forge, "clone_url": args.clone_url, "secret": secret,
                "token": token, "pipeline_path": args.pipeline_path, "default_branch": args.default_branch,
                "fork_policy": args.fork_policy, "api_url": args.api_url}
        repo = client.call("POST", "/api/v1/repos", json=body)
        _print_repo(client, repo)
        if made:
            print(f"  secret:   {secret}   (shown once: paste it into the forge's web-hook form)")
        return 0
    if action == "list":
        for repo in client.call("GET", "/api/v1/repos"):
            print(f"{repo['id']}  {repo['forge']:<6}  {repo['fork_policy']:<7}  {repo['name']}  {repo['clone_url']}")
        return 0
    path = f"/api/v1/repos/{args.repo}"
    if action == "show":
        repo = client.call("GET", path)
        _print_repo(client, repo)
        for d in repo["deliveries"]:
            run = f" run {d['run_id']}" if d["run_id"] else ""
            print(f"  {d['received_at']}  {d['status_code']}  {d['verdict']:<18} {d['event'] or '-'}{run}")
        return 0
    if action == "rm":
        import httpx

        try:
            response = client.http.delete(path)
        except httpx.HTTPError as exc:
            raise SystemExit(f"sandpit: cannot reach the API at {client.base}: {exc}") from None
        if response.status_code != 204:
            raise SystemExit(f"sandpit: DELETE {path} → {response.status_code}\n{response.text}")
        print(f"removed {args.repo}")
        return 0
    secret, made = _secret(args.secret_file, settings.webhook_secret, generate=True)
    repo = client.call("POST", f"{path}/rotate-secret", json={"secret": secret})
    print(f"rotated the web-hook secret of {repo['name']}")
    if made:
        print(f"  secret:   {secret}   (shown once: paste it into the forge's web-hook form)")
    return 0


def _approve(client: Any, run_id: str | None) -> int:
    if run_id is None:
        waiting = client.call("GET", "/api/v1/approvals")
        for w in waiting:
            mr = f"!{w['merge_request_iid']}" if w["merge_request_iid"] is not None else w["ref"]
            print(f"{w['run_id']}  {w['repository'] or '-'}  {mr}  {w['sha'][:12]}  {w['title']}")
        if not waiting:
            print("no run is waiting for approval")
        return 0
    run = client.call("POST", f"/api/v1/runs/{run_id}/approve")
    print(f"approved run {run['id']}: {run['status']}, {len(run['jobs'])} job(s)")
    return 0


def _print_repo(client: Any, repo: dict[str, Any]) -> None:
    print(f"{repo['name']}  ({repo['forge']}, id {repo['id']})")
    print(f"  clone:    {repo['clone_url']}")
    print(f"  pipeline: {repo['pipeline_path']}   default branch: {repo['default_branch']}   "
          f"forks: {repo['fork_policy']}   status token: {'yes' if repo['has_token'] else 'no'}")
    print(f"  web-hook: {client.base}{repo['webhook_path']}", file=sys.stdout)
