"""sandpit's worker side: the CLI, the Celery service, and the sandbox engine they share."""

#: ``if TYPE_CHECKING:`` guards the imports only type checkers need (annotations are strings here:
#: ``from __future__ import annotations``). The constant is this ``False`` rather than
#: ``typing.TYPE_CHECKING`` because importing ``typing`` costs about 5 ms (25 ms with what it pulls
#: in) on these machines, a tenth of a whole ``sandpit exec``, which imports no ``typing`` at all;
#: mypy and ruff treat any name ``TYPE_CHECKING`` as true while checking. Modules import it from here.
TYPE_CHECKING = False
