"""A service run's files, made once per run on this worker and copied into each job's workspace (adapter).

The executor asks :meth:`RunSources.source_for` before each job (outside the claim's
transaction, under the job's lease). A run with a recorded commit
(:mod:`pipelines.store.sources`) is fetched into this worker's mirror of its repository
(``<state_dir>/mirrors``, shared with an API on the same host: the web-hook's fetch warms it)
and checked out once per run and ``GIT_DEPTH`` into ``<state_dir>/sources/<run id>/depth-<n>``
(:mod:`pipelines.forges.checkout`; a job asking for ``GIT_SUBMODULE_STRATEGY`` gets a tree of
its own, its submodules from the repositories registered in the store, none from another
repository for an untrusted run); an uploaded tree is unpacked once into
``<state_dir>/sources/<run id>/archive`` (:mod:`pipelines.files.tarballs`). Each job then gets
its own copy in ``/workspace`` through the same seed as ``sandpit run``'s work tree
(:mod:`worker.sandbox.seed`: symlinks copied as links, never followed), so one job cannot change
what the next one sees. ``GIT_STRATEGY: none`` gives the job an empty workspace; a bad
``GIT_*`` value fails the job (``invalid_spec``) with the sentence saying why.

Concurrency: one thread makes a given tree while the others of this process wait for it; two
worker processes on one host may both make it, and the first rename into place wins. Trees of
runs that have ended are removed by :meth:`RunSources.sweep` (the worker's sweeper calls it).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipelines.files.tarballs import TarballRefused, unpack_tarball
from pipelines.forges.checkout import Checkout, SubmoduleRequest, checkout_commit, list_entries
from pipelines.forges.mirror import MirrorError
from pipelines.forges.strategy import GitOptions, git_options
from pipelines.forges.submodules import Registered, SubmoduleRefused, canonical_url
from pipelines.language.model import Job as PlannedJob
from pipelines.store.db import read_scope
from pipelines.store.models import Run
from pipelines.store.reads import read_run_row
from pipelines.store.repos import list_repositories
from pipelines.store.sources import SourceRecord, archive_bytes, ended_runs, run_source
from worker.errors import InvalidRequest, SandboxError
from worker.executor import WorkspaceSource

log = logging.getLogger("sandpit.worker")
_RUN_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_KNOWN_RUNS = 4096  # runs whose source (or lack of one) this process remembers
UNKNOWN_GRACE_S = 3600.0


@dataclass(frozen=True, slots=True)
class _RunTree:
    root: Path
    entries: tuple[str, ...]


class RunSources:
    """Materialised sources of this worker's runs (see the module docstring)."""

    def __init__(self, state_dir: Path, db: Engine) -> None:
        self.mirrors = state_dir / "mirrors"
        self.trees = state_dir / "sources"
        self.db = db
        self._lock = threading.Lock()
        self._records: OrderedDict[str, SourceRecord | None] = OrderedDict()
        self._made: dict[tuple[str, str], _RunTree] = {}
        self._making: dict[tuple[str, str], threading.Lock] = {}

    def source_for(self, run: Run, planned: PlannedJob) -> WorkspaceSource | None:
        """The files job ``planned`` of ``run`` starts with; None: an empty workspace."""
        record = self._record(run.id)
        if record is None:
            return None
        options = git_options(planned.env())
        if isinstance(options, str):
            raise InvalidRequest(options)
        if not options.checkout:
            return None
        variant = "archive" if record.kind == "archive" else options.variant
        tree = self._tree(run, variant, record, options)
        return WorkspaceSource(root=tree.root, files=tree.entries)

    def prime(self, session: Session, run: Run) -> None:
        """Read the run's source in ``session`` (the claim's transaction) unless it is known: a
        read transaction of its own per job (a new run each time, for one-job runs) cost 2 % of
        a busy worker's Python CPU."""
        with self._lock:
            if run.id in self._records:
                return
        self._remember(run.id, run_source(session, run.id))

    def _record(self, run_id: str) -> SourceRecord | None:
        with self._lock:
            if run_id in self._records:
                self._records.move_to_end(run_id)
                return self._records[run_id]
        with read_scope(self.db) as session:
            record = run_source(session, run_id)
        return self._remember(run_id, record)

    def _remember(self, run_id: str, record: SourceRecord | None) -> SourceRecord | None:
        with self._lock:
            self._records[run_id] = record
            while len(self._records) > _KNOWN_RUNS:
                self._records.popitem(last=False)
        return record

    def _tree(self, run: Run, variant: str, record: SourceRecord, options: GitOptions) -> _RunTree:
        run_id = run.id
        if not _RUN_ID.fullmatch(run_id):
            raise SandboxError(f"run id {run_id[:80]!r} cannot name a directory")
        key = (run_id, variant)
        with self._lock:
            made = self._made.get(key)
            if made is not None and made.root.is_dir():
                return made
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                made = self._made.get(key)
            if made is not None and made.root.is_dir():
                return made
            dest = self.trees / run_id / variant
            if dest.is_dir():
                made = _RunTree(dest, tuple(list_entries(dest)))
            elif record.kind == "archive":
                made = self._unpack(record, dest)
            else:
                began = time.monotonic()
                checkout = self._checkout(run, record, options, dest)
                made = _RunTree(checkout.root, checkout.entries)
                log.info("run %s: commit %s checked out (depth %d, %d files%s) in %.0f ms", run_id, record.sha[:12],
                         options.depth, checkout.files,
                         f", submodules {' '.join(checkout.submodules)}" if checkout.submodules else "",
                         (time.monotonic() - began) * 1000)
            with self._lock:
                self._made[key] = made
            return made

    def _checkout(self, run: Run, record: SourceRecord, options: GitOptions, dest: Path) -> Checkout:
        # a run whose repository was removed since keeps a mirror of its own
        mirror_name = record.repo_id or f"run-{run.id}"
        request = None
        if options.submodules.wanted:
            own = (record.repo_id or mirror_name) if run.trust != "trusted" else None
            request = SubmoduleRequest(options.submodules, self._registered(), own)
        try:
            return checkout_commit(self.mirrors, mirror_name, record.clone_url, record.sha, options.depth, dest,
                                   submodules=request)
        except SubmoduleRefused as exc:
            raise InvalidRequest(f"GIT_SUBMODULE_STRATEGY {options.submodules.strategy}: {exc}") from exc
        except MirrorError as exc:
            raise SandboxError(f"cannot check out commit {record.sha[:12]}: {exc}") from exc

    def _registered(self) -> Callable[[str], Registered | None]:
        """The repositories a submodule may come from, by canonical clone URL (read when a job
        asks for submodules, so a repository registered since is found)."""
        with read_scope(self.db) as session:
            known = {canonical_url(r.clone_url): Registered(r.id, r.clone_url) for r in list_repositories(session)}
        return known.get

    def _unpack(self, record: SourceRecord, dest: Path) -> _RunTree:
        with read_scope(self.db) as session:
            data = archive_bytes(session, record.archive_sha256 or "")
        if data is None:
            raise SandboxError(f"the run's uploaded tree {record.archive_sha256} is not in the store")
        temporary = dest.with_name(f".{dest.name}.{threading.get_ident()}.tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True, mode=0o700)
        try:
            unpack_tarball(data, temporary)
            try:
                temporary.rename(dest)
            except OSError:
                if not dest.is_dir():
                    raise
                shutil.rmtree(temporary, ignore_errors=True)
        except TarballRefused as exc:
            shutil.rmtree(temporary, ignore_errors=True)
            raise InvalidRequest(str(exc)) from exc
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return _RunTree(dest, tuple(list_entries(dest)))

    def sweep(self) -> list[str]:
        """Remove the trees of runs that have ended (or that the store does not know, once their
        directory is an hour old); the run ids."""
        try:
            names = [p.name for p in self.trees.iterdir() if _RUN_ID.fullmatch(p.name)]
        except FileNotFoundError:
            return []
        if not names:
            return []
        with read_scope(self.db) as session:
            gone = ended_runs(session, names)
            # a tree of a run this store does not know is left for a while: another worker with
            # another database may share the state dir (tests do), and its run is not over
            young = {r for r in gone if _age_s(self.trees / r) < UNKNOWN_GRACE_S}
            gone -= {r for r in young if read_run_row(session, r) is None}
        for run_id in sorted(gone):
            with self._lock:
                for key in [k for k in self._made if k[0] == run_id]:
                    del self._made[key]
                    self._making.pop(key, None)
                self._records.pop(run_id, None)
            # rmtree works through fds and never follows the tree's symlinks (job data)
            shutil.rmtree(self.trees / run_id, ignore_errors=True)
            log.info("removed the checked-out source of ended run %s", run_id)
        return sorted(gone)


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
