"""Local mode: ``sandpit run`` (``run.py``), the records of local runs and ``exec`` in the state
dir (``records.py``, ``kept.py``), the local ``cache:`` (``cache.py``), their retention
(``retention.py``) and ``sandpit artifacts``' copy-out (``artifact_export.py``). Nothing here is
imported by the service."""
