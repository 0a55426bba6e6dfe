"""Settings from the environment: defaults, canonical forms, and a clear error for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.errors import ConfigError
from worker.settings import Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.uid_base, s.uid_slots, s.net_pool, s.subnet) == (100_000_000, 256, 16, None)
    net = s.network()
    assert net.pool_size == 16 and net.run_dir == s.run_dir


def test_subnet_is_canonical_and_pool_can_be_off() -> None:
    s = Settings.from_env({"SANDPIT_SUBNET": " 10.213.0.0/16 ", "SANDPIT_NET_POOL": "0"})
    assert s.subnet == "10.213.0.0/16" and s.net_pool == 0 and s.network().pool_size == 0


def test_warm_sandboxes_are_one_per_slot_unless_told() -> None:
    assert Settings.from_env({}).warm_sandboxes is None and Settings.from_env({}).warm_idle_s == 60.0
    s = Settings.from_env({"SANDPIT_WARM_SANDBOXES": "0", "SANDPIT_WARM_IDLE": "5"})
    assert (s.warm_sandboxes, s.warm_idle_s) == (0, 5.0)
    assert Settings.from_env({"SANDPIT_WARM_SANDBOXES": " 3 "}).warm_sandboxes == 3


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SANDPIT_NET_POOL", "many", "SANDPIT_NET_POOL='many' is not a whole number >= 0"),
    ("SANDPIT_WARM_SANDBOXES", "-2", "SANDPIT_WARM_SANDBOXES='-2' is not a whole number >= 0"),
    ("SANDPIT_WARM_IDLE", "0", "SANDPIT_WARM_IDLE"),
    ("SANDPIT_UID_SLOTS", "-1", "SANDPIT_UID_SLOTS='-1' is not a whole number >= 0"),
    ("SANDPIT_SUBNET", "10.5.0.1/16", "SANDPIT_SUBNET='10.5.0.1/16' is not an IPv4 network"),
    ("SANDPIT_SUBNET", "fd00::/64", "is not an IPv4 network"),
])
def test_bad_values_are_config_errors(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Settings.from_env({name: value})


def test_the_cli_reports_a_bad_setting_without_a_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "worker", "exec", "--", "true"], capture_output=True, text=True,
                          env={"SANDPIT_NET_POOL": "x", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 125
    assert done.stderr == "sandpit: SANDPIT_NET_POOL='x' is not a whole number >= 0\n"


def test_service_and_client_settings() -> None:
    s = Settings.from_env({"SANDPIT_LEASE_S": "3", "SANDPIT_SWEEP_S": "0.5", "SANDPIT_HEARTBEAT_S": "2.5",
                           "SANDPIT_API_URL": "http://127.0.0.1:9000/", "SANDPIT_TOKEN": "s3cr3t-value",
                           "SANDPIT_POLICY_UNTRUSTED_MEMORY": "1G", "SANDPIT_STATE_DIR": "/srv/sp"})
    assert (s.lease_s, s.sweep_s, s.heartbeat_s) == (3.0, 0.5, 2.5)
    assert (s.api_url, s.public_url, s.api_token) == ("http://127.0.0.1:9000", "http://127.0.0.1:9000/", "s3cr3t-value")
    assert s.database() == "sqlite:////srv/sp/sandpit.db" and s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.redis_url_set is None and s.policy_env == {"SANDPIT_POLICY_UNTRUSTED_MEMORY": "1G"}
    assert "s3cr3t" not in repr(s) and "Secret('***')" in repr(s)


@pytest.mark.parametrize(("name", "value"), [("SANDPIT_LEASE_S", "soon"), ("SANDPIT_SWEEP_S", "0"),
                                             ("SANDPIT_HEARTBEAT_S", "3601")])
def test_bad_periods_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be a number of seconds between 0"):
        Settings.from_env({name: value})
