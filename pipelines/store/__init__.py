"""The run store: SQL tables for runs, jobs, attempts, artifacts, caches and the outbox, their
state transitions and migrations. The one place that opens database sessions.

- :mod:`~pipelines.store.db`: engines (SQLite WAL by default, PostgreSQL), sessions, ``migrate``.
- :mod:`~pipelines.store.transitions`: create, claim, renew, finish, expire, cancel, play.
- :mod:`~pipelines.store.advance`: the pure GitLab rules (what runs next, run status, retry).
- :mod:`~pipelines.store.outbox`: what to publish to the broker, and the stale-queue sweeper.
- :mod:`~pipelines.store.retention`: artifact expiry and the trust-separated cache.
- :mod:`~pipelines.store.errors`: ``StoreError`` and its tree.

See docs/store.md for the tables, the state machine and how a worker task uses them.
"""
