"""NKey helpers: kinds, prefixes, checksums, curve keys."""

from __future__ import annotations

import nacl.public
import nkeys
import pytest

from resolver.natsjwt import (
    JWTKeyTypeError,
    is_public_key,
    new_keypair,
    public_key_kind,
    public_key_of,
    seed_kind,
)
from resolver.natsjwt.keys import signing_keypair

KINDS = {"operator": "O", "account": "A", "user": "U", "server": "N", "curve": "X"}


@pytest.mark.parametrize(("kind", "letter"), KINDS.items())
def test_new_keypair(kind: str, letter: str) -> None:
    public, seed = new_keypair(kind)
    assert isinstance(public, str) and isinstance(seed, bytes)
    assert public[0] == letter and len(public) == 56
    assert seed[:2] == b"S" + letter.encode() and len(seed) == 58
    assert public_key_of(seed) == public
    assert seed_kind(seed) == kind
    assert public_key_kind(public) == kind
    assert is_public_key(public, kind)
    for other in KINDS:
        if other != kind:
            assert not is_public_key(public, other)


def test_xkey_alias_and_curve_public_key() -> None:
    public, seed = new_keypair("xkey")
    assert public.startswith("X")
    assert is_public_key(public, "xkey")
    # Independent derivation of the X25519 public key from the raw seed bytes.
    import base64

    raw = base64.b32decode(seed + b"======")[2:34]
    expected = bytes(nacl.public.PrivateKey(raw).public_key)
    assert base64.b32decode(public)[1:33] == expected


@pytest.mark.parametrize("kind", ["operator", "account", "user", "server"])
def test_signing_seeds_agree_with_nkeys(kind: str) -> None:
    public, seed = new_keypair(kind)
    assert nkeys.from_seed(seed).public_key.decode() == public
    sig = signing_keypair(seed).sign(b"hello")
    assert nkeys.from_seed(seed).verify(b"hello", sig)


def test_the_checksum_is_nkeys_own() -> None:
    # keys.py computes it with binascii.crc_hqx (C) instead of nkeys.crc16 (Python).
    import os

    from resolver.natsjwt.keys import _crc16_bytes

    for data in (b"", b"\x00", bytes(range(256)), *(os.urandom(33) for _ in range(200))):
        assert _crc16_bytes(data) == nkeys.crc16(data).to_bytes(2, "little")


def test_checksum_is_checked() -> None:
    public, _ = new_keypair("account")
    for i in (1, 30, 55):
        flipped = public[:i] + ("B" if public[i] != "B" else "C") + public[i + 1 :]
        assert not is_public_key(flipped, "account")
    assert not is_public_key(public.lower(), "account")
    assert not is_public_key(public + "A", "account")


@pytest.mark.parametrize("value", [None, 1, b"A", "", "hello", "A" * 55 + "B", "A" * 57])
def test_is_public_key_never_raises(value: object) -> None:
    assert is_public_key(value, "account") is False


def test_unknown_kind() -> None:
    public, _ = new_keypair("account")
    assert is_public_key(public, "cluster") is False
    with pytest.raises(ValueError, match="unknown nkey kind"):
        new_keypair("cluster")


def test_bad_seed_errors_do_not_leak() -> None:
    _, seed = new_keypair("user")
    bad = seed[:-2] + (b"AA" if seed[-2:] != b"AA" else b"BB")
    for value in (bad, seed.decode()[:-1], b"PUBLICKEY"):
        with pytest.raises(JWTKeyTypeError) as info:
            public_key_of(value)
        text = str(info.value) + repr(info.value)
        assert (value.decode() if isinstance(value, bytes) else value) not in text
    with pytest.raises(JWTKeyTypeError):
        signing_keypair(new_keypair("curve")[1])
