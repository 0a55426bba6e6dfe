"""skopeo, sandpit's transport for the OCI distribution protocol and image archives (adapter).

Why Debian's ``skopeo`` rather than a client of sandpit's own over httpx: it already speaks the
protocol with everything a site configures for its container tools (anonymous access, Docker
Hub's bearer-token flow, basic auth from an ``auth.json``, ``registries.conf`` mirrors and
blocked or insecure registries, certificates in ``/etc/docker/certs.d``, ``docker save`` and OCI
archives) and it checks every blob it copies against its digest. sandpit only asks it to fetch:
``skopeo inspect --raw`` for a manifest or a config, and ``skopeo copy`` into an OCI layout with a
shared blob directory in which the layers sandpit already holds are present as empty files
(skopeo 1.9 reuses a blob whose file exists; measured), so only the missing layers travel. What
skopeo fetched is checked again by sandpit before use (the manifest's sha256 here, every blob by
the unpacker), so a fault in either is caught by the other.

A pull's skopeo, and an import's, runs as an unprivileged uid of sandpit's range, in a directory
of its own that holds its home, its temporary files and what it downloads or unpacks
(:mod:`worker.sandbox.registry.pull_box`; an import gets a copy of the archive there). Its
configuration is sandpit's alone: skopeo runs with an empty environment (plus the worker's proxy
variables) and that home, so the operator's ``~/.docker/config.json`` and XDG auth files are never
read. Credentials come only from the auth
file the settings name (``SANDPIT_REGISTRY_AUTH``, copied into the pull's directory for the pull),
never from a pipeline; ``registries.conf`` is ``SANDPIT_REGISTRIES_CONF`` copied to
``$HOME/.config/containers/registries.conf`` (skopeo 1.9 ignores ``CONTAINERS_REGISTRIES_CONF``;
measured), else the host's ``/etc/containers/registries.conf``. The signature policy is a file of
sandpit's own that accepts any image: sandpit pins content by digest and does not verify signatures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker import TYPE_CHECKING
from worker.errors import ImageError, UnknownImage

if TYPE_CHECKING:
    from worker.sandbox.registry.pull_box import PullBox

POLICY = b'{"default": [{"type": "insecureAcceptAnything"}]}\n'
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
MANIFEST_LIMIT = 4 << 20  # a manifest, index or config larger than this is refused
_REFUSED = re.compile(r"manifest unknown|name unknown|not found|unauthorized|authentication required|denied|"
                      r"blocked|no image found|does not exist", re.IGNORECASE)


class PullError(ImageError):
    """The registry or archive could not be read (network, TLS, a fault): infra_error, worth a retry."""


class PullRefused(UnknownImage):
    """The registry says there is no such image, or refuses it to sandpit's credentials."""


