"""The one settings object of a sandpit process, built at the entry point from a mapping.

Nothing here reads ``os.environ`` on import; ``Settings.from_env(os.environ)`` is called by the CLI
(tests pass their own mapping).

Recognised variables: ``SANDPIT_STATE_DIR`` (default /var/lib/sandpit), ``SANDPIT_RUN_DIR``
(default /run/sandpit), ``SANDPIT_IMAGES_DIR`` (recipes; default the repository's ``images/``),
``SANDPIT_RUNTIME`` (crun|runc|runsc; default: the first that works here),
``SANDPIT_SCRATCH_SIZE`` (size of the btrfs scratch file holding job disks; default 20G),
``SANDPIT_UID_BASE`` (first host uid given to jobs; default 100000000; the ranges are leased
host-wide, across instances), ``SANDPIT_UID_SLOTS``. A run dir and a state dir make an instance
(``instance_id``; see ``worker/sandbox/instance.py``).
Networking (``--network egress``): ``SANDPIT_RESOLVERS`` (comma-separated DNS servers for jobs),
``SANDPIT_SUBNET`` (job subnet; default: the first candidate colliding with no host route),
``SANDPIT_NET_ALLOW`` (comma-separated extra CIDRs jobs may reach), ``SANDPIT_NET_HOST_NETNS``
(a network namespace file that plays "host" for the bridge and rules; default this process's own).
Retention of local runs and ``exec`` (worker/local/retention.py): ``SANDPIT_RETENTION`` (their logs and
artifacts are removed after this long; default 7d), ``SANDPIT_RETENTION_SIZE`` (and, oldest first, past
this total; default 10G), ``SANDPIT_CACHE_SIZE`` (local runs' ``cache:``, least recently used evicted
past this; default 5G), ``SANDPIT_GC_EVERY`` (the automatic collection at the start of ``run``/``exec``
runs at most this often; default 10m; 0: never automatically).
Services (docs/services.md): ``SANDPIT_SERVICE_WAIT`` (how long a job waits for its services' ports
before it starts anyway, GitLab Runner's ``wait_for_services_timeout``; default 30s; 0: no wait).
The service (worker/service/context.py): ``SANDPIT_DATABASE_URL`` (default SQLite in the state dir),
``SANDPIT_REDIS_URL`` (default redis://127.0.0.1:6379/0), ``SANDPIT_LEASE_S`` (default 20),
``SANDPIT_SWEEP_S`` (default 5), ``SANDPIT_HEARTBEAT_S`` (default 10), ``SANDPIT_PUBLIC_URL`` (else
``SANDPIT_API_URL``: the address in ``CI_JOB_URL``), ``SANDPIT_ARTIFACT_TRANSPORT`` (local|http),
``SANDPIT_JOB_TOKEN_KEY_FILE`` (http: the key file jobs' tokens are signed with, the API's too).
The API's clients (``submit``, ``repos``, ...): ``SANDPIT_API_URL`` (default http://127.0.0.1:8000),
``SANDPIT_TOKEN``, ``SANDPIT_WEBHOOK_SECRET``, ``SANDPIT_FORGE_TOKEN`` (kept as :class:`Secret`, which
a ``repr`` of the settings does not show).

Every process builds this once at its entry point (the CLI's ``main``, the Celery worker's
``worker_init``) and passes it down; no other module of ``worker/`` reads ``os.environ`` for a
setting (the environment handed on to child processes is another matter: it is theirs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipelines.record import field, record
from worker import TYPE_CHECKING
from worker.errors import ConfigError
from worker.sandbox.units import parse_duration, parse_size

if TYPE_CHECKING:
    from pipelines.policy import Policy
    from worker.sandbox.network.settings import NetworkSettings
    from worker.sandbox.registry.config import RegistryConfig

REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_API_URL = "http://127.0.0.1:8000"


class Secret(str):
    """A setting that is a credential: the value as a ``str``, but ``repr`` (so a logged or printed
    ``Settings``) shows stars."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


