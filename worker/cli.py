"""The ``sandpit`` command: parse arguments, call one function, map the result to an exit status.

Exit statuses of ``sandpit exec``: the command's own (128+N when killed by signal N), 125 when the
sandbox itself could not be made (bad request, unbuilt image, no runtime, infra failure).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from worker.errors import SandpitError
from worker.settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

SANDBOX_FAILED = 125

#: ``sandpit exec``'s options: name → (attribute, default, allowed values or None); ``append`` ones
#: collect into lists, ``flag`` ones take no value.
EXEC_OPTIONS: dict[str, tuple[str, str | None, tuple[str, ...] | None]] = {
    "--image": ("image", "debian", None),
    "--memory": ("memory", "256M", None),
    "--cpus": ("cpus", "1", None),
    "--pids": ("pids", "128", None),
    "--disk": ("disk", "1G", None),
    "--timeout": ("timeout", "30s", None),
    "--log-limit": ("log_limit", "4M", None),
    "--network": ("network", "none", ("none", "egress")),
    "--runtime": ("runtime", None, ("crun", "runc", "runsc")),
    "--profile": ("profile", "default", ("default", "strict")),
    "--workdir": ("workdir", "/workspace", None),
}
EXEC_APPEND = {"--env": "env", "--artifact": "artifact"}
EXEC_FLAGS = {"--json": "json"}


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not K=V")
    return name, value


def parse_exec_fast(rest: Sequence[str]) -> SimpleNamespace | None:
    """``sandpit exec``'s arguments (after ``exec``) without argparse, whose import and parser cost
    about 8 ms of a 50 ms command. Anything unusual (help, an unknown or abbreviated option, a bad
    value, a missing one) returns None: argparse then parses it and says what is wrong, so messages
    stay argparse's own.

    >>> ns = parse_exec_fast(["--memory=64M", "--env", "A=1", "--", "sh", "-c", "true"])
    >>> ns.memory, ns.env, ns.argv, ns.cpus
    ('64M', [('A', '1')], ['--', 'sh', '-c', 'true'], '1')
    >>> parse_exec_fast(["--mem", "64M", "true"]) is None
    True
    """
    ns = SimpleNamespace(command="exec", verbose=False, argv=[], env=[], artifact=[], json=False,
                         **{attr: default for attr, default, _ in EXEC_OPTIONS.values()})
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--" or not word.startswith("-"):
            ns.argv = list(rest[i:])
            return ns
        if word in EXEC_FLAGS:
            setattr(ns, EXEC_FLAGS[word], True)
            i += 1
            continue
        name, eq, value = word.partition("=")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                return None
            value = rest[i + 1]
            i += 1
        i += 1
        if name in EXEC_APPEND:
            if name == "--env":
                key, sep, val = value.partition("=")
                if not sep or not key:
                    return None
                ns.env.append((key, val))
            else:
                ns.artifact.append(value)
            continue
        if name not in EXEC_OPTIONS:
            return None
        attr, _default, choices = EXEC_OPTIONS[name]
        if choices is not None and value not in choices:
            return None
        setattr(ns, attr, value)
    return ns


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``only="exec"``) just what ``exec`` needs: building the 15 sub-parsers
    costs several ms of start-up that ``sandpit exec`` should not pay."""
    import argparse

    p = argparse.ArgumentParser(prog="sandpit", description="CI jobs in ephemeral, locked-down containers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what sandpit does to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    _add_exec(sub)
    if only == "exec":
        return p
    _add_others(sub)
    return p


def _add_exec(sub: Any) -> None:
    import argparse

    ex = sub.add_parser("exec", help="run one command in a fresh sandbox (like docker run --rm)")
    ex.add_argument("--image", default="debian")
    ex.add_argument("--memory", default="256M")
    ex.add_argument("--cpus", default="1")
    ex.add_argument("--pids", default="128")
    ex.add_argument("--disk", default="1G")
    ex.add_argument("--timeout", default="30s")
    ex.add_argument("--log-limit", default="4M", help="stop the job once its output exceeds this")
    ex.add_argument("--network", default="none", choices=["none", "egress"])
    ex.add_argument("--runtime", choices=["crun", "runc", "runsc"])
    ex.add_argument("--profile", default="default", choices=["default", "strict"])
    ex.add_argument("--env", action="append", default=[], type=_env_pair, metavar="K=V")
    ex.add_argument("--workdir", default="/workspace")
    ex.add_argument("--artifact", action="append", default=[], metavar="GLOB")
    ex.add_argument("--json", action="store_true", help="print the job result record on stdout")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")


def _add_others(sub: Any) -> None:
    import argparse

    run = sub.add_parser("run", help="run a whole pipeline on this machine (local mode)")
    run.add_argument("file")
    run.add_argument("--var", action="append", default=[], type=_env_pair, metavar="K=V")
    run.add_argument("--json", action="store_true", help="print the run record on stdout")
    run.add_argument("--manual", action="append", default=[], metavar="NAME",
                     help="also run the manual job NAME (a base name takes all its instances; '*' every "
                          "manual job); may be repeated. Default: manual jobs wait, as on GitLab")
    run.add_argument("--policy", choices=("trusted", "untrusted"), default="trusted",
                     help="the trust level whose caps and defaults apply (SANDPIT_POLICY_*; default trusted)")

    lint = sub.add_parser("lint", help="validate a pipeline file", add_help=False)
    lint.add_argument("rest", nargs=argparse.REMAINDER)

    img = sub.add_parser("images", help="manage the image store")
    isub = img.add_subparsers(dest="images_command", required=True)
    b = isub.add_parser("build", help="build image recipes from images/")
    b.add_argument("names", nargs="*")
    b.add_argument("--all", action="store_true")
    isub.add_parser("list", help="list built images")
    rm = isub.add_parser("rm", help="remove a built image")
    rm.add_argument("names", nargs="+")

    wk = sub.add_parser("worker", help="start a worker (Celery, threads pool) for the service")
    wk.add_argument("--concurrency", type=int, default=None,
                    help="jobs at once (default: the host's cores; the memory/cpu budget still applies)")

    upp = sub.add_parser("up", help="start the service here: redis (unless configured), a worker, the API")
    upp.add_argument("--host", default="127.0.0.1")
    upp.add_argument("--port", type=int, default=8000)
    upp.add_argument("--concurrency", type=int, default=None)
    sb = sub.add_parser("submit", help="send a pipeline to a running service")
    sb.add_argument("file")
    sb.add_argument("--var", action="append", default=[], type=_env_pair, metavar="K=V")
    sb.add_argument("--follow", action="store_true", help="stream the jobs' logs until the run ends")
    lg = sub.add_parser("logs", help="print (or follow) a job's log from a running service")
    lg.add_argument("job")
    lg.add_argument("--follow", action="store_true")
    cn = sub.add_parser("cancel", help="cancel a run on a running service")
    cn.add_argument("run")

    rp = sub.add_parser("reap", help="remove what dead sandpit processes left behind")
    rp.add_argument("--all", action="store_true",
                    help="also remove the host's network side: the pool of ready egress namespaces, the "
                         "bridge and the nft tables (running egress jobs lose their network)")
    sub.add_parser("host-prep", help="prepare this host once per boot (cgroups, scratch disk)")
    sub.add_parser("doctor", help="say which runtimes work here and why not")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args: Any = parse_exec_fast(argv[1:]) if argv[:1] == ["exec"] else None
    if args is None:
        fast = argv[:1] == ["exec"] and "-h" not in argv[: argv.index("--") if "--" in argv else len(argv)]
        args = build_parser("exec" if fast else None).parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="sandpit: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env(os.environ)
        if args.command == "exec":
            from worker.cli_exec import exec_command

            return exec_command(args, settings)
        if args.command == "run":
            from pathlib import Path

            from worker.local_run import run_pipeline

            return run_pipeline(settings, Path(args.file), dict(args.var), as_json=args.json, trust=args.policy,
                                manual=tuple(args.manual))
        if args.command == "lint":
            return _lint(args.rest, settings)
        if args.command == "images":
            return _images(args, settings)
        if args.command == "worker":
            import warnings

            from celery.platforms import SecurityWarning

            from worker.celery_app import app

            # root is required: jobs need user namespaces, cgroups, mounts and network namespaces
            warnings.filterwarnings("ignore", category=SecurityWarning)

            concurrency = args.concurrency or os.cpu_count() or 1
            # app.Worker rather than app.worker_main: worker_main drops the worker's exit code, so a
            # worker stopped by an unrecoverable error exited 0 and its supervisor saw a clean stop
            worker = app.Worker(pool="threads", concurrency=concurrency, queues=["sandpit.jobs"],
                                without_gossip=True, without_mingle=True, without_heartbeat=True,
                                loglevel="INFO" if args.verbose else "WARNING")
            worker.start()
            return int(worker.exitcode or 0)
        if args.command in ("up", "submit", "logs", "cancel"):
            from pathlib import Path

            from worker import cli_service

            if args.command == "up":
                return cli_service.up(settings, args.host, args.port, args.concurrency)
            if args.command == "submit":
                return cli_service.submit(settings, Path(args.file), dict(args.var), args.follow)
            if args.command == "logs":
                return cli_service.logs(settings, args.job, args.follow)
            return cli_service.cancel(settings, args.run)
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
        if args.command == "doctor":
            return _doctor(settings)
    except SandpitError as exc:
        from worker.terminal import quote_lines  # errors may carry a pipeline's or a job's text

        print(f"sandpit: {quote_lines(str(exc))}", file=sys.stderr)
        return SANDBOX_FAILED
    except KeyboardInterrupt:
        return 130
    return 2


def _lint(rest: list[str], settings: Settings) -> int:
    try:
        from pipelines.language.cli import lint_main
    except ImportError:
        print("sandpit: lint is not available in this build", file=sys.stderr)
        return 2
    from worker.sandbox.images import ImageStore

    # the references the recipes provide, so lint warns where run would refuse an image
    images = ImageStore(settings.state_dir, settings.images_dir).provided()
    return lint_main(rest, sys.stdout, sys.stderr, images=images)


def _images(args: Any, settings: Settings) -> int:
    from worker.sandbox.images import ImageStore, print_progress

    store = ImageStore(settings.state_dir, settings.images_dir)
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
    if args.images_command == "list":
        print("NAME\tKEY\tSIZE\tCURRENT")
        for image in store.list():
            current = "yes" if store.is_current(image.name) else "stale (recipe changed)"
            print(f"{image.name}\t{image.key[:12]}\t{image.size / 1e6:.0f}MB\t{current}")
        return 0
    from worker.sandbox.rootfs import drop_layer_views

    for name in args.names:
        drop_layer_views(settings.run_dir, store.get(name).key)
        store.remove(name)
        print(f"removed {name}")
    return 0


def _host_prep(settings: Settings) -> int:
    from worker.sandbox.cgroups import favor_dynamic_cgroups
    from worker.sandbox.disk import ensure_quota_consistent, ensure_scratch
    from worker.sandbox.runtime import fix_hybrid_cgroups

    for ctrl in fix_hybrid_cgroups():
        print(f"moved cgroup controller {ctrl} to a v1 hierarchy (crun needs an empty v2 hierarchy here)")
    try:
        for point in favor_dynamic_cgroups():
            print(f"remounted {point} with favordynmods (a container start no longer waits ~12 ms "
                  f"for the kernel after a pause)")
    except SandpitError as exc:
        print(f"sandpit: warning: {exc}; job start-up will be slower after pauses", file=sys.stderr)
    scratch = ensure_scratch(settings.state_dir, settings.scratch_bytes)
    if ensure_quota_consistent(scratch):
        print("rescanned the job-disk quotas (they were inconsistent, so limits were not enforced)")
    print(f"job disks on {scratch}")
    from worker.sandbox.network.host import reload_if_prepared

    if reload_if_prepared(settings.network()):
        print("reloaded the network policy (nft tables) for egress jobs")
    return _doctor(settings)


def _doctor(settings: Settings | None = None) -> int:
    from worker.sandbox.runtime import PREFERENCE, runtime_problem

    usable = 0
    for name in PREFERENCE:
        problem = runtime_problem(name)
        usable += problem is None
        print(f"{name}: {'ok' if problem is None else problem}")
    dns_ok: bool | None = None
    if settings is not None:  # egress DNS, asked from a job namespace (worker/sandbox/network/doctor.py)
        from worker.sandbox.network.doctor import check_egress_dns

        dns_ok, sentence = check_egress_dns(settings.network())
        print(f"egress dns: {sentence}")
    return 0 if usable and dns_ok is not False else 1


def print_json(record: dict[str, Any]) -> None:
    import json

    sys.stdout.write(json.dumps(record, indent=None) + "\n")
    sys.stdout.flush()


