"""The one settings object of a sandpit process, built at the entry point from a mapping.

Nothing here reads ``os.environ`` on import; ``Settings.from_env(os.environ)`` is called by the CLI
(tests pass their own mapping).

Recognised variables: ``SANDPIT_STATE_DIR`` (default /var/lib/sandpit), ``SANDPIT_RUN_DIR``
(default /run/sandpit), ``SANDPIT_IMAGES_DIR`` (recipes; default the repository's ``images/``),
``SANDPIT_RUNTIME`` (crun|runc|runsc; default: the first that works here),
``SANDPIT_SCRATCH_SIZE`` (size of the btrfs scratch file holding job disks; default 20G),
``SANDPIT_UID_BASE`` (first host uid given to jobs; default 100000000), ``SANDPIT_UID_SLOTS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worker.sandbox.units import parse_size

REPO_IMAGES = Path(__file__).resolve().parent.parent / "images"


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path("/var/lib/sandpit")
    run_dir: Path = Path("/run/sandpit")
    images_dir: Path = REPO_IMAGES
    runtime: str | None = None
    scratch_bytes: int = 20 * 1024**3
    uid_base: int = 100_000_000
    uid_slots: int = 256
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            state_dir=Path(env.get("SANDPIT_STATE_DIR", "/var/lib/sandpit")),
            run_dir=Path(env.get("SANDPIT_RUN_DIR", "/run/sandpit")),
            images_dir=Path(env.get("SANDPIT_IMAGES_DIR", str(REPO_IMAGES))),
            runtime=env.get("SANDPIT_RUNTIME") or None,
            scratch_bytes=parse_size(env.get("SANDPIT_SCRATCH_SIZE", "20G")),
            uid_base=int(env.get("SANDPIT_UID_BASE", "100000000")),
            uid_slots=int(env.get("SANDPIT_UID_SLOTS", "256")),
        )

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def scratch_dir(self) -> Path:
        return self.state_dir / "scratch"

    @property
    def locks_dir(self) -> Path:
        return self.run_dir / "locks"
