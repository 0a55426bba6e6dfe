"""The systemd units of compose/systemd/ are valid units (systemd's own ``systemd-analyze verify``,
with the paths pointed at this checkout) and keep the rules the deployment depends on: restart
always, images and host preparation before the worker, and no option that would give the worker a
mount namespace of its own (its mounts must be the host's, where the reaper finds them)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

REPO = Path(__file__).resolve().parents[3]
UNITS = REPO / "compose" / "systemd"
# options that make systemd run the service in a mount namespace of its own (systemd.exec(5))
MOUNT_NAMESPACE = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadWritePaths",
                   "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "ProtectKernelModules",
                   "ProtectKernelTunables", "ProtectControlGroups", "ProtectKernelLogs", "PrivateMounts",
                   "ProtectProc", "DynamicUser", "RootDirectory", "MountAPIVFS")


def _service(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser["Service"]


@pytest.mark.parametrize("name", ["sandpit-api.service", "sandpit-worker.service"])
def test_the_unit_is_what_systemd_accepts(name: str, tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say (unknown options, bad values, missing binaries)."""
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "needs systemd-analyze (apt-get install systemd)")
    assert analyze is not None
    text = (UNITS / name).read_text().replace("/opt/sandpit/.venv", str(REPO / ".venv"))
    (tmp_path / name).write_text(text)
    proc = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_worker_restarts_prepares_the_host_and_keeps_the_hosts_mounts() -> None:
    service = _service("sandpit-worker.service")
    assert service["Restart"] == "always"
    pre = [line for line in (UNITS / "sandpit-worker.service").read_text().splitlines()
           if line.startswith("ExecStartPre=")]
    assert pre == ["ExecStartPre=/opt/sandpit/.venv/bin/sandpit images build --all",
                   "ExecStartPre=/opt/sandpit/.venv/bin/sandpit host-prep"]
    assert service["ExecStart"] == "/opt/sandpit/.venv/bin/sandpit worker"
    assert [option for option in MOUNT_NAMESPACE if option in service] == []
    assert service["NoNewPrivileges"] == "yes" and service["KillMode"] == "mixed"


def test_the_api_runs_unprivileged_in_a_read_only_system() -> None:
    service = _service("sandpit-api.service")
    assert service["Restart"] == "always"
    assert service["DynamicUser"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict" and service["StateDirectory"] == "sandpit-api"
    assert service["Environment"] == "SANDPIT_STATE_DIR=/var/lib/sandpit-api"
