from __future__ import annotations

import base64
import stat
from pathlib import Path

import nacl.utils
import pytest

from resolver.errors import ConfigError, SealingError
from resolver.sealing import Sealer, generate_master_key_file, load_master_key


def test_seal_and_open_round_trip() -> None:
    sealer = Sealer(nacl.utils.random(32))
    seed = b"SUAM2SEEDNOTREALLYBUTSECRET"
    sealed = sealer.seal(seed)
    assert seed not in sealed
    assert sealer.open(sealed) == seed
    # Each seal uses a fresh nonce.
    assert sealer.seal(seed) != sealed
    assert "SUAM" not in repr(sealer)


def test_wrong_key_or_damage_is_refused() -> None:
    sealed = Sealer(nacl.utils.random(32)).seal(b"secret")
    with pytest.raises(SealingError):
        Sealer(nacl.utils.random(32)).open(sealed)
    with pytest.raises(SealingError):
        Sealer(nacl.utils.random(32)).open(b"\x02" + sealed[1:])


def test_master_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k" / "master.key"
    assert generate_master_key_file(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    assert generate_master_key_file(path) is False
    assert path.read_bytes() == first
    assert len(load_master_key(path, env={})) == 32


def test_master_key_from_environment(tmp_path: Path) -> None:
    key = nacl.utils.random(32)
    env = {"RESOLVER_MASTER_KEY": base64.b64encode(key).decode()}
    assert load_master_key(tmp_path / "absent", env=env) == key
    with pytest.raises(ConfigError, match="RESOLVER_MASTER_KEY"):
        load_master_key(tmp_path / "absent", env={"RESOLVER_MASTER_KEY": "c2hvcnQ="})
    with pytest.raises(ConfigError, match="master_key_file"):
        load_master_key(tmp_path / "absent", env={})
