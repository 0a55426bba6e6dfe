"""sandpit's worker side, in rooms by role (docs/architecture.md draws them and one job's way):

- ``worker/cli/``: the ``sandpit`` command: argument parsing (``exec``'s options table in
  ``exec_options.py``), one module per group of commands, what they print (``doctor.py`` too);
- ``worker/local/``: local mode: ``sandpit run`` (``run.py``), the records of local runs and
  ``exec`` (``records.py``, ``kept.py``), their cache, retention and artifact copy-out;
- ``worker/service/``: the Celery app and its one task, the service context a worker process owns
  (sweeper, publisher, admission budget), presence and heartbeat, ``sandpit up``'s children;
- ``worker/sandbox/``: the engine: one request, one container, torn down.

The modules left at this level are what more than one room uses, so none of the rooms owns them:
the executor that runs one stored job (local mode and the service, so both follow the same rules),
the job request (``jobs.py``), caches, the job's files and their transports, the settings, the
job result record and its ``record`` helper, errors, JUnit reports, the live log stream in Redis
(``logstream.py``: the upload outbox writes to it too), the terminal's quoting and colour, the work
tree. Arrows point down only: ``cli`` above ``local`` and ``service``, those above these
shared modules, those above ``sandbox``.
"""

#: ``if TYPE_CHECKING:`` guards the imports only type checkers need (annotations are strings here:
#: ``from __future__ import annotations``). The constant is this ``False`` rather than
#: ``typing.TYPE_CHECKING`` because importing ``typing`` costs about 5 ms (25 ms with what it pulls
#: in) on these machines, a tenth of a whole ``sandpit exec``, which imports no ``typing`` at all;
#: mypy and ruff treat any name ``TYPE_CHECKING`` as true while checking. Modules import it from here.
TYPE_CHECKING = False