@record(frozen=True)
class Settings:
    state_dir: Path = Path("/var/lib/sandpit")
    run_dir: Path = Path("/run/sandpit")
    images_dir: Path = REPO_IMAGES
    runtime: str | None = None
    scratch_bytes: int = 20 * 1024**3
    uid_base: int = 100_000_000
    uid_slots: int = 256
    #: SANDPIT_RESOLVERS: resolvers egress jobs use directly; empty: sandpit's dnsmasq on the bridge
    #: gateway, forwarding to the host's own (worker/sandbox/network/forwarder.py)
    resolvers: tuple[str, ...] = ()
    subnet: str | None = None
    net_allow: tuple[str, ...] = ()
    net_host_netns: Path | None = None
    #: ready egress network namespaces kept for jobs (0: none; see docs/network.md)
    net_pool: int = 16
    #: warm sandboxes the service worker keeps (worker/sandbox/warm.py); None: one per job slot, 0: none
    warm_sandboxes: int | None = None
    #: the longest a warm sandbox waits for a job before it is closed
    warm_idle_s: float = 60.0
    retention_s: float = 7 * 86400.0
    retention_bytes: int = 10 * 1024**3
    cache_bytes: int = 5 * 1024**3
    gc_every_s: float = 600.0
    registries: tuple[str, ...] = ()
    registries_conf: Path | None = None
    registry_auth: Path | None = None
    pull_policy: str = "if-not-present"
    images_max_bytes: int = 0
    layer_max_bytes: int = 8 * 1024**3
    #: SANDPIT_SERVICE_WAIT: the longest a job waits for its services' ports (0: it does not wait)
    service_wait_s: float = 30.0
    #: the service's database; None: SQLite in the state dir (``database()``)
    database_url: str | None = None
    #: SANDPIT_REDIS_URL as given (None: unset, so ``sandpit up`` starts a redis-server of its own)
    redis_url_set: str | None = None
    lease_s: float = 20.0
    sweep_s: float = 5.0
    heartbeat_s: float = 10.0
    public_url: str | None = None
    artifact_transport: str = "local"
    api_url: str = DEFAULT_API_URL
    #: SANDPIT_JOB_TOKEN_KEY_FILE: the keys jobs' tokens are signed with (http transport; read
    #: when the transport is made); None: tokens are rows (pipelines/store/job_tokens.py)
    job_token_key_file: Path | None = None
    api_token: Secret | None = None
    webhook_secret: Secret | None = None
    forge_token: Secret | None = None
    #: the SANDPIT_POLICY_* variables (pipelines/policy.py reads them: ``policy()``)
    policy_env: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)
    #: SANDPIT_TRACE_FILE: where the worker appends its step marks (pipelines/trace.py); None: off
    trace_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            state_dir=Path(env.get("SANDPIT_STATE_DIR", "/var/lib/sandpit")),
            run_dir=Path(env.get("SANDPIT_RUN_DIR", "/run/sandpit")),
            images_dir=Path(env.get("SANDPIT_IMAGES_DIR", str(REPO_IMAGES))),
            runtime=env.get("SANDPIT_RUNTIME") or None,
            scratch_bytes=parse_size(env.get("SANDPIT_SCRATCH_SIZE", "20G")),
            uid_base=_int(env, "SANDPIT_UID_BASE", 100_000_000),
            uid_slots=_int(env, "SANDPIT_UID_SLOTS", 256),
            resolvers=_csv(env.get("SANDPIT_RESOLVERS", "")),
            subnet=_canonical_subnet(env.get("SANDPIT_SUBNET", "")),
            net_allow=_csv(env.get("SANDPIT_NET_ALLOW", "")),
            net_host_netns=Path(env["SANDPIT_NET_HOST_NETNS"]) if env.get("SANDPIT_NET_HOST_NETNS") else None,
            net_pool=_int(env, "SANDPIT_NET_POOL", 16),
            warm_sandboxes=_int(env, "SANDPIT_WARM_SANDBOXES", 0) if env.get("SANDPIT_WARM_SANDBOXES", "").strip()
            else None,
            warm_idle_s=_positive(env, "SANDPIT_WARM_IDLE", 60.0, most=86400.0),
            retention_s=_seconds(env, "SANDPIT_RETENTION", 7 * 86400.0),
            retention_bytes=_bytes(env, "SANDPIT_RETENTION_SIZE", 10 * 1024**3),
            cache_bytes=_bytes(env, "SANDPIT_CACHE_SIZE", 5 * 1024**3),
            gc_every_s=_seconds(env, "SANDPIT_GC_EVERY", 600.0),
            registries=_csv(env.get("SANDPIT_REGISTRIES", "")),
            registries_conf=Path(env["SANDPIT_REGISTRIES_CONF"]) if env.get("SANDPIT_REGISTRIES_CONF") else None,
            registry_auth=Path(env["SANDPIT_REGISTRY_AUTH"]) if env.get("SANDPIT_REGISTRY_AUTH") else None,
            pull_policy=_choice(env, "SANDPIT_PULL_POLICY", ("if-not-present", "always", "never")),
            images_max_bytes=_bytes(env, "SANDPIT_IMAGES_MAX_SIZE", 0),
            layer_max_bytes=_bytes(env, "SANDPIT_LAYER_MAX_SIZE", 8 * 1024**3),
            service_wait_s=_seconds(env, "SANDPIT_SERVICE_WAIT", 30.0, most=3600.0),
            database_url=env.get("SANDPIT_DATABASE_URL") or None,
            redis_url_set=env.get("SANDPIT_REDIS_URL") or None,
            lease_s=_positive(env, "SANDPIT_LEASE_S", 20.0),
            sweep_s=_positive(env, "SANDPIT_SWEEP_S", 5.0),
            heartbeat_s=_positive(env, "SANDPIT_HEARTBEAT_S", 10.0, most=3600.0),
            public_url=env.get("SANDPIT_PUBLIC_URL") or env.get("SANDPIT_API_URL") or None,
            artifact_transport=env.get("SANDPIT_ARTIFACT_TRANSPORT") or "local",
            api_url=(env.get("SANDPIT_API_URL") or DEFAULT_API_URL).rstrip("/"),
            job_token_key_file=Path(env["SANDPIT_JOB_TOKEN_KEY_FILE"]) if env.get("SANDPIT_JOB_TOKEN_KEY_FILE")
            else None,
            api_token=_secret(env, "SANDPIT_TOKEN"),
            webhook_secret=_secret(env, "SANDPIT_WEBHOOK_SECRET"),
            forge_token=_secret(env, "SANDPIT_FORGE_TOKEN"),
            policy_env={name: value for name, value in env.items() if name.startswith("SANDPIT_POLICY_")},
            trace_file=Path(env["SANDPIT_TRACE_FILE"]) if env.get("SANDPIT_TRACE_FILE") else None,
        )

    def policy(self) -> Policy:
        """The trust levels' caps and defaults (raises ``PolicyError`` naming a bad variable; imported
        lazily: ``exec`` never needs it)."""
        from pipelines.policy import Policy

        return Policy.from_env(self.policy_env)

    @property
    def redis_url(self) -> str:
        return self.redis_url_set or DEFAULT_REDIS_URL

    def database(self) -> str:
        """The service's database URL: SANDPIT_DATABASE_URL, else SQLite in the state dir."""
        from pipelines.store.db import default_url  # the store (SQLAlchemy) only when a database is used

        return self.database_url or default_url(self.state_dir)

    def registry(self) -> RegistryConfig:
        """Settings of image pulls (imported lazily: only a pull or an import needs them)."""
        from worker.sandbox.registry.config import LayerCaps, RegistryConfig

        return RegistryConfig(allowed=self.registries, auth_file=self.registry_auth,
                              registries_conf=self.registries_conf, policy=self.pull_policy,
                              caps=LayerCaps(max_bytes=self.layer_max_bytes), max_store_bytes=self.images_max_bytes,
                              run_dir=self.run_dir, uid_base=self.uid_base, uid_slots=self.uid_slots)

    def network(self) -> NetworkSettings:
        """Settings of the network layer (imported lazily: only egress jobs need it)."""
        import ipaddress

        from worker.sandbox.instance import instance_names
        from worker.sandbox.network.settings import NetworkSettings

        names = instance_names(self.instance_id)
        return NetworkSettings(
            state_dir=self.state_dir, resolvers=self.resolvers, allow=self.net_allow,
            subnet=ipaddress.IPv4Network(self.subnet) if self.subnet else None,
            host_netns=self.net_host_netns, run_dir=self.run_dir, pool_size=self.net_pool,
            bridge=names.bridge, table=names.table, veth_prefix=names.veth_prefix,
        )

    @property
    def instance_id(self) -> str:
        """'' for the default instance, else 8 hex digits naming this run dir and state dir on the host
        (cgroup parent, bridge, nft tables, veths: see ``worker/sandbox/instance.py``)."""
        from worker.sandbox.instance import resolved_instance_id

        return resolved_instance_id(self.run_dir, self.state_dir)

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def scratch_dir(self) -> Path:
        return self.state_dir / "scratch"

    @property
    def locks_dir(self) -> Path:
        return self.run_dir / "locks"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={text!r} is not a whole number >= 0")
    return value


