"""The names of a job's services on the host (pure).

A service container is ``sandpit-<job id>.svc<N>``: the ``.`` cannot appear in a job id (lowercase
letters, digits and ``-``), so no job id is ever mistaken for a service of another job, and the
reaper and ``leftovers()`` find the job a container belongs to by cutting at it. Its cgroup is
``svc<N>`` under the job's cgroup (so the job's limits cap it), its bundle ``<job dir>/svc<N>``, its
upper dir ``<job disk>/svc<N>``, its log ``<logs>/<job id>.svc<N>.jsonl``: everything under what
the job already owns, so what tears the job down (and reaps a dead job) reaches it too.

>>> container_id("6885fcfd0ec5", 0), job_of_container("sandpit-6885fcfd0ec5.svc0")
('sandpit-6885fcfd0ec5.svc0', '6885fcfd0ec5')
>>> job_of_container("sandpit-6885fcfd0ec5")
'6885fcfd0ec5'
"""

from __future__ import annotations


def container_id(job_id: str, index: int) -> str:
    return f"sandpit-{job_id}.svc{index}"


def part_name(index: int) -> str:
    """The name of service ``index``'s cgroup (under the job's), bundle dir and disk dir."""
    return f"svc{index}"


def log_name(job_id: str, index: int) -> str:
    return f"{job_id}.svc{index}.jsonl"


def job_of_container(container: str) -> str:
    """The job id a container of sandpit's belongs to: its own, or the job a service runs beside."""
    return container.removeprefix("sandpit-").partition(".")[0]
