"""The runtime command lines sandpit builds (pure: no runtime is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.sandbox.runtime import RUNSC_NETWORK, Runtime


def argv(name: str, network: str) -> list[str]:
    return Runtime(name, f"/usr/bin/{name}", Path("/run/sandpit/runtime") / name, network).run_argv(
        Path("/b"), "sandpit-x", Path("/l"))


@pytest.mark.parametrize("network, flag", [("none", "--network=none"), ("egress", "--network=sandbox")])
def test_runsc_uses_its_own_netstack(network, flag):
    """none: gVisor's netstack with a loopback only; egress: its netstack on sandpit's veth."""
    cmd = argv("runsc", network)
    assert flag in cmd and cmd.index(flag) < cmd.index("run")


@pytest.mark.parametrize("network", sorted(RUNSC_NETWORK))
def test_runsc_never_gets_the_host_network_stack(network):
    assert not any(word.startswith("--network=host") for word in argv("runsc", network))


@pytest.mark.parametrize("name", ["crun", "runc"])
@pytest.mark.parametrize("network", ["none", "egress"])
def test_crun_and_runc_take_no_network_flag(name, network):
    """Their network is the namespace in config.json."""
    assert not any(word.startswith("--network") for word in argv(name, network))


def test_unknown_network_mode_is_refused():
    with pytest.raises(ValueError):
        Runtime("crun", "/usr/bin/crun", Path("/r")).for_network("host")


def test_a_runtime_with_a_read_only_view_starts_from_it_and_says_so():
    """``run`` execs the view, with the clone marker in its environment; without a view, the
    binary and no marker (the runtime then clones itself)."""
    rt = Runtime("crun", "/usr/bin/crun", Path("/r"), launch="/run/sandpit/bin/crun")
    assert rt.run_argv(Path("/b"), "sandpit-x", Path("/l"))[0] == "/run/sandpit/bin/crun"
    assert rt.run_env()["_LIBCONTAINER_CLONED_BINARY"] == "1"
    assert rt.for_network("egress").launch == "/run/sandpit/bin/crun"
    plain = Runtime("crun", "/usr/bin/crun", Path("/r"))
    assert plain.run_argv(Path("/b"), "sandpit-x", Path("/l"))[0] == "/usr/bin/crun"
    assert "_LIBCONTAINER_CLONED_BINARY" not in plain.run_env()