def _positive(env: Mapping[str, str], name: str, default: float, most: float = float("inf")) -> float:
    """A number of seconds > 0 (and <= ``most``); anything else is a ConfigError naming the variable.

    >>> _positive({"SANDPIT_LEASE_S": "2.5"}, "SANDPIT_LEASE_S", 20.0), _positive({}, "SANDPIT_LEASE_S", 20.0)
    (2.5, 20.0)
    """
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= most:
        bound = "" if most == float("inf") else f" and {most:g}"
        raise ConfigError(f"{name} must be a number of seconds between 0{bound}, not {text!r}")
    return value


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    text = env.get(name, "").strip()
    return Secret(text) if text else None


def _seconds(env: Mapping[str, str], name: str, default: float, most: float = float("inf")) -> float:
    """A duration setting (``7d``, ``90m``, ``3600``) of at most ``most`` seconds; ``0`` is allowed (off).

    >>> _seconds({"SANDPIT_SERVICE_WAIT": "1m30s"}, "SANDPIT_SERVICE_WAIT", 30.0)
    90.0
    """
    text = env.get(name, "").strip()
    if not text:
        return default
    if text == "0":
        return 0.0
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r}: {exc}") from None
    if value > most:
        raise ConfigError(f"{name}={text!r} is longer than {most:g} s")
    return value


def _bytes(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r}: {exc}") from None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    text = env.get(name, "").strip() or choices[0]
    if text not in choices:
        raise ConfigError(f"{name}={text!r} is not one of {', '.join(choices)}")
    return text


def _canonical_subnet(text: str) -> str | None:
    """``SANDPIT_SUBNET`` as ipaddress writes it (``10.5.0.0/16``, not ``10.5.0.0/16 `` or ``10.5.0.1/16``
    refused), so every process names the same network the same way; None when unset."""
    if not text.strip():
        return None
    import ipaddress

    try:
        return str(ipaddress.IPv4Network(text.strip()))
    except ValueError as exc:
        raise ConfigError(f"SANDPIT_SUBNET={text!r} is not an IPv4 network: {exc}") from exc


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
