"""`sandpit run --policy`: the caps are checked before anything is made (a real process; no
container starts, so no root is needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GREEDY = "big:\n  script: [make]\n  sandbox: {memory: 200G, network: egress}\n"


def sandpit_run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ci.yml").write_text(GREEDY)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDPIT_")}
    clean.update(SANDPIT_STATE_DIR=str(tmp_path / "state"), SANDPIT_RUN_DIR=str(tmp_path / "run"), **env)
    return subprocess.run([sys.executable, "-m", "worker", "run", str(tmp_path / "ci.yml"), *args], env=clean,
                          capture_output=True, text=True, timeout=60, check=False)


def test_run_policy_untrusted_refuses_before_anything_runs(tmp_path: Path) -> None:
    """Over the untrusted caps: exit 1, each cap named at its location, no state made."""
    proc = sandpit_run(tmp_path, "--policy", "untrusted")
    assert proc.returncode == 1, proc.stderr
    assert "ci.yml:1:1: error[over-policy]: job `big` asks for memory 200 GiB" in proc.stderr
    assert "(SANDPIT_POLICY_UNTRUSTED_EGRESS)" in proc.stderr
    assert not (tmp_path / "state").exists()


def test_run_default_is_trusted_with_its_own_caps(tmp_path: Path) -> None:
    """Without --policy the run is trusted: egress is allowed, 200G is still over its memory cap."""
    proc = sandpit_run(tmp_path)
    assert proc.returncode == 1
    assert "the trusted policy allows at most 16 GiB (SANDPIT_POLICY_TRUSTED_MEMORY)" in proc.stderr
    assert "egress" not in proc.stderr


def test_run_bad_policy_setting_exits_two(tmp_path: Path) -> None:
    """An unusable policy variable stops `run` with one line, no traceback."""
    proc = sandpit_run(tmp_path, SANDPIT_POLICY_TRUSTED_MEMORY="much")
    assert proc.returncode == 2 and "SANDPIT_POLICY_TRUSTED_MEMORY: 'much' is not a size" in proc.stderr
    assert "Traceback" not in proc.stderr
