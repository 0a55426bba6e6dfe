"""The ``sandpit`` command's entry point, kept import-light on purpose.

``sandpit exec`` first asks a resident engine (``sandpit engine``, optional: see
``worker/cli/resident.py``) to run the job, through :mod:`worker.cli.resident_client`, which imports
nothing but C modules; when none serves this state dir (the usual case: no daemon is needed), or
it declines, the command runs in this process as before (:mod:`worker.cli.commands`). Importing
the commands costs ≈ 12 ms of start-up (``pathlib``, ``enum``, ``re`` and sandpit's own modules),
which a job a resident engine runs never pays.
"""

from __future__ import annotations

import os
import sys

from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["exec"] and argv[1:]:
        from worker.cli.resident_client import exec_through_resident

        status = exec_through_resident(argv[1:], os.environ)
        if status is not None:
            os._exit(status)  # as the in-process exec: nothing is left to flush or finalise
    from worker.cli.commands import main as run_command

    return run_command(argv)
