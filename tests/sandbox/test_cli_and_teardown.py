"""``sandpit exec`` as a whole process: its contract, and teardown on Ctrl-C and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from worker.sandbox.cgroups import cgroup2_mounts
from worker.sandbox.mounts import MS_REMOUNT, mount
from worker.sandbox.reaper import leftovers

SANDPIT = [sys.executable, "-m", "worker"]


def cli_env(settings, runtime):
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(settings.state_dir),
           "SANDPIT_RUN_DIR": str(settings.run_dir), "SANDPIT_RUNTIME": runtime,
           "SANDPIT_SCRATCH_SIZE": str(settings.scratch_bytes)}
    return env


@pytest.fixture()
def cli(settings, runtime, no_leftovers):
    def call(*args: str, **kw):
        return subprocess.run([*SANDPIT, *args], env=cli_env(settings, runtime), capture_output=True,
                              text=True, timeout=60, **kw)
    return call


def test_exec_streams_output_and_passes_exit_code(cli):
    p = cli("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")


def test_exec_json_prints_record_on_stdout_and_output_on_stderr(cli):
    p = cli("exec", "--json", "--artifact", "r.txt", "--", "sh", "-c", "echo hi; echo data > r.txt")
    assert p.returncode == 0
    record = json.loads(p.stdout)
    assert record["status"] == "succeeded" and record["exit_code"] == 0 and record["reason"] is None
    assert set(record) >= {"name", "status", "reason", "exit_code", "signal", "attempt", "duration_s",
                           "started_at", "finished_at", "usage", "artifacts", "rejected_artifacts"}
    assert set(record["usage"]) == {"cpu_s", "memory_peak_bytes", "pids_peak"}
    assert record["artifacts"][0]["path"] == "r.txt" and record["artifacts"][0]["size"] == 5
    assert "hi\n" in p.stderr


def test_exec_killed_by_signal_exits_128_plus_n(cli):
    p = cli("exec", "--timeout", "1s", "--", "sleep", "30")
    assert p.returncode == 137
    assert "reason: timeout" in p.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--image", "no-such-image", "--", "true"], "no-such-image"),
    (["--memory", "lots", "--", "true"], "not a size"),
    (["--artifact", "../x", "--", "true"], ".."),
    (["--workdir", "/proc/self", "--", "true"], "/proc"),
    (["--"], "no command"),
])
def test_exec_sandbox_errors_exit_125_with_message(cli, args, fragment):
    p = cli("exec", *args)
    assert p.returncode == 125
    assert fragment in p.stderr and "Traceback" not in p.stderr


def test_unbuilt_image_says_how_to_build(cli, settings, tmp_path):
    recipes = tmp_path / "images" / "tiny"
    recipes.mkdir(parents=True)
    (recipes / "image.toml").write_text('suite = "bookworm"\ncustomize = ["true"]\n')
    env = {**cli_env(settings, "crun"), "SANDPIT_IMAGES_DIR": str(tmp_path / "images")}
    p = subprocess.run([*SANDPIT, "exec", "--image", "tiny", "--", "true"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 125
    assert "sandpit images build tiny" in p.stderr


def _spawn_exec(settings, runtime, *cmd: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SANDPIT, "exec", "--timeout", "60s", "--", *cmd], env=cli_env(settings, runtime),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_job(proc: subprocess.Popen[str], timeout: float = 20) -> None:
    """Until the job _spawn_exec started says it runs (its first line): a new container on the
    host may be another job's, whose sandpit started later and got further (the machine is shared),
    while this one is still importing."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready and proc.stdout.readline() == "started\n", "the job never started"


def test_ctrl_c_tears_everything_down(settings, runtime, no_leftovers):
    """SIGINT to sandpit exec stops the job (reason cancelled) and removes every kernel object."""
    proc = _spawn_exec(settings, runtime, "sh", "-c", "echo started; sleep 60")
    _wait_for_job(proc)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "cancelled" in err
    assert leftovers(settings) == []


def test_sigkilled_exec_is_cleaned_by_reap(settings, runtime, no_leftovers):
    """A SIGKILLed sandpit leaves objects behind; `sandpit reap` removes them, and only them."""
    marker = f"60.{os.getpid()}"  # a sleep duration no other process on the host uses
    proc = _spawn_exec(settings, runtime, "sh", "-c", f"sleep {marker} & echo started; sleep {marker}")
    _wait_for_job(proc)
    live = subprocess.Popen([*SANDPIT, "exec", "--timeout", "60s", "--", "sleep", "5"],
                            env=cli_env(settings, runtime), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.kill()
    proc.communicate()
    time.sleep(0.5)
    left = leftovers(settings)
    assert any(x.startswith("mount") for x in left) and any(x.startswith("cgroup") for x in left)
    reaped = subprocess.run([*SANDPIT, "reap"], env=cli_env(settings, runtime), capture_output=True,
                            text=True, timeout=60)
    assert reaped.returncode == 0 and "reaped" in reaped.stdout
    # the live job was not touched: it finishes normally
    live.communicate(timeout=30)
    assert live.returncode == 0
    assert leftovers(settings) == []
    # the SIGKILLed job's processes are gone too
    ps = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_doctor_reports_runtimes(cli):
    p = cli("doctor")
    assert "runtime crun " in p.stdout and "runtime runc " in p.stdout and "runtime runsc " in p.stdout


def test_images_list_shows_built_images(cli):
    p = cli("images", "list")
    assert p.returncode == 0
    names = [line.split("\t")[0] for line in p.stdout.splitlines()[1:]]
    assert "debian" in names and "python" in names




def _cgroup2_options() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [options for _point, options in cgroup2_mounts(f.read())]


def test_host_prep_makes_cgroup_moves_cheap(settings):
    """host-prep remounts the cgroup2 hierarchy with favordynmods (keeping its other options), once."""
    found = _cgroup2_options()
    assert found, "this host has no cgroup2 hierarchy"
    with open("/proc/self/mountinfo") as f:
        mounts = cgroup2_mounts(f.read())
    for point, options in mounts:
        # back to the kernel's default, as after a boot
        before = [o for o in options.split(",") if o not in ("rw", "ro", "favordynmods")]
        mount("none", point, "cgroup2", MS_REMOUNT, ",".join(before))
    assert all("favordynmods" not in o.split(",") for o in _cgroup2_options())
    first = subprocess.run([*SANDPIT, "host-prep"], env=cli_env(settings, "crun"), capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "with favordynmods" in first.stdout
    after = _cgroup2_options()
    assert all("favordynmods" in o.split(",") for o in after)
    # the mount's other options are kept
    assert [o.replace(",favordynmods", "") for o in after] == [o.replace(",favordynmods", "") for o in found]
    again = subprocess.run([*SANDPIT, "host-prep"], env=cli_env(settings, "crun"), capture_output=True,
                           text=True, timeout=120)
    # nothing to remount the second time (the doctor's checks after it may still name the option)
    assert again.returncode == 0 and "remounted" not in again.stdout
