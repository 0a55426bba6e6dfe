"""What the operator decides about pulls and unpacking (values only, import-light: every ``sandpit
exec`` builds one, and the modules that pull are imported only when a pull or import happens)."""

from __future__ import annotations

from pathlib import Path

from pipelines.record import field, record


@record(frozen=True)
class LayerCaps:
    #: bytes of the uncompressed archive, and (separately) of file data written
    max_bytes: int = 8 << 30
    max_members: int = 1_000_000
    max_path_bytes: int = 4096


@record(frozen=True)
class RegistryConfig:
    """From the settings; never from a pipeline."""

    allowed: tuple[str, ...] = ()  # SANDPIT_REGISTRIES; "*" for any
    auth_file: Path | None = None  # SANDPIT_REGISTRY_AUTH (an auth.json)
    registries_conf: Path | None = None  # SANDPIT_REGISTRIES_CONF (mirrors, insecure registries)
    policy: str = "if-not-present"  # SANDPIT_PULL_POLICY: always | if-not-present | never
    caps: LayerCaps = field(default_factory=LayerCaps)
    max_store_bytes: int = 0  # SANDPIT_IMAGES_MAX_SIZE: pulled layers above this are evicted, LRU; 0: no cap
    run_dir: Path | None = None  # where layer views are mounted (dropped when a layer is removed)
    #: the uid range a pull's skopeo takes a slot of (SANDPIT_UID_BASE, SANDPIT_UID_SLOTS: the jobs')
    uid_base: int = 100_000_000
    uid_slots: int = 256
    #: where a pull's private directory is made (a path the pull's uid can reach); None: the state dir
    pull_dir: Path | None = None
