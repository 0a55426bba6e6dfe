"""``sandpit artifacts`` and ``sandpit gc``: what local runs and ``exec`` kept on this host (entry points)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from worker.settings import Settings
from worker.terminal import quote_for_terminal


def add_local_parsers(sub: Any, common: Any, helped: Any) -> None:
    art = sub.add_parser("artifacts", parents=[common],
                         help="copy the artifacts a local run or exec kept into a folder",
                         description="Copy the artifacts of a local run (every job's), of one job, or of a `sandpit "
                                     "exec`, out of the content-addressed store into a folder, under their own paths. "
                                     "Symlinks in the folder are never followed; existing files are not replaced "
                                     "unless --force.")
    art.add_argument("id", metavar="RUN|JOB",
                     help="a run id, a job id (as `sandpit run` and `exec --json` print them), a unique prefix of "
                          "one, or `last` (the newest local run)")
    art.add_argument("-o", "--output", default=".", metavar="DIR", help=helped("where to put them", "."))
    art.add_argument("--force", action="store_true", help=helped("replace files that are in the way", "off"))
    art.add_argument("--list", action="store_true", help=helped("only list them (path, size, sha256)", "off"))
    gc = sub.add_parser("gc", parents=[common], help="remove old logs, artifacts and caches of local runs and exec",
                        description="Remove what local runs and `sandpit exec` kept past its retention (environment: "
                                    "SANDPIT_RETENTION, default 7d; SANDPIT_RETENTION_SIZE, default 10G; "
                                    "SANDPIT_CACHE_SIZE, default 5G). `run` and `exec` do this by themselves at "
                                    "most once per SANDPIT_GC_EVERY (default 10m; 0: never). Where this state dir "
                                    "serves the service's database (SANDPIT_DATABASE_URL, else <state>/sandpit.db), "
                                    "then also what the service keeps past its retention: old commit statuses and "
                                    "web-hook deliveries, uploaded trees, this host's copies of expired files, trees "
                                    "of ended runs, mirrors of removed or idle repositories, services' logs "
                                    "(docs/deployment.md, Retention); workers and the API do that by themselves.")
    gc.add_argument("--auto", action="store_true",
                    help=helped("quiet, and nothing if a collection is running; what `sandpit exec` starts in the "
                                "background", "off"))


def artifacts_command(args: Any, settings: Settings) -> int:
    from worker.local.artifact_export import ExportRefused, export, plan_export
    from worker.local.records import find

    found = find(settings.state_dir, args.id)
    if isinstance(found, str):
        print(f"sandpit: {quote_for_terminal(found, quotes=False)}", file=sys.stderr)
        return 1
    record, jobs = found
    files = [f for job in jobs for f in job.artifacts]
    if not files:
        names = ", ".join(quote_for_terminal(j.name) for j in jobs) or "nothing"
        print(f"sandpit: {record.kind} {record.id} kept no artifacts ({names})", file=sys.stderr)
        return 1
    if args.list:
        for job in jobs:
            for f in job.artifacts:
                print(f"{quote_for_terminal(job.name)}\t{quote_for_terminal(f.path)}\t{f.size}\t{f.sha256}")
        return 0
    store = settings.state_dir / "artifacts"
    dest = Path(args.output)
    try:
        written = export(store, plan_export(store, files, dest, args.force), dest, args.force)
    except ExportRefused as exc:
        print(f"sandpit: nothing copied: {quote_for_terminal(str(exc), quotes=False)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sandpit: cannot write into {quote_for_terminal(str(dest))}: {exc.strerror}", file=sys.stderr)
        return 1
    for path in written:
        print(quote_for_terminal(str(path)))
    return 0


def gc_command(args: Any, settings: Settings) -> int:

    from worker.local.retention import collect

    done = collect(settings, wait=not args.auto)
    if args.auto:
        return 0
    if done is None:
        print("sandpit: another collection is running; nothing done", file=sys.stderr)
        return 0
    for note in done.notes:
        print(note)
    print(f"removed {done.records} record(s), {done.logs} log(s), {done.files} stored file(s), "
          f"{done.cache_entries} cache entr{'y' if done.cache_entries == 1 else 'ies'}, {done.scratch} dead run "
          f"store(s): {done.bytes_freed / 1e6:.1f} MB freed")
    return _service_gc(settings)


def _service_gc(settings: Settings) -> int:
    """The service's collection for this state dir, when it serves a database (pipelines/retention.py)."""
    import datetime as dt
    import os

    from sqlalchemy.exc import SQLAlchemyError

    from pipelines.retention import RetentionConfigError, RetentionSettings, collect
    from pipelines.store.db import make_engine, migrate
    from pipelines.store.errors import StoreError

    url = settings.database_url
    if not url:
        default = settings.state_dir / "sandpit.db"
        if not default.exists():
            return 0
        url = f"sqlite:///{default}"
    try:
        retention = RetentionSettings.from_env(os.environ)
    except RetentionConfigError as exc:
        print(f"sandpit: {exc}", file=sys.stderr)
        return 2
    try:
        migrate(url)
        db = make_engine(url)
        try:
            done = collect(db, settings.state_dir, retention, dt.datetime.now(dt.UTC), wait=True)
        finally:
            db.dispose()
    except (StoreError, SQLAlchemyError) as exc:  # the local part is done; the service's waits for next time
        print(f"sandpit: the service's database did not answer; nothing of the service's was collected "
              f"({quote_for_terminal(str(exc).splitlines()[0], quotes=False)})", file=sys.stderr)
        return 0
    if done is not None:
        print(f"service: {done.summary()}")
    return 0
