"""``sandpit retry JOB`` and ``sandpit play JOB``: one job of a run on a running service.

Clients of ``POST /api/v1/jobs/{id}/retry`` and ``/play`` like ``sandpit cancel`` (SANDPIT_API_URL,
SANDPIT_TOKEN; a trusted token for a trusted run's jobs). A refusal (a job still running, a
skipped one, one that is not manual) is the API's 409 with its sentence, and exit status 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.settings import Settings

COMMANDS = ("retry", "play")


def add_jobs_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``retry`` and ``play`` subcommands."""
    env = "environment: SANDPIT_API_URL, SANDPIT_TOKEN"
    retry = sub.add_parser("retry", parents=[common], help="run a finished job of a run again (a new attempt)",
                           description="Run a finished job again as a new attempt; the jobs it let skip wait "
                                       f"again and run once it passes ({env}).")
    retry.add_argument("job", help="the job's id")
    play = sub.add_parser("play", parents=[common], help="start a manual job of a run",
                          description=f"Start a manual job (when: manual) ({env}).")
    play.add_argument("job", help="the job's id")


def jobs_command(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.remote import Client

    job = Client(settings).call("POST", f"/api/v1/jobs/{args.job}/{args.command}")
    print(f"job {job['id']} ({job['name']}): {job['status']}")
    return 0
