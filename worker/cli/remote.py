"""``sandpit up`` (the whole service on this machine) and the client commands ``submit``, ``logs``,
``cancel`` that talk to a running service over its REST API.

Client settings: ``SANDPIT_API_URL`` (default http://127.0.0.1:8000) and ``SANDPIT_TOKEN`` (default:
the token ``sandpit up`` generated, read from ``<state>/api-token``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.files.locks import FileLock, try_hold
from worker.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sandpit: {what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"sandpit: {what} did not start within {timeout:.0f}s")


def up(settings: Settings, host: str, port: int, concurrency: int | None, processes: int = 1) -> int:
    """Start redis-server (unless SANDPIT_REDIS_URL is set), a worker and the API; keep them running
    (a child that dies is started again, with back-off: worker/service/children.py); stop them on Ctrl-C."""
    from worker.service.children import Child, Children

    env = dict(os.environ)  # the children's environment (each builds its own settings from it)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    from worker.sandbox.private_state import make_private

    make_private(settings.state_dir, settings.run_dir)  # root's alone, also when an older sandpit made it
    # held until this process ends; a database of its own (SANDPIT_DATABASE_URL) is "told otherwise"
    lock = None if settings.database_url else _own_state_dir(settings.state_dir)
    env["SANDPIT_STATE_DIR"] = str(settings.state_dir)  # the children use this one, whatever their defaults
    children = Children()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if not settings.redis_url_set:
            redis_dir = settings.state_dir / "redis"
            redis_dir.mkdir(exist_ok=True, mode=0o700)
            redis_port = _free_port()
            # the same port and append-only file when it is started again: queued messages survive
            children.start(Child("redis-server", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                                  "--dir", str(redis_dir), "--appendonly", "yes", "--save", "",
                                                  "--protected-mode", "yes"], env,
                                 ready=lambda p: _wait_port(redis_port, p, "redis-server"),
                                 stdout=subprocess.DEVNULL))
            env["SANDPIT_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        token = "(one of SANDPIT_API_TOKENS)"  # noqa: S105 - a label shown to the user, not a secret
        tokens_configured = bool(env.get("SANDPIT_API_TOKENS"))
        if not tokens_configured:
            token_file = settings.state_dir / "api-token"
            if not token_file.exists():
                token_file.touch(mode=0o600)
                token_file.write_text(secrets.token_urlsafe(24))
            os.chmod(token_file, 0o600)  # whatever the umask, or an older sandpit, made it
            token = token_file.read_text().strip()
            env["SANDPIT_API_TOKENS"] = f"local:{token}:trusted"
        env.setdefault("SANDPIT_PUBLIC_URL", f"http://{host}:{port}")  # CI_JOB_URL in jobs
        worker_cmd = [sys.executable, "-m", "worker", "worker"]
        if concurrency:
            worker_cmd += ["--concurrency", str(concurrency)]
        if processes != 1:
            worker_cmd += ["--processes", str(processes)]
        children.start(Child("the worker", worker_cmd, env))
        children.start(Child("the API", [sys.executable, "-m", "api", "--host", host, "--port", str(port),
                                         "--log-level", "warning"], env,
                             ready=lambda p: _wait_port(port, p, "the API")))
        print(f"sandpit is up: API http://{host}:{port}/api/v1 (docs: /api/v1/openapi.json)")
        print(f"  state: {settings.state_dir} (database, token, queue)")
        print(f"  token: {token}")
        print(f"  try:   {try_line(host, port, token, tokens_configured)}")
        print("  Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(0.5)
            children.watch_once()
    except KeyboardInterrupt:
        return 0
    finally:
        children.stop_all()
        if lock is not None:
            lock.release()


def _own_state_dir(state_dir: Path) -> FileLock:
    """An exclusive lock on ``<state>/up.lock`` for the life of this ``sandpit up``: a second one on
    the same state dir (and its database there) would share its database, token and queue, so it is
    refused with a message saying how to run a separate instance (another ``SANDPIT_STATE_DIR``)."""
    lock = try_hold(state_dir / "up.lock")
    if lock is None:
        holder = "?"
        with contextlib.suppress(OSError):
            fd = os.open(state_dir / "up.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
        raise SystemExit(f"sandpit: another `sandpit up` (pid {holder}) already uses the state dir {state_dir}; "
                         f"set SANDPIT_STATE_DIR (and SANDPIT_RUN_DIR) to run a separate instance") from None
    assert lock.fd is not None
    os.ftruncate(lock.fd, 0)
    os.pwrite(lock.fd, f"{os.getpid()}\n".encode(), 0)
    return lock


def try_line(host: str, port: int, token: str, token_configured: bool) -> str:
    """A command that works when pasted into another shell: it names this instance's API (the
    client's default is port 8000, maybe another instance) and token, the example by its absolute
    path, and ``sandpit`` as this process was started when it is not on PATH.

    >>> try_line("0.0.0.0", 8123, "abc", False).split(" ")[:2]
    ['SANDPIT_API_URL=http://127.0.0.1:8123', 'SANDPIT_TOKEN=abc']
    """
    import shlex
    import shutil

    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 - turning a wildcard into a target
    url = f"http://[{reach}]:{port}" if ":" in reach else f"http://{reach}:{port}"
    shown_token = "<one of SANDPIT_API_TOKENS>" if token_configured else shlex.quote(token)
    example = Path(__file__).resolve().parents[2] / "pipelines" / "examples" / "demo.yml"
    command = "sandpit" if shutil.which("sandpit") else f"{shlex.quote(sys.executable)} -m worker"
    return (f"SANDPIT_API_URL={shlex.quote(url)} SANDPIT_TOKEN={shown_token} {command} submit "
            f"{shlex.quote(str(example))} --follow")


class Client:
    def __init__(self, settings: Settings) -> None:
        import httpx

        self.base = settings.api_url
        token: str | None = settings.api_token
        if not token:
            try:
                token = (settings.state_dir / "api-token").read_text().strip()
            except OSError:
                raise SystemExit("sandpit: set SANDPIT_TOKEN (the token `sandpit up` printed)") from None
        self.http = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(30, read=None))

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise SystemExit(f"sandpit: cannot reach the API at {self.base}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = json.dumps(response.json(), indent=2)
            except ValueError:
                detail = response.text
            raise SystemExit(f"sandpit: {method} {path} → {response.status_code}\n{detail}")
        return response.json()

    def stream_log(self, job_id: str, prefix: str = "", raw: bool = False) -> None:
        """Print the job's log as it grows. Prefixed (``submit --follow``) or on a terminal, it goes
        through the same filter as ``sandpit run``'s output (colour only: no title, cursor, erase or
        CR tricks over the prefix); ``raw`` passes the bytes on untouched (``sandpit logs | file``)."""
        from worker.terminal import TerminalSanitizer, visible_line

        screen = None if raw else TerminalSanitizer()
        with self.http.stream("GET", f"/api/v1/jobs/{job_id}/log", params={"follow": "1"}) as response:
            if raw:
                for data in response.iter_bytes():
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                return
            assert screen is not None
            pending = ""
            for data in response.iter_bytes():
                pending += screen.feed(data)
                *lines, pending = pending.split("\n")
                for line in lines:
                    print(f"{prefix}{visible_line(line)}", flush=True)
            pending += screen.finish()
            if pending:
                print(f"{prefix}{visible_line(pending)}", flush=True)


def submit(settings: Settings, file: Path, variables: dict[str, str], follow: bool, tree: bool = True) -> int:
    """Send the pipeline and (``tree``) the project's files it lives in, as ``sandpit run`` would
    seed them (worker/work_tree.py): the service's jobs then start with them in /workspace."""
    try:
        text = file.read_text()
    except OSError as exc:
        print(f"sandpit: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"pipeline": text, "variables": variables}
    if tree:
        import base64

        from pipelines.language.loader import find_repository_root
        from worker.work_tree import tree_archive, tree_files

        root = find_repository_root(file.absolute())
        archive = tree_archive(root, tree_files(root))
        entry = file.absolute().relative_to(root).as_posix()
        body["source"] = {"archive": base64.b64encode(archive).decode(), "pipeline_path": entry}
        print(f"sending {root} ({len(archive)} bytes packed)", file=sys.stderr)
    client = Client(settings)
    run = client.call("POST", "/api/v1/runs", json=body)
    print(f"run {run['id']}: {run['status']}")
    for job in run.get("jobs", []):
        print(f"  {job['id']}  {job['name']}")
    if not follow:
        return 0
    import threading

    followed: set[str] = set()
    threads = []
    while True:
        run = client.call("GET", f"/api/v1/runs/{run['id']}")
        for job in run.get("jobs", []):
            if job["id"] not in followed and job["status"] not in ("created", "queued", "manual", "skipped"):
                followed.add(job["id"])
                t = threading.Thread(target=client.stream_log, args=(job["id"], f"{job['name']} | "), daemon=True)
                t.start()
                threads.append(t)
        if run["status"] not in ("created", "running"):
            break
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=10)
    print(f"pipeline {run['status']}")
    return 0 if run["status"] == "succeeded" else 1


def logs(settings: Settings, job_id: str, follow: bool) -> int:
    from worker.terminal import TerminalSanitizer, quote_lines

    client = Client(settings)
    raw = not sys.stdout.isatty()  # a file or a pipe gets the log as stored; a terminal, the filtered view
    if follow:
        client.stream_log(job_id, raw=raw)
    else:
        response = client.http.get(f"/api/v1/jobs/{job_id}/log")
        if response.status_code >= 400:
            print(f"sandpit: {response.status_code} {quote_lines(response.text)}", file=sys.stderr)
            return 1
        if raw:
            sys.stdout.buffer.write(response.content)
        else:
            screen = TerminalSanitizer()
            sys.stdout.write(screen.feed(response.content) + screen.finish())
    return 0


def cancel(settings: Settings, run_id: str) -> int:
    result = Client(settings).call("POST", f"/api/v1/runs/{run_id}/cancel")
    print(f"run {run_id}: {result.get('status')}")
    return 0
