"""Errors of the worker room.

SandpitError
├── ConfigError            bad settings or an unusable host (no working runtime, no btrfs, ...)
├── ImageError             an image is unknown, unbuilt or failed to build
├── SandboxError           a sandbox could not be made or torn down (infra_error)
│   └── RuntimeUnavailable the requested OCI runtime does not work on this host
└── InvalidRequest         the job's request is refused before anything starts (invalid_spec)

The CLI maps every one of them to exit status 125 and a one-line message; the worker
task maps SandboxError to status ``error`` and InvalidRequest to ``failed``/``invalid_spec``.
"""


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
