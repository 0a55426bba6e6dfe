"""Sealed secrets: Fernet with a configured or generated 0600 key; the wrong key opens nothing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from pipelines.forges.sealing import KEY_FILE, Sealer, SealingError


def test_generated_key_file_is_private_and_reused(tmp_path: Path) -> None:
    """Without SANDPIT_SECRET_KEY a key is made once, 0600, and later sealers open what it sealed."""
    sealed = Sealer.from_settings(None, tmp_path).seal("hook-secret")
    mode = stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert "hook-secret" not in sealed
    assert Sealer.from_settings(None, tmp_path).open(sealed) == "hook-secret"


def test_wrong_key_opens_nothing_and_rotation_keeps_old_values(tmp_path: Path) -> None:
    """A database copied without its key gives nothing away; a new first key still opens old values."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = Sealer.from_settings(old, tmp_path).seal("s")
    with pytest.raises(SealingError):
        Sealer.from_settings(new, tmp_path).open(sealed)
    assert Sealer.from_settings(f"{new},{old}", tmp_path).open(sealed) == "s"


def test_bad_key_is_refused_with_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SealingError, match="generate_key"):
        Sealer.from_settings("not-a-key", tmp_path)
