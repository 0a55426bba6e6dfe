"""Errors of the worker room: one root, so every failure of sandpit's own has one catch.

SandpitError
├── ConfigError            bad settings or an unusable host (no btrfs, ...)            infra_error
├── ImageError             the image store failed (not built, damaged, build failed)   infra_error
│   └── UnknownImage       the request names an image this store does not know        invalid_spec
├── SandboxError           a sandbox could not be made or torn down                    infra_error
│   ├── RuntimeUnavailable the requested OCI runtime does not work on this host
│   └── NetworkError       the job's network could not be made (worker/sandbox/network/errors.py
│                          holds its own subtree: netlink, host side, addresses, backlog)
└── InvalidRequest         the job's request is refused before anything starts        invalid_spec

The right column is how a job ends: ``InvalidRequest`` (and so ``UnknownImage``, which is both)
is a refusal of what was asked and ends ``failed``/``invalid_spec``; every other ``SandpitError``
is sandpit's own failure and ends ``error``/``infra_error``, with its message. ``Engine.run`` does
that mapping once (and turns any other ``Exception`` into ``error``/``infra_error`` too, naming
its type), the executor and local mode use the same rule, and the CLI exits 125 for both.
"""

from __future__ import annotations

from pipelines.job_record import Reason, Status, Verdict


class SandpitError(Exception):
    """Root of every error sandpit raises on purpose."""


class ConfigError(SandpitError):
    pass


class ImageError(SandpitError):
    pass


class SandboxError(SandpitError):
    pass


class RuntimeUnavailable(SandboxError):
    pass


class InvalidRequest(SandpitError):
    pass


class UnknownImage(ImageError, InvalidRequest):
    """The request's ``image`` names nothing the store has: a refusal, not a failure of the store."""


def job_outcome(exc: BaseException) -> Verdict:
    """How a job that ended with ``exc`` before or around its command ends (the right column above).

    >>> refused = job_outcome(InvalidRequest("memory must be at least 8M"))
    >>> str(refused.status), str(refused.reason), refused.message
    ('failed', 'invalid_spec', 'memory must be at least 8M')
    >>> failed = job_outcome(SandboxError("cannot mount"))
    >>> str(failed.status), str(failed.reason)
    ('error', 'infra_error')
    >>> job_outcome(KeyError("x")).message
    "internal error: KeyError: 'x'"
    """
    if isinstance(exc, InvalidRequest):
        return Verdict(Status.FAILED, Reason.INVALID_SPEC, str(exc) or type(exc).__name__)
    if isinstance(exc, SandpitError):
        return Verdict(Status.ERROR, Reason.INFRA_ERROR, str(exc) or type(exc).__name__)
    return Verdict(Status.ERROR, Reason.INFRA_ERROR, f"internal error: {type(exc).__name__}: {exc}")
