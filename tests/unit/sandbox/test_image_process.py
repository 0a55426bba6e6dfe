"""How a container of an image starts (tables of cases, no services): the image's User read as
Docker reads it, the Entrypoint rules of jobs (GitLab Runner's) and services (``docker run``'s),
what the job's OCI process gets from them, and the operator's wait for services."""

from __future__ import annotations

import pytest

from pipelines.language.model import Image, Job, Loc
from worker.errors import ConfigError, InvalidRequest
from worker.jobs import request_for
from worker.sandbox import spec as oci
from worker.sandbox.image_process import ImageUser, JobProcess, job_argv, job_process, parse_user, service_argv
from worker.sandbox.registry.manifests import ImageConfig
from worker.sandbox.request import SandboxRequest, validate_request
from worker.settings import Settings

USERS = ("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\nbroken:x:abc:1::/:/bin/sh\n"
         "pg:x:70:70::/var/lib/pg:/bin/sh\nnohome:x:80:80::relative:/bin/sh\n")
GROUPS = "root:x:0:\nstaff:x:50:pg,other\nnogroup:x:65534:\nfar:x:70000:pg\npg:x:70:pg\n"


@pytest.mark.parametrize(("user", "found"), [
    ("", ImageUser(0, 0, "/root")),
    ("root", ImageUser(0, 0, "/root")),
    ("nobody", ImageUser(65534, 65534, "/nonexistent")),
    ("65534", ImageUser(65534, 65534, "/nonexistent")),  # a uid is looked up too: its name, home, gid
    ("pg", ImageUser(70, 70, "/var/lib/pg", (50,))),  # groups listing it (its own gid is not repeated)
    ("pg:staff", ImageUser(70, 50, "/var/lib/pg", (70,))),
    ("pg:7", ImageUser(70, 7, "/var/lib/pg", (50, 70))),
    ("1234", ImageUser(1234, 0, "/")),  # not in passwd: gid 0 and home / (runc's defaults)
    ("1234:55", ImageUser(1234, 55, "/")),
    ("nohome", ImageUser(80, 80, "/")),  # a home that is not absolute is not used
])
def test_image_user_as_docker_reads_it(user: str, found: ImageUser) -> None:
    """A name or uid, optionally with a group, looked up in the image's own files."""
    assert parse_user(user, USERS, GROUPS) == found


