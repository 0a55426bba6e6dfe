"""``sandpit exec``: one command in a fresh sandbox, output streamed, exit status passed through."""

from __future__ import annotations

import os
import sys
import threading

from worker.cli import SANDBOX_FAILED, print_json
from worker.errors import InvalidRequest
from worker.sandbox.engine import Engine, JobResult, install_signal_cancel
from worker.sandbox.request import Limits, SandboxRequest
from worker.sandbox.units import parse_cpus, parse_duration, parse_size
from worker.settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

LIMIT_WORDS = {
    "oom": "the job ran out of memory (--memory {memory})",
    "pids_limit": "the job hit its process limit (--pids {pids})",
    "timeout": "the job ran past its timeout (--timeout {timeout})",
    "disk_quota": "the job filled its disk (--disk {disk})",
    "log_limit": "the job's output passed the log limit (--log-limit {log_limit})",
    "cancelled": "the job was cancelled",
}


def request_from_args(args: argparse.Namespace) -> SandboxRequest:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        limits = Limits(
            memory_bytes=parse_size(args.memory), cpus=parse_cpus(args.cpus), pids=int(args.pids),
            disk_bytes=parse_size(args.disk), timeout_s=parse_duration(args.timeout),
            log_bytes=parse_size(args.log_limit),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    return SandboxRequest(
        argv=tuple(argv), image=args.image, env=tuple(args.env), workdir=args.workdir,
        network=args.network, runtime=args.runtime, profile=args.profile, limits=limits,
        artifacts=tuple(args.artifact),
    )


def exec_command(args: argparse.Namespace, settings: Settings) -> int:
    req = request_from_args(args)
    out = sys.stderr.buffer if args.json else sys.stdout.buffer

    def sink(stream: str, data: bytes) -> None:
        target = sys.stderr.buffer if stream != "out" else out
        target.write(data)
        target.flush()

    cancel = threading.Event()
    install_signal_cancel(cancel)
    result = Engine(settings).run(req, sink=sink, cancel=cancel)
    if args.json:
        print_json(result.as_record())
    status = exit_status(result, args)
    # everything is torn down and flushed: skip the interpreter's slow finalisation
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def exit_status(result: JobResult, args: argparse.Namespace) -> int:
    if result.status == "error" or result.reason == "invalid_spec":
        print(f"sandpit: {result.message}", file=sys.stderr)
        return SANDBOX_FAILED
    if result.reason in LIMIT_WORDS:
        print(f"sandpit: {LIMIT_WORDS[result.reason].format(**vars(args))} [reason: {result.reason}]",
              file=sys.stderr)
    for rej in result.rejected_artifacts:
        print(f"sandpit: artifact {rej.path} not kept: {rej.why}", file=sys.stderr)
    if result.exit_code is None:
        return SANDBOX_FAILED
    # a job stopped by a limit never looks successful, even if its main process exited 0
    return 1 if result.status != "succeeded" and result.exit_code == 0 else result.exit_code
