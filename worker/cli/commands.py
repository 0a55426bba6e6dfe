"""The ``sandpit`` command's commands: parse arguments, call one function, map the result to an exit status.

Exit statuses of ``sandpit exec``: the command's own (128+N when killed by signal N), 125 when the
sandbox itself could not be made (bad request, unbuilt image, no runtime, infra failure).
"""

from __future__ import annotations

import os
import sys

from worker.cli.exec_options import SANDBOX_FAILED, add_exec_parser, env_pair, parse_exec_fast
from worker.errors import SandpitError
from worker.settings import Settings

__all__ = ["SANDBOX_FAILED", "build_parser", "main", "parse_exec_fast"]

from worker import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

def _helped(text: str, default: object = None, env: str | None = None) -> str:
    """An option's help with its default and the environment variable that sets it, in one form
    everywhere (``(default: 256M; environment: SANDPIT_X)``)."""
    parts = [] if default is None else [f"default: {default}"]
    if env:
        parts.append(f"environment: {env}")
    text = text.replace("%", "%%")  # argparse formats help with %
    return f"{text} ({'; '.join(parts)})" if parts else text


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``only="exec"``) just what ``exec`` needs: building the 15 sub-parsers
    costs several ms of start-up that ``sandpit exec`` should not pay. ``only`` naming another
    command leaves out the pipeline language's options unless it is ``lint`` or ``run``: importing
    the language (≈ 250 ms) is for the commands that plan a pipeline.

    ``-v`` is accepted before and after the sub-command (a parent parser on each; ``SUPPRESS`` so
    the sub-command's absent ``-v`` does not undo the top level's)."""
    import argparse

    p = argparse.ArgumentParser(prog="sandpit", description="CI jobs in ephemeral, locked-down containers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what sandpit does to stderr (default: off)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what sandpit does to stderr (default: off)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_exec_parser(sub, common, _helped)
    if only == "exec":
        return p
    _add_others(sub, common, language=only in (None, "lint", "run"))
    return p


def _add_others(sub: Any, common: argparse.ArgumentParser, language: bool = True) -> None:
    import argparse

    run = sub.add_parser("run", parents=[common], help="run a whole pipeline on this machine (local mode)",
                         description="Run a whole pipeline on this machine, its jobs as the DAG allows, the "
                                     "repository's work tree in every job's /workspace.")
    run.add_argument("file", help="the pipeline file (.gitlab-ci.yml)")
    run.add_argument("--var", action="append", default=[], type=env_pair, metavar="K=V",
                     help=_helped("a pipeline variable; may be repeated", "none"))
    run.add_argument("--json", action="store_true",
                     help=_helped("print the run record on stdout (the jobs' output goes to stderr)", "off"))
    run.add_argument("--job", action="append", default=[], metavar="NAME",
                     help=_helped("run only the job NAME (a base name takes all its parallel/matrix instances) "
                                  "and the jobs it needs; may be repeated", "every job"))
    run.add_argument("--manual", action="append", default=[], metavar="NAME",
                     help=_helped("also run the manual job NAME (a base name takes all its instances; '*' every "
                                  "manual job); may be repeated", "manual jobs wait, as on GitLab"))
    run.add_argument("--policy", choices=("trusted", "untrusted"), default="trusted",
                     help=_helped("the trust level whose caps and defaults apply", "trusted",
                                  "SANDPIT_POLICY_*"))
    run.add_argument("--color", "--colour", choices=("auto", "always", "never"), default="auto",
                     help=_helped("colour in sandpit's lines and the jobs' output; auto: only on a "
                                  "terminal", "auto", "NO_COLOR or TERM=dumb turn auto off"))
    run.add_argument("-t", "--timestamps", action="store_true",
                     help=_helped("start every line with the time it was printed (UTC)", "off"))
    if language:
        _add_pipeline_inputs(run)

    lint = sub.add_parser("lint", parents=[common], help="validate a pipeline file and show its plan",
                          description="Validate a pipeline file and show its plan. Exit status: 0 when it "
                                      "plans (warnings allowed), 1 on errors, 2 on unreadable file or bad "
                                      "arguments.")
    try:
        if not language:
            raise ImportError("not needed: another command is parsed")
        from pipelines.language.cli import add_lint_arguments
    except ImportError:
        lint.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_lint_arguments(lint)

    img = sub.add_parser("images", parents=[common], help="manage the image store")
    isub = img.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    b = isub.add_parser("build", parents=[common], help="build image recipes from images/")
    b.add_argument("names", nargs="*", help="recipes to build (environment: SANDPIT_IMAGES_DIR holds them)")
    b.add_argument("--all", action="store_true", help=_helped("build every recipe", "off"))
    pl = isub.add_parser("pull", parents=[common], help="pull an image from its registry (or its mirror)",
                         description="Pull REF (name[:tag][@digest]; Docker Hub's library/ by default) into the "
                                     "store, showing each layer's progress. Only registries in SANDPIT_REGISTRIES; "
                                     "mirrors and insecure registries from SANDPIT_REGISTRIES_CONF, credentials "
                                     "from SANDPIT_REGISTRY_AUTH.")
    pl.add_argument("references", nargs="+", metavar="REF", help="image references")
    im = isub.add_parser("import", parents=[common], help="import a `docker save` archive or an OCI archive",
                         description="Store the images of a `docker save` archive or an OCI archive (oci-archive), "
                                     "under the names the archive gives them or --tag.")
    im.add_argument("file", help="the archive (.tar)")
    im.add_argument("--tag", default=None, metavar="REF", help=_helped("the name to store it under", "its own"))
    isub.add_parser("list", parents=[common], help="list images: recipes built here, pulled and imported ones")
    pr = isub.add_parser("prune", parents=[common], help="remove what no image reference holds",
                         description="Remove manifests and layers no reference holds; with a cap, the least "
                                     "recently used pulled images first (layers of running jobs are kept).")
    pr.add_argument("--max-size", default=None, metavar="SIZE",
                    help=_helped("keep pulled layers under SIZE (K/M/G)", "no cap", "SANDPIT_IMAGES_MAX_SIZE"))
    rm = isub.add_parser("rm", parents=[common], help="remove an image (a recipe's build or a pulled name)")
    rm.add_argument("names", nargs="+", help="images to remove")

    wk = sub.add_parser("worker", parents=[common], help="start a worker (Celery, threads pool) for the service")
    wk.add_argument("--concurrency", type=int, default=None,
                    help=_helped("jobs at once (the memory/cpu budget still applies)", "the host's cores"))
    wk.add_argument("--processes", type=int, default=1,
                    help=_helped("processes the job slots are spread over (each its own interpreter; "
                                 "worker/service/processes.py)", "1"))

    eng = sub.add_parser("engine", parents=[common], help="keep an engine resident for `sandpit exec` (optional)",
                         description="Serve `sandpit exec` from this process: a client with the same settings "
                                     "(SANDPIT_*, PATH) runs its job here, warm, instead of starting an engine of "
                                     "its own. exec needs none: without it (or with SANDPIT_RESIDENT=off) it "
                                     "runs the job in its own process. Stops on SIGTERM, SIGINT or SIGHUP, after "
                                     "cancelling the jobs it runs.")
    eng.add_argument("--idle", default="0", metavar="DURATION",
                     help=_helped("stop after this long with no job (s/m/h; 0: never)", "0"))

    upp = sub.add_parser("up", parents=[common],
                         help="start the service here: redis (unless configured), a worker, the API",
                         description="Start the service on this machine. Its database, token and queue live "
                                     "in the state dir (environment: SANDPIT_STATE_DIR), so two instances "
                                     "with two state dirs share nothing.")
    upp.add_argument("--host", default="127.0.0.1", help=_helped("the API's address", "127.0.0.1"))
    upp.add_argument("--port", type=int, default=8000, help=_helped("the API's port", 8000))
    upp.add_argument("--concurrency", type=int, default=None,
                     help=_helped("the worker's jobs at once", "the host's cores"))
    upp.add_argument("--processes", type=int, default=1,
                     help=_helped("processes the worker's job slots are spread over (`sandpit worker --processes`)",
                                  "1"))
    client_env = "SANDPIT_API_URL, SANDPIT_TOKEN"
    sb = sub.add_parser("submit", parents=[common], help="send a pipeline to a running service",
                        description=f"Send a pipeline to a running service (environment: {client_env}).")
    sb.add_argument("file", help="the pipeline file")
    sb.add_argument("--var", action="append", default=[], type=env_pair, metavar="K=V",
                    help=_helped("a pipeline variable; may be repeated", "none"))
    sb.add_argument("--follow", action="store_true", help=_helped("stream the jobs' logs until the run ends", "off"))
    sb.add_argument("--no-tree", action="store_true", help=_helped(
        "send the pipeline file only, not the files of the work tree it lives in (every job's /workspace)", "off"))
    lg = sub.add_parser("logs", parents=[common], help="print (or follow) a job's log from a running service",
                        description=f"Print a job's log (environment: {client_env}).")
    lg.add_argument("job", help="the job's id")
    lg.add_argument("--follow", action="store_true", help=_helped("keep printing until the job ends", "off"))
    cn = sub.add_parser("cancel", parents=[common], help="cancel a run on a running service",
                        description=f"Cancel a run (environment: {client_env}).")
    cn.add_argument("run", help="the run's id")
    from worker.cli.jobs import add_jobs_parsers

    add_jobs_parsers(sub, common)
    from worker.cli.repos import add_repos_parser

    add_repos_parser(sub, common)
    from worker.cli.workers import add_workers_parser

    add_workers_parser(sub, common)

    rp = sub.add_parser("reap", parents=[common], help="remove what dead sandpit processes left behind")
    rp.add_argument("--all", action="store_true",
                    help=_helped("also remove the host's network side: the pool of ready egress namespaces, "
                                 "the bridge and the nft tables (running egress jobs lose their network)", "off"))
    sub.add_parser("host-prep", parents=[common], help="prepare this host once per boot (cgroups, scratch disk)")
    sub.add_parser("doctor", parents=[common], help="check what jobs need on this host and say what is broken",
                   description="Check the runtimes, the host preparation, the job-disk filesystem, the images, "
                               "the egress network and its DNS, and Redis and the database when configured "
                               "(SANDPIT_REDIS_URL, SANDPIT_DATABASE_URL). Exit status 1 when something a job "
                               "needs is broken.")
    from worker.cli.local import add_local_parsers

    add_local_parsers(sub, common, _helped)


def _add_pipeline_inputs(run: argparse.ArgumentParser) -> None:
    try:
        from pipelines.language.cli import add_pipeline_inputs
    except ImportError:
        return
    add_pipeline_inputs(run, ref="the checked-out branch", sha="the checked-out commit")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args: Any = parse_exec_fast(argv[1:]) if argv[:1] == ["exec"] else None
    if args is None:
        fast = argv[:1] == ["exec"] and "-h" not in argv[: argv.index("--") if "--" in argv else len(argv)]
        command = next((word for word in argv if not word.startswith("-")), None)
        args = build_parser("exec" if fast else command).parse_args(argv)
    if getattr(args, "verbose", False):
        args.verbose = True
        _verbose_logging()
    else:
        args.verbose = False
    try:
        settings = Settings.from_env(os.environ)
        if args.command == "exec":
            # lazy, as every command's module here: each command loads only what it needs (exec the
            # engine, not the language or the store; tests/unit/test_exec_imports.py holds it to that)
            from worker.cli.exec import exec_command

            return exec_command(args, settings)
        if args.command == "run":
            from pathlib import Path

            from worker.local.run import RunOptions, run_pipeline

            options = RunOptions(jobs=tuple(args.job), manual=tuple(args.manual), trigger=args.trigger,
                                 ref=args.ref, tag=args.tag, sha=args.sha,
                                 changed=None if args.changed is None else tuple(args.changed),
                                 color=args.color, timestamps=args.timestamps)
            return run_pipeline(settings, Path(args.file), dict(args.var), as_json=args.json, trust=args.policy,
                                options=options)
        if args.command == "lint":
            return _lint(args, settings)
        if args.command == "images":
            return _images(args, settings)
        if args.command == "engine":
            from worker.cli.resident import serve
            from worker.sandbox.units import parse_duration

            if not args.verbose:
                _engine_logging()
            try:
                idle_s = 0.0 if args.idle.strip() in ("0", "0s") else parse_duration(args.idle)
            except ValueError as exc:
                print(f"sandpit: --idle: {exc}", file=sys.stderr)
                return 2
            return serve(settings, os.environ, idle_s)
        if args.command == "worker":
            import warnings

            from celery.platforms import SecurityWarning

            from worker.service.celery_app import app

            # root is required: jobs need user namespaces, cgroups, mounts and network namespaces
            warnings.filterwarnings("ignore", category=SecurityWarning)

            concurrency = args.concurrency or os.cpu_count() or 1
            if args.processes != 1:
                from worker.service.processes import run_processes

                return run_processes(concurrency, args.processes, args.verbose)
            from worker.service.processes import follow_parent

            if not follow_parent(os.environ):
                print("sandpit: this worker process's supervisor is gone; not starting", file=sys.stderr)
                return 1
            # app.Worker rather than app.worker_main: worker_main drops the worker's exit code, so a
            # worker stopped by an unrecoverable error exited 0 and its supervisor saw a clean stop
            worker = app.Worker(pool="threads", concurrency=concurrency, queues=["sandpit.jobs"],
                                without_gossip=True, without_mingle=True, without_heartbeat=True,
                                loglevel="INFO" if args.verbose else "WARNING",
                                # no banner unless -v: `sandpit up` prints what to do, and that stays last
                                quiet=not args.verbose)
            worker.start()
            return int(worker.exitcode or 0)
        if args.command in ("up", "submit", "logs", "cancel"):
            from pathlib import Path

            from worker.cli import remote as cli_service
            if args.command == "up":
                if args.processes != 1:  # refused here, not by a worker restarted with back-off for ever
                    from worker.service.processes import split

                    try:
                        split(args.concurrency or os.cpu_count() or 1, args.processes)
                    except SandpitError as exc:
                        print(f"sandpit: {exc}", file=sys.stderr)
                        return 2
                return cli_service.up(settings, args.host, args.port, args.concurrency, args.processes)
            if args.command == "submit":
                return cli_service.submit(settings, Path(args.file), dict(args.var), args.follow,
                                          tree=not args.no_tree)
            if args.command == "logs":
                return cli_service.logs(settings, args.job, args.follow)
            return cli_service.cancel(settings, args.run)
        if args.command == "workers":
            from worker.cli.workers import workers_command

            return workers_command(args, settings)
        if args.command in ("retry", "play"):
            from worker.cli.jobs import jobs_command

            return jobs_command(args, settings)
        if args.command in ("repos", "approve"):
            from worker.cli.repos import repos_command

            return repos_command(args, settings)
        if args.command == "reap":
            from worker.sandbox.reaper import reap
            from worker.terminal import quote_lines

            for line in reap(settings):
                print(f"reaped {quote_lines(line)}")
            if args.all:
                from worker.sandbox.network import teardown_host

                teardown_host(settings.network())
                print("removed the network host side (pool, bridge, nft tables)")
            return 0
        if args.command == "host-prep":
            return _host_prep(settings)
        if args.command in ("artifacts", "gc"):
            from worker.cli import local as cli_local
            return cli_local.artifacts_command(args, settings) if args.command == "artifacts" else \
                cli_local.gc_command(args, settings)
        if args.command == "doctor":
            return _doctor(settings)
    except SandpitError as exc:
        from worker.terminal import quote_lines  # errors may carry a pipeline's or a job's text

        print(f"sandpit: {quote_lines(str(exc))}", file=sys.stderr)
        return SANDBOX_FAILED
    except KeyboardInterrupt:
        return 130
    return 2


def _engine_logging() -> None:
    """``sandpit engine`` without ``-v``: its start, its stop and what it refused, one line each."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("sandpit engine: %(message)s"))
    logger = logging.getLogger("sandpit.engine")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def _verbose_logging() -> None:
    """``-v``: sandpit's own steps at INFO; the libraries under it (alembic names every plugin it
    loads, SQLAlchemy every pool event) only from WARNING, so the steps stay readable."""
    import logging

    logging.basicConfig(level=logging.INFO, format="sandpit: %(message)s", stream=sys.stderr)
    for name in ("alembic", "sqlalchemy", "celery", "kombu", "amqp", "httpx", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _lint(args: Any, settings: Settings) -> int:
    try:
        from pipelines.language.cli import lint_parsed
    except ImportError:
        print("sandpit: lint is not available in this build", file=sys.stderr)
        return 2
    from worker.sandbox.images import ImageStore

    # the references the recipes provide, so lint warns where run would refuse an image; none when
    # images may come from a registry or the store holds pulled ones (lint cannot know those)
    store = ImageStore(settings.state_dir, settings.images_dir)
    images = None if settings.registries or store.pulled.names() else store.provided()
    return lint_parsed(args, sys.stdout, sys.stderr, images=images)


def _images(args: Any, settings: Settings) -> int:
    from worker.sandbox.images import ImageStore, print_progress
    from worker.terminal import quote_lines

    store = ImageStore(settings.state_dir, settings.images_dir, registry=settings.registry())
    if args.images_command == "build":
        names = store.recipe_names() if args.all else args.names
        if not names:
            print("sandpit: name an image to build, or --all", file=sys.stderr)
            return 2
        for name in names:
            image, built = store.build(name, print_progress)
            state = "built" if built else "up to date"
            print(f"{name}\t{image.key[:12]}\t{state}")
        return 0
    if args.images_command == "pull":
        for reference in args.references:
            image = store.pull(reference, lambda line: print_progress(quote_lines(line)))
            print(f"{image.name}\t{image.digest}")
        return 0
    if args.images_command == "import":
        from pathlib import Path

        for image in store.import_archive(Path(args.file), args.tag, lambda line: print_progress(quote_lines(line))):
            print(f"{image.name}\t{image.digest}")
        return 0
    if args.images_command == "list":
        import time

        print("NAME\tSOURCE\tID\tSIZE\tSTATE")
        for image in store.list():
            current = "current" if store.is_current(image.name) else "stale (recipe changed)"
            print(f"{image.name}\trecipe\t{image.key[:12]}\t{image.size / 1e6:.0f}MB\t{current}")
        for reference, digest, size, used, source in store.pulled_entries():
            ago = time.strftime("%Y-%m-%d %H:%M", time.gmtime(used))
            shown = f"{size / 1e6:.0f}MB" if size >= 0 else "?"
            print(f"{quote_lines(reference)}\t{source}\t{digest[:19]}\t{shown}\tlast used {ago} UTC")
        return 0
    if args.images_command == "prune":
        from worker.sandbox.units import parse_size

        try:
            cap = parse_size(args.max_size) if args.max_size else None
        except ValueError as exc:
            print(f"sandpit: --max-size: {exc}", file=sys.stderr)
            return 2
        report = store.prune(max_bytes=cap)
        for name in report.names:
            print(f"evicted {quote_lines(name)} (least recently used, over the cap)")
        for key in report.layers:
            print(f"removed layer {key[:12]}")
        for key in report.busy:
            print(f"kept layer {key[:12]}: a running job uses it")
        print(f"freed {report.freed_bytes / 1e6:.0f}MB ({len(report.manifests)} manifests, "
              f"{len(report.layers)} layers)")
        return 0
    from worker.sandbox.rootfs import drop_layer_views

    for name in args.names:
        image = store.get(name, policy="never")
        if image.source == "recipe":
            drop_layer_views(settings.run_dir, image.key)
        store.remove(name)
        print(f"removed {quote_lines(name)}")
    return 0


def _host_prep(settings: Settings) -> int:
    """``sandpit host-prep`` (worker/sandbox/host_prep.py), then the doctor's checks."""
    from worker.sandbox.host_prep import prepare_host_once

    report = prepare_host_once(settings)
    for line in report.done:
        print(line)
    for warning in report.warnings:
        print(f"sandpit: warning: {warning}", file=sys.stderr)
    return _doctor(settings)


def _doctor(settings: Settings) -> int:
    """``sandpit doctor`` (worker/cli/doctor.py): every check with what to do; 1 if a job would fail."""
    from worker.cli.doctor import print_checks, run_checks

    return print_checks(run_checks(settings), sys.stdout)
