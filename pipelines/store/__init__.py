"""The run store: SQL tables for runs, jobs, attempts, artifacts, caches and the outbox, their
state transitions and migrations. The one place that opens database sessions, and the one place
that writes SQL: every other room calls the named functions below, never builds a query
(tests/unit/store/test_sql_ownership.py reads the rest of the tree to hold that).

- :mod:`~pipelines.store.db`: engines (SQLite WAL by default, PostgreSQL), sessions, ``migrate``.
- :mod:`~pipelines.store.statements`: every prepared statement (the one write path).
- :mod:`~pipelines.store.reads`: what the API and the worker read (runs, jobs whole, artifacts).
- :mod:`~pipelines.store.transitions`: create, claim, renew, finish, expire, cancel, play.
- :mod:`~pipelines.store.advance` / :mod:`~pipelines.store.frontier`: the pure GitLab rules
  (what runs next, run status, retry) and their incremental form; :mod:`~pipelines.store.progress`
  runs the frontier over the rows.
- :mod:`~pipelines.store.spec`: a planned job as JSON, and the stored form a run's rows keep.
- :mod:`~pipelines.store.outbox`: what to publish to the broker, and the stale-queue sweeper.
- :mod:`~pipelines.store.retention`: artifact expiry and the trust-separated cache.
- :mod:`~pipelines.store.inflight`, :mod:`~pipelines.store.repos`: runs in flight per submitter;
  forge repositories and their web-hook deliveries.
- :mod:`~pipelines.store.errors`: ``StoreError`` and its tree.

See docs/store.md for the tables, the state machine and how a worker task uses them.
"""
