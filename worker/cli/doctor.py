"""``sandpit doctor``: what a job needs on this host, checked and explained (adapter + entry point).

Like ``gitlab-runner verify``, each check says what it found and, when something is wrong, what to
do. A check is ``ok``, ``warn`` (jobs run, but slower, or something that will be made on first use
is missing), ``fail`` (a job that needs it cannot run: the exit status is 1) or ``skip`` (not
configured here, or not made yet). Checks only look: nothing here creates a bridge, mounts the job
disk or starts a forwarder, except the DNS check, which asks from a job's namespace on a host whose
egress network already exists (worker/sandbox/network/doctor.py).

Checks: runtimes; host preparation (cgroup v2 ``favordynmods``, a hybrid host's controllers); the
job-disk filesystem (btrfs with quotas) and its free space; images built and stale; the egress
bridge and its nft policy; DNS from an egress namespace; Redis and the database when configured
(``SANDPIT_REDIS_URL``, ``SANDPIT_DATABASE_URL``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from pipelines.record import record
from worker.settings import Settings

LOW_DISK_BYTES = 2 * 1024**3  # less free than this on the job disk: the next big job may hit ENOSPC


@record(frozen=True)
class Check:
    name: str
    state: str  # ok | warn | fail | skip
    text: str
    hint: str = ""


def _resident(settings: Settings) -> list[Check]:
    """Whether a resident engine (``sandpit engine``) serves this state dir: its lock is held. Looked
    at without connecting, so the engine's log gets no line for it."""
    from pipelines.files.locks import is_held
    from worker.cli.resident_client import ENGINE_DIR, LOCK_NAME, SOCKET_NAME

    folder = settings.state_dir / ENGINE_DIR
    if is_held(folder / LOCK_NAME):
        return [Check("resident engine", "ok", f"`sandpit engine` serves {settings.state_dir}: exec hands its jobs "
                                               "to it (SANDPIT_RESIDENT=off: never)")]
    if (folder / SOCKET_NAME).exists():
        return [Check("resident engine", "warn", f"{folder / SOCKET_NAME} was left by an engine that is gone: exec "
                                                 "runs its jobs itself", "`sandpit engine` replaces it")]
    return [Check("resident engine", "skip", "none serves this state dir: exec runs its jobs in its own process "
                                             "(`sandpit engine` keeps one warm: optional)")]


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix them; a check that raises is a ``fail``
    naming the error (the doctor itself never ends in a traceback)."""
    checks: list[Check] = []
    steps: list[Callable[[], list[Check]]] = [
        _runtimes, _host_prep, lambda: _job_disk(settings), lambda: _images(settings),
        lambda: _network(settings), lambda: _egress_dns(settings), lambda: _services(settings),
        lambda: _resident(settings)]
    for step in steps:
        try:
            checks += step()
        except Exception as exc:  # one broken check must not hide the others
            checks.append(Check(getattr(step, "__name__", "check").strip("_<>") or "check", "fail",
                                f"the check itself failed: {exc}"))
    return checks


def print_checks(checks: list[Check], out: TextIO) -> int:
    """One line per check (and its hint indented below); 1 when any check failed, else 0."""
    width = max((len(c.name) for c in checks), default=0)
    for c in checks:
        out.write(f"{c.name.ljust(width)}  {c.state:<4}  {c.text}\n")
        if c.hint:
            out.write(f"{'':{width}}        → {c.hint}\n")
    failed = [c.name for c in checks if c.state == "fail"]
    out.write(f"\n{len(failed)} problem(s) a job would hit: {', '.join(failed)}\n" if failed
              else "\nnothing a job needs is broken\n")
    return 1 if failed else 0


def _runtimes() -> list[Check]:
    from worker.sandbox.runtime import PREFERENCE, runtime_problem

    checks = []
    for name in PREFERENCE:
        problem = runtime_problem(name)
        checks.append(Check(f"runtime {name}", "ok" if problem is None else "warn", problem or "works here"))
    if all(c.state != "ok" for c in checks):
        checks.append(Check("runtimes", "fail", "no OCI runtime works here: no job can start",
                            "apt-get install crun runc, then sandpit host-prep"))
    return checks


def _host_prep() -> list[Check]:
    from worker.sandbox.cgroups import cgroup2_mounts
    from worker.sandbox.runtime import hybrid_v2_controllers

    checks = []
    stuck = hybrid_v2_controllers()
    if stuck:
        checks.append(Check("cgroups", "warn", f"hybrid host: controllers {', '.join(stuck)} are still on the v2 "
                            "hierarchy, so crun refuses to run here (runc works)", "sandpit host-prep"))
    else:
        checks.append(Check("cgroups", "ok", "no controller stuck on a hybrid host's v2 hierarchy"))
    with open("/proc/self/mountinfo") as f:
        mounts = cgroup2_mounts(f.read())
    if not mounts:
        checks.append(Check("favordynmods", "skip", "no cgroup2 mount on this host"))
    elif all("favordynmods" in opts.split(",") for _point, opts in mounts):
        checks.append(Check("favordynmods", "ok", f"{mounts[0][0]} is mounted with favordynmods"))
    else:
        checks.append(Check("favordynmods", "warn", f"{mounts[0][0]} lacks favordynmods: a container start can wait "
                            "~12 ms for the kernel after a pause", "sandpit host-prep (once per boot)"))
    return checks


def _job_disk(settings: Settings) -> list[Check]:
    from worker.sandbox.disk import is_mounted

    scratch = settings.scratch_dir
    if not is_mounted(scratch):
        image = settings.state_dir / "scratch.img"
        if shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
            return [Check("job disk", "fail", "btrfs-progs is missing: job disks (and their size limits) cannot be "
                          "made", "apt-get install btrfs-progs")]
        made = "exists" if image.exists() else f"will be made ({settings.scratch_bytes / 1024**3:g}G, sparse)"
        return [Check("job disk", "warn", f"{scratch} is not mounted yet; its image {image} {made}",
                      "sandpit host-prep mounts it (the first job would otherwise)")]
    fstype = _fstype(scratch)
    if fstype != "btrfs":
        return [Check("job disk", "fail", f"{scratch} is {fstype or 'an unknown filesystem'}, not btrfs: job disk "
                      "limits cannot be enforced", f"umount {scratch}; sandpit host-prep")]
    checks = []
    quota = subprocess.run(["btrfs", "qgroup", "show", "--raw", str(scratch)], capture_output=True, text=True,
                           check=False)
    if quota.returncode != 0:
        checks.append(Check("job disk", "fail", f"btrfs quotas are off on {scratch}: `disk:` limits are not "
                            "enforced", f"btrfs quota enable {scratch}, or sandpit host-prep"))
    else:
        checks.append(Check("job disk", "ok", f"{scratch}: btrfs with quotas (per-job `disk:` limits enforced)"))
    st = os.statvfs(scratch)
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    state = "warn" if free < LOW_DISK_BYTES else "ok"
    checks.append(Check("job disk free", state, f"{free / 1024**3:.1f}G free of {size / 1024**3:.1f}G",
                        "SANDPIT_SCRATCH_SIZE sets the size of a new one; sandpit reap removes dead jobs' disks"
                        if state == "warn" else ""))
    return checks


def _fstype(path: Path) -> str | None:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target and "-" in fields:
                return fields[fields.index("-") + 1]
    return None


def _images(settings: Settings) -> list[Check]:
    from worker.sandbox.images import ImageStore

    store = ImageStore(settings.state_dir, settings.images_dir)
    built = {image.name: image for image in store.list()}
    recipes = store.recipe_names()
    if not built:
        return [Check("images", "fail", f"no image is built: every job needs one (recipes: {', '.join(recipes)})",
                      "sandpit images build debian (or --all)")]
    checks = []
    for name in sorted(built):
        current = store.is_current(name)
        checks.append(Check(f"image {name}", "ok" if current else "warn",
                            f"built ({built[name].key[:12]})" if current else "stale: its recipe changed since it "
                            "was built (jobs get the old one)", "" if current else f"sandpit images build {name}"))
    if "debian" not in built:
        checks.append(Check("image debian", "fail", "not built: the default image of every job without `image:`",
                            "sandpit images build debian"))
    missing = [r for r in recipes if r not in built]
    if missing:
        checks.append(Check("images", "skip", f"recipes not built: {', '.join(missing)} (a job naming one is refused)"))
    return checks


def _in_host_netns(settings: Settings, argv: list[str]) -> subprocess.CompletedProcess[str]:
    if settings.net_host_netns is not None:
        argv = ["nsenter", f"--net={settings.net_host_netns}", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)


def _network(settings: Settings) -> list[Check]:
    net = settings.network()
    if shutil.which("ip") is None:
        return [Check("bridge", "fail", "the ip tool is missing", "apt-get install iproute2")]
    link = _in_host_netns(settings, ["ip", "-j", "addr", "show", "dev", net.bridge])
    if link.returncode != 0:
        return [Check("bridge", "skip", f"{net.bridge} does not exist yet: the first egress job makes it and its "
                      "policy")]
    info = (json.loads(link.stdout or "[]") or [{}])[0]
    addresses = [a.get("local") for a in info.get("addr_info", []) if a.get("family") == "inet"]
    up = "UP" in info.get("flags", [])
    checks = [Check("bridge", "ok" if up and addresses else "fail",
                    f"{net.bridge} {'up' if up else 'down'}, gateway {', '.join(map(str, addresses)) or 'none'}",
                    "" if up and addresses else "sandpit reap --all, then the next egress job makes it again")]
    if shutil.which("nft") is None:
        return [*checks, Check("nft policy", "fail", "nft is missing: egress jobs would not be confined",
                               "apt-get install nftables")]
    table = _in_host_netns(settings, ["nft", "-j", "list", "table", "inet", net.table])
    chains = set()
    if table.returncode == 0:
        for item in json.loads(table.stdout or "{}").get("nftables", []):
            if "chain" in item:
                chains.add(item["chain"].get("name"))
    wanted = {"input", "forward", "postrouting"}
    if not wanted <= chains:
        checks.append(Check("nft policy", "fail", f"table inet {net.table} is {'incomplete' if chains else 'missing'}"
                            f": egress jobs are not confined (host, private ranges and other jobs reachable)",
                            "sandpit host-prep reloads it (a firewall reload flushes it)"))
    else:
        checks.append(Check("nft policy", "ok", f"table inet {net.table}: input, forward and NAT chains loaded"))
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        if f.read().strip() != "1" and settings.net_host_netns is None:
            checks.append(Check("ip forwarding", "fail", "net.ipv4.ip_forward is 0: egress jobs reach nothing",
                                "sysctl -w net.ipv4.ip_forward=1"))
    return checks


def _egress_dns(settings: Settings) -> list[Check]:
    from worker.sandbox.network.doctor import check_egress_dns

    ok, sentence = check_egress_dns(settings.network())
    return [Check("egress dns", {True: "ok", False: "fail", None: "skip"}[ok], sentence)]


def _services(settings: Settings) -> list[Check]:
    checks = []
    redis_url = settings.redis_url_set
    if not redis_url:
        checks.append(Check("redis", "skip", "SANDPIT_REDIS_URL is not set (local runs need no broker; "
                            "`sandpit up` starts its own)"))
    else:
        import redis

        shown = _without_password(redis_url)
        try:
            client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
            client.ping()
            client.close()
            checks.append(Check("redis", "ok", f"{shown} answers"))
        except redis.RedisError as exc:
            checks.append(Check("redis", "fail", f"{shown}: {exc}", "start redis-server or fix SANDPIT_REDIS_URL"))
    db_url = settings.database_url
    if not db_url:
        default = settings.state_dir / "sandpit.db"
        checks.append(Check("database", "skip", "SANDPIT_DATABASE_URL is not set" + (
            f" (the service's default {default} is there)" if default.exists() else "")))
        return checks
    from pipelines.store.db import make_engine

    shown = _without_password(db_url)
    try:
        db = make_engine(db_url)
        with db.connect():
            pass
        db.dispose()
        checks.append(Check("database", "ok", f"{shown} accepts connections"))
    except Exception as exc:  # sqlalchemy wraps every driver's error differently
        checks.append(Check("database", "fail", f"{shown}: {str(exc).splitlines()[0][:300]}",
                            "start the database or fix SANDPIT_DATABASE_URL"))
    return checks


def _without_password(url: str) -> str:
    """A URL as it may be shown: no password.

    >>> _without_password("postgresql://sandpit:s3cret@db:5432/sandpit")
    'postgresql://sandpit:***@db:5432/sandpit'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
