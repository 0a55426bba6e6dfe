"""``sandpit exec``: one command in a fresh sandbox, output streamed, exit status passed through.

The command's output is a raw byte pipe, as with ``docker run``: nothing is filtered or escaped
(people pipe tar through it). A reader that goes away (``| head``) breaks the command's own stdout,
so the command sees EPIPE/SIGPIPE as the first command of a shell pipeline does, and sandpit, once
everything is torn down, exits 141 as that pipeline's writer would. What
sandpit itself prints (``sandpit: ...`` lines on stderr) embeds job-controlled names and messages
only through ``quote_for_terminal``, so a job cannot forge such a line or reach the terminal.
"""

from __future__ import annotations

import os
import threading

from pipelines.job_record import JobRecord, Reason, Status, Verdict
from worker import TYPE_CHECKING
from worker.cli.exec_options import SANDBOX_FAILED
from worker.errors import InvalidRequest
from worker.local.records import record_exec
from worker.local.retention import spawn_if_due
from worker.sandbox.engine import Engine, install_signal_cancel
from worker.sandbox.request import Limits, SandboxRequest
from worker.sandbox.units import parse_cpus, parse_duration, parse_size
from worker.settings import Settings

if TYPE_CHECKING:
    import argparse

#: sandpit's status when its stdout's reader went away (``| head``): a shell pipeline's writer
#: killed by SIGPIPE reports 128+13, whatever the command then did with its broken pipe (as pid 1
#: of its namespace it cannot die of SIGPIPE: ``yes`` gets EPIPE, says so and exits 1)
READER_GONE = 141

LIMIT_WORDS = {
    Reason.OOM: "the job ran out of memory (--memory {memory})",
    Reason.PIDS_LIMIT: "the job hit its process limit (--pids {pids})",
    Reason.TIMEOUT: "the job ran past its timeout (--timeout {timeout})",
    Reason.DISK_QUOTA: "the job filled its disk (--disk {disk})",
    Reason.LOG_LIMIT: "the job's output passed the log limit (--log-limit {log_limit})",
    Reason.CANCELLED: "the job was cancelled",
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
    spawn_if_due(settings)  # old logs and artifacts of exec and local runs go (a stat, unless due)
    cancel = threading.Event()
    install_signal_cancel(cancel)
    status = run_exec(args, settings, OutputWriter(1, 2, json=args.json), cancel)
    # everything is torn down and written: skip the interpreter's slow finalisation (and its
    # flush of a stdout whose reader may be gone)
    os._exit(status)


def run_exec(args: argparse.Namespace, settings: Settings, writer: OutputWriter, cancel: threading.Event,
             engine: Engine | None = None) -> int:
    """One ``sandpit exec``: run the job, keep its record, say what sandpit has to say on the
    writer's stderr, and return exec's exit status. The same for a job run in this process and
    one a resident engine runs for a client (worker/cli/resident.py, which passes its own engine),
    with the client's fds."""
    try:
        req: SandboxRequest | None = request_from_args(args)
        refused = ""
    except InvalidRequest as exc:  # the same record and exit status as a refusal by the engine
        req, refused = None, str(exc)
    if req is None:
        result = JobRecord.not_run("exec", Verdict(Status.FAILED, Reason.INVALID_SPEC, refused))
    else:
        result = (engine or Engine(settings)).run(req, sink=writer.sink, cancel=cancel)
    if writer.blocked_fd is not None:
        writer.say("sandpit: not all of the job's output was delivered: its reader stopped reading")
    record = result.to_json()
    _keep_record(settings, record)
    if args.json:
        import json

        writer.emit(writer.stdout, json.dumps(record).encode() + b"\n")
    status = exit_status(result, args, writer)
    return READER_GONE if writer.stdout in writer.gone else status


def _keep_record(settings: Settings, record: dict[str, object]) -> None:
    """Name the log and artifacts this exec left in the shared stores (worker/local/records.py), so
    ``sandpit artifacts`` finds them and retention removes them in time; never fails the command."""
    if not record.get("log") and not record.get("artifacts"):
        return  # refused before anything was written
    try:
        record_exec(settings.state_dir, record)
    except (OSError, ValueError):
        return


class OutputWriter:
    """sandpit exec's stdout and stderr.

    ``sink`` takes the job's output on the delivery thread; it may block there (the supervisor does
    not wait for it). Plain ``os.write``, so nothing is left in a Python buffer to flush (or to fail
    flushing) at exit. ``say``/``emit`` write sandpit's own short output without blocking for long
    or raising: their reader may be stalled (the same pipe as the job's output) or gone.
    """

    def __init__(self, stdout: int, stderr: int, *, json: bool = False) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.out_fd = stderr if json else stdout  # with --json the record alone is on stdout
        self.blocked_fd: int | None = None  # set while a write of the job's output is under way
        self.gone: set[int] = set()  # fds whose reader went away (EPIPE)

    def sink(self, stream: str, data: bytes) -> None:
        fd = self.out_fd if stream == "out" else self.stderr
        self.blocked_fd = fd
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            self.gone.add(fd)
            raise  # the delivery stops this stream and the job's pipe is closed
        finally:
            self.blocked_fd = None

    def emit(self, fd: int, data: bytes, timeout_s: float = 1.0) -> None:
        import select

        if fd == self.blocked_fd or fd in self.gone:
            return  # the job's output is stuck in it (this would be too), or nobody reads it
        try:
            while data:
                if not select.select([], [fd], [], timeout_s)[1]:
                    return
                data = data[os.write(fd, data[:4096]):]
        except BrokenPipeError:
            self.gone.add(fd)
        except OSError:
            return

    def say(self, line: str) -> None:
        self.emit(self.stderr, (line + "\n").encode(errors="backslashreplace"))


def exit_status(result: JobRecord, args: argparse.Namespace, writer: OutputWriter) -> int:
    if result.status is Status.SUCCEEDED and not result.rejected_artifacts:
        return 0  # nothing of sandpit's to say: the quoting (and its imports, ~12 ms) is not needed
    from worker.terminal import quote_for_terminal  # after the job: kept off the start-up path

    if result.status is Status.ERROR or result.reason is Reason.INVALID_SPEC:
        writer.say(f"sandpit: {quote_for_terminal(result.message or 'failed', quotes=False)}")
        return SANDBOX_FAILED
    if result.reason in LIMIT_WORDS:
        words = LIMIT_WORDS[result.reason].format(**vars(args))
        writer.say(f"sandpit: {quote_for_terminal(words, quotes=False)} [reason: {result.reason}]")
    for rej in result.rejected_artifacts:
        writer.say(f"sandpit: artifact {quote_for_terminal(rej.path)} not kept: "
                   f"{quote_for_terminal(rej.why, quotes=False)}")
    if result.exit_code is None:
        return SANDBOX_FAILED
    # a job stopped by a limit never looks successful, even if its main process exited 0
    return 1 if result.status is not Status.SUCCEEDED and result.exit_code == 0 else result.exit_code
