"""Small host-file adapters that the API, the worker and the store all use: ``locks`` (``flock``
leases that die with their holder) and ``digests`` (a stored file checked against its sha256,
once per file version). They live here, below both ``api`` and ``worker``, so neither has to
keep a copy of its own.
"""