class Skopeo:
    """skopeo, always in a pull's box as its unprivileged uid (:mod:`.pull_box`): there is no way to
    run it as root here, for a pull or an import."""

    def __init__(self, *, auth_file: Path | None = None, registries_conf: Path | None = None,
                 timeout_s: float = 3600.0, binary: str = "skopeo") -> None:
        self.auth_file = auth_file
        self.registries_conf = registries_conf
        self.timeout_s = timeout_s
        self.binary = binary

    def registries_conf_bytes(self) -> bytes | None:
        """The operator's ``registries.conf`` (None: skopeo reads the host's)."""
        if self.registries_conf is None:
            return None
        try:
            return self.registries_conf.read_bytes()
        except OSError as exc:
            raise PullError(f"cannot read the registries configuration {self.registries_conf}: "
                            f"{exc.strerror}") from None

    def _run_as(self, box: PullBox) -> tuple[list[str], dict[str, str], Path]:
        """(argv prefix, environment, home) of one skopeo process: in the box, as its uid."""
        if shutil.which(self.binary) is None:
            raise PullError("skopeo is not installed (apt-get install skopeo): sandpit pulls images with it")
        home, prefix = box.home, [*box.argv(), self.binary]
        assert box.path is not None
        tmp = box.path / "tmp"
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "TMPDIR": str(tmp)}
        env.update({k: v for k, v in os.environ.items() if k in _PROXY_VARS})
        return [*prefix, "--policy", str(home / "policy.json"), "--tmpdir", str(tmp)], env, home

    @staticmethod
    def _auth(flag: str, box: PullBox, home: Path) -> list[str]:
        if box.auth_path is None:
            return [flag, str(home / "no-auth.json")]  # an absent file: anonymous, and no default file read
        return [flag, str(box.auth_path)]

    # -- what sandpit asks -----------------------------------------------------------------
    def inspect(self, image: str, *, box: PullBox, config: bool = False) -> bytes:
        """The raw manifest (or, with ``config``, the raw config) of ``image`` (``docker://...``)."""
        base, env, home = self._run_as(box)
        cmd = [*base, "inspect", "--raw", "--retry-times", "2", *self._auth("--authfile", box, home)]
        if config:
            cmd.append("--config")
        cmd.append(image)
        try:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=min(self.timeout_s, 300.0), check=False, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise PullError(f"reading {_shown(image)} took longer than 300 s") from None
        if proc.returncode != 0:
            raise translate(image, proc.stderr)
        if len(proc.stdout) > MANIFEST_LIMIT:
            raise PullError(f"the {'config' if config else 'manifest'} of {_shown(image)} is larger than "
                            f"{MANIFEST_LIMIT} bytes (refused)")
        return proc.stdout

    def copy(self, source: str, dest: str, args: tuple[str, ...] = (), *, box: PullBox,
             poll: Callable[[], None] = lambda: None, cancel: threading.Event | None = None,
             log: Path | None = None) -> None:
        """``skopeo copy SOURCE DEST``, calling ``poll`` about five times a second while it runs (it
        may raise to stop the copy); ``cancel`` stops it too. Its stderr goes to ``log``, else to a
        file with no name, read for the error message."""
        base, env, home = self._run_as(box)
        cmd = [*base, "copy", "--quiet", "--retry-times", "2", *self._auth("--src-authfile", box, home), *args,
               source, dest]
        # stderr: the log asked for, else a file with no name (nothing is left behind, nothing to swap)
        with open(log, "w+b") if log is not None else tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
            deadline = time.monotonic() + self.timeout_s
            try:
                while True:
                    try:
                        proc.wait(timeout=0.2)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    if cancel is not None and cancel.is_set():
                        raise PullError("the pull was cancelled")
                    if time.monotonic() > deadline:
                        raise PullError(f"copying {_shown(source)} took longer than {self.timeout_s:g} s")
                    poll()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            text = err.read(64 * 1024)
        if proc.returncode != 0:
            raise translate(source, text)


def translate(image: str, stderr: bytes) -> ImageError:
    """skopeo's failure as sandpit's error: a registry's "no such image" or "denied" is a refusal
    (the job named something it cannot have), anything else a failure to reach or read it.

    >>> type(translate("docker://x", b'level=fatal msg="reading manifest 1 in x: manifest unknown"')).__name__
    'PullRefused'
    >>> str(translate("docker://x", b'level=fatal msg="dial tcp 127.0.0.1:9: connect: connection refused"'))
    "cannot pull 'docker://x': dial tcp 127.0.0.1:9: connect: connection refused"
    """
    text = stderr.decode("utf-8", "replace")
    found = re.findall(r'msg="((?:[^"\\]|\\.)*)"', text)
    message = (found[-1] if found else text.strip().splitlines()[-1] if text.strip() else "skopeo failed")
    message = message.replace('\\"', '"')
    message = re.sub(r"[\x00-\x1f\x7f]", " ", message)[:400]
    if _REFUSED.search(message):
        return PullRefused(f"cannot pull {_shown(image)}: {message}")
    return PullError(f"cannot pull {_shown(image)}: {message}")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:197] + "...")