@pytest.mark.parametrize(("user", "words"), [
    ("postgres", "'postgres' is not in its /etc/passwd"),
    ("broken", "not in its /etc/passwd"),  # a damaged line never matches
    ("pg:wheel", "group 'wheel' is not in its /etc/group"),
    (":staff", "names a group but no user"),
    ("70000", "outside the ids a job has"),
    ("1:70000", "outside the ids a job has"),
])
def test_bad_image_users_are_refused(user: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        parse_user(user, USERS, GROUPS)


SCRIPT = ("/bin/bash", "-c", "make")


@pytest.mark.parametrize(("override", "argv"), [
    (None, ("/entry.sh", "--flag", *SCRIPT)),  # the script is given to the image's Entrypoint
    ((), ("/entry.sh", "--flag", *SCRIPT)),  # Runner passes an empty list as no override
    (("",), SCRIPT),  # entrypoint: [""] removes it
    (("/other.sh",), ("/other.sh", *SCRIPT)),
])
def test_what_a_job_runs(override: tuple[str, ...] | None, argv: tuple[str, ...]) -> None:
    """GitLab Runner's rule: the job's shell runs through the Entrypoint, image:entrypoint replaces it."""
    assert job_argv(SCRIPT, override, ("/entry.sh", "--flag")) == argv


@pytest.mark.parametrize(("entrypoint", "command", "argv"), [
    (None, None, ("docker-entrypoint.sh", "postgres")),
    ((), None, ("docker-entrypoint.sh", "postgres")),
    (None, ("postgres", "-c", "fsync=off"), ("docker-entrypoint.sh", "postgres", "-c", "fsync=off")),
    (("redis-server",), None, ("redis-server",)),  # an entrypoint of its own drops the image's Cmd
    (("redis-server",), ("--port", "7000"), ("redis-server", "--port", "7000")),
    (("",), None, ()),
    (("",), ("sleep", "9"), ("sleep", "9")),
])
def test_what_a_service_runs(entrypoint, command, argv) -> None:
    """docker run's rule for Entrypoint and Cmd."""
    assert service_argv(entrypoint, command, ("docker-entrypoint.sh",), ("postgres",)) == argv


def test_job_process_of_a_recipe_image_or_an_image_without_a_user(tmp_path) -> None:
    """A recipe image (no config) runs the command as it is; an image without User runs it through
    its Entrypoint as the profile's user (nothing of the rootfs is read)."""
    req = SandboxRequest(argv=SCRIPT)
    assert job_process(req, None, "/nonexistent") == JobProcess(SCRIPT)
    config = ImageConfig(diff_ids=(), entrypoint=("/e",))
    assert job_process(req, config, "/nonexistent") == JobProcess(("/e", *SCRIPT))


@pytest.mark.parametrize(("user", "profile", "expected"), [
    ("1234", "default", ImageUser(1234, 0, "/")),
    ("1234", "strict", ImageUser(1234, 0, "/")),
    ("builder", "default", ImageUser(1500, 1500, "/home/builder")),
    ("root", "default", ImageUser(0, 0, "/root")),
    ("root", "strict", None),  # strict never runs root: its own unprivileged uid instead
    ("0:0", "strict", None),
])
def test_job_process_reads_the_user_from_the_rootfs(tmp_path, user: str, profile: str,
                                                    expected: ImageUser | None) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbuilder:x:1500:1500::/home/builder:/bin/sh\n")
    req = SandboxRequest(argv=SCRIPT, profile=profile)  # type: ignore[arg-type]
    assert job_process(req, ImageConfig(diff_ids=(), user=user), str(tmp_path)).user == expected


def test_the_image_passwd_is_read_inside_the_rootfs_never_through_a_symlink_out(tmp_path) -> None:
    """A passwd symlink that would reach a host file (``../..`` up to the host's root, absolute,
    then down to it) resolves inside the image's root, where there is no such file: the name is
    unknown, never looked up in the host's file. An absolute link to the image's own file is read."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("root:x:0:0::/host-home:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    for link in ("../.." * 20 + str(host / "passwd"), str(host / "passwd")):
        (root / "etc" / "passwd").unlink(missing_ok=True)
        (root / "etc" / "passwd").symlink_to(link)
        with pytest.raises(InvalidRequest, match="'root' is not in its /etc/passwd"):
            job_process(SandboxRequest(argv=SCRIPT), ImageConfig(diff_ids=(), user="root"), str(root))
    (root / "etc" / "real").write_text("root:x:0:0::/from-the-image:/bin/sh\n")
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/etc/real")
    user = job_process(SandboxRequest(argv=SCRIPT), ImageConfig(diff_ids=(), user="root"), str(root)).user
    assert user == ImageUser(0, 0, "/from-the-image")


def test_the_oci_process_gets_the_user_its_home_and_groups() -> None:
    """The image's user in the spec: its ids and groups, HOME from passwd under the image's Env and
    the job's variables (later names win); PATH from the image's Env."""
    req = SandboxRequest(argv=SCRIPT, env=(("GREETING", "the job"),))
    spec = oci.build_spec(oci.SpecInputs(
        request=req, rootfs="/r", workspace="/w", uid_base=100_000_000, cgroups_path="/c", seccomp=oci.load_seccomp(),
        image_env=(("PATH", "/opt/tool/bin:/usr/bin:/bin"), ("GREETING", "the image")),
        user=(1234, 0), home="/home/b", groups=(50,)))
    process = spec["process"]
    assert process["user"] == {"uid": 1234, "gid": 0, "additionalGids": [50]}
    env = dict(item.split("=", 1) for item in process["env"])
    assert env["HOME"] == "/home/b" and env["PATH"] == "/opt/tool/bin:/usr/bin:/bin" and env["GREETING"] == "the job"
    assert process["cwd"] == "/workspace"  # the build dir, whatever the image's WorkingDir
    with_home = oci.build_spec(oci.SpecInputs(
        request=req, rootfs="/r", workspace="/w", uid_base=1, cgroups_path="/c", seccomp=oci.load_seccomp(),
        image_env=(("HOME", "/from-env"),), user=(1234, 0), home="/home/b"))
    assert "HOME=/from-env" in with_home["process"]["env"]


def test_request_for_passes_image_entrypoint_and_refuses_nul() -> None:
    job = Job(name="j", stage="s", loc=Loc("f", 1, 1), script=("make",), image=Image("x:1", entrypoint=("",)))
    assert request_for(job).entrypoint == ("",)
    assert "the command or entrypoint contains a NUL byte" in validate_request(
        SandboxRequest(argv=("true",), entrypoint=("a\0b",)))


@pytest.mark.parametrize(("value", "seconds"), [("", 30.0), ("0", 0.0), ("45", 45.0), ("2m", 120.0), ("1.5s", 1.5)])
def test_service_wait_setting(value: str, seconds: float) -> None:
    assert Settings.from_env({"SANDPIT_SERVICE_WAIT": value}).service_wait_s == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "2h"])
def test_bad_service_wait_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="SANDPIT_SERVICE_WAIT"):
        Settings.from_env({"SANDPIT_SERVICE_WAIT": value})
