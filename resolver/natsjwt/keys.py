"""NKey helpers: create key pairs, derive public keys, validate public keys.

An nkey is base32 (standard alphabet, no padding) of ``prefix byte(s) + 32 raw bytes +
CRC16 (little endian)``. Public keys start with one letter that names their kind; seeds
start with ``S`` followed by that letter. Seeds are secrets: they are never put in an
exception message or a repr here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from typing import Final

import nacl.public
import nacl.signing
import nkeys

from .errors import JWTKeyTypeError

# Prefix bytes of public keys, as in the Go nkeys package. nkeys-py 0.2.1 has no constant
# (and no support) for curve keys, so that one is spelled out here.
PREFIX_BYTE_CURVE: Final = 23 << 3

PREFIX_BYTES: Final[dict[str, int]] = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
    "server": nkeys.PREFIX_BYTE_SERVER,
    "curve": PREFIX_BYTE_CURVE,
}
KIND_LETTERS: Final[dict[str, str]] = {
    "operator": "O",
    "account": "A",
    "user": "U",
    "server": "N",
    "curve": "X",
}
_KIND_ALIASES: Final[dict[str, str]] = {"xkey": "curve"}
_KIND_BY_PREFIX: Final[dict[int, str]] = {v: k for k, v in PREFIX_BYTES.items()}

_PUBLIC_KEY_RE: Final = re.compile(r"[A-Z2-7]{56}")
# A seed is 2 prefix bytes + 32 + 2 CRC = 36 bytes = 58 base32 characters (no padding).
_SEED_RE: Final = re.compile(r"S[A-Z2-7]{57}")


def normalize_kind(kind: str) -> str:
    """Return the canonical kind name (``xkey`` is an alias of ``curve``)."""
    canonical = _KIND_ALIASES.get(kind, kind)
    if canonical not in PREFIX_BYTES:
        raise ValueError(f"unknown nkey kind {kind!r}; expected one of {sorted(PREFIX_BYTES)}")
    return canonical


def _crc16_bytes(data: bytes) -> bytes:
    # nkeys' CRC16 is CRC-16/XMODEM, which binascii.crc_hqx computes in C; nkeys.crc16
    # loops in Python, and every new user key a request brings is checked with it
    # (tests/natsjwt check the two agree).
    return binascii.crc_hqx(data, 0).to_bytes(2, byteorder="little")


def _encode_public(prefix: int, raw: bytes) -> str:
    body = bytes([prefix]) + raw
    return base64.b32encode(body + _crc16_bytes(body)).decode("ascii")


def _encode_curve_seed(raw: bytes) -> bytes:
    # Same layout as nkeys.encode_seed, which rejects the curve prefix in nkeys-py 0.2.1.
    header = bytes([nkeys.PREFIX_BYTE_SEED | PREFIX_BYTE_CURVE >> 5, (PREFIX_BYTE_CURVE & 31) << 3])
    body = header + raw
    return base64.b32encode(body + _crc16_bytes(body)).rstrip(b"=")


def _seed_bytes(seed: bytes | str) -> bytes:
    if isinstance(seed, str):
        seed = seed.encode("ascii", errors="replace")
    if not isinstance(seed, bytes | bytearray):
        raise TypeError("seed must be bytes or str")
    seed = bytes(seed).strip()
    if not _SEED_RE.fullmatch(seed.decode("ascii", errors="replace")):
        raise JWTKeyTypeError("value is not an nkey seed")
    return seed


def _decode_seed(seed: bytes | str) -> tuple[str, bytes]:
    """Return (kind, raw 32 bytes) of a seed, checking its prefix and checksum."""
    data = _seed_bytes(seed)
    try:
        raw = base64.b32decode(data + b"=" * (-len(data) % 8))
    except (binascii.Error, ValueError):
        raise JWTKeyTypeError("value is not an nkey seed") from None
    if len(raw) != 36 or _crc16_bytes(raw[:34]) != raw[34:]:
        raise JWTKeyTypeError("nkey seed has a bad checksum")
    if raw[0] & 0xF8 != nkeys.PREFIX_BYTE_SEED:
        raise JWTKeyTypeError("value is not an nkey seed")
    prefix = (raw[0] & 0x07) << 5 | (raw[1] & 0xF8) >> 3
    kind = _KIND_BY_PREFIX.get(prefix)
    if kind is None:
        raise JWTKeyTypeError("nkey seed has an unsupported key kind")
    return kind, raw[2:34]


def new_keypair(kind: str) -> tuple[str, bytes]:
    """Create a key pair of ``kind`` (operator, account, user, server, curve/xkey).

    Returns ``(public_key, seed)``. nkeys-py has no key generation, so the seed is made
    from 32 bytes of ``os.urandom`` and encoded with nkeys' own seed encoding.
    """
    kind = normalize_kind(kind)
    raw = os.urandom(32)
    if kind == "curve":
        seed = _encode_curve_seed(raw)
    else:
        seed = nkeys.encode_seed(raw, PREFIX_BYTES[kind])
    return public_key_of(seed), seed


def seed_kind(seed: bytes | str) -> str:
    """Return the kind of key a seed belongs to (raises ``JWTKeyTypeError`` if not a seed)."""
    return _decode_seed(seed)[0]


def public_key_of(seed: bytes | str) -> str:
    """Return the public key (``O…``, ``A…``, ``U…``, ``N…`` or ``X…``) of a seed."""
    kind, raw = _decode_seed(seed)
    if kind == "curve":
        # Go nkeys: X25519(seed, basepoint); PyNaCl's PrivateKey does the same scalar mult.
        public_raw = bytes(nacl.public.PrivateKey(raw).public_key)
    else:
        public_raw = bytes(nacl.signing.SigningKey(raw).verify_key)
    return _encode_public(PREFIX_BYTES[kind], public_raw)


def public_key_kind(value: object) -> str | None:
    """Return the kind of a valid public key (prefix and CRC16 checked), else ``None``."""
    if not isinstance(value, str):
        return None
    return _checked_kind(value)


@functools.lru_cache(maxsize=4096)
def _checked_kind(value: str) -> str | None:
    # Cached: nats-server asks for the same few account keys over and over, and the base32
    # decode plus CRC costs about as much as the rest of serving a cached JWT.
    if not _PUBLIC_KEY_RE.fullmatch(value):
        return None
    raw = base64.b32decode(value)
    if _crc16_bytes(raw[:33]) != raw[33:]:
        return None
    return _KIND_BY_PREFIX.get(raw[0])


def is_public_key(value: object, kind: str) -> bool:
    """Whether ``value`` is a valid public key of ``kind``: prefix letter and checksum."""
    try:
        canonical = normalize_kind(kind)
    except ValueError:
        return False
    return public_key_kind(value) == canonical


def raw_public_key(public_key: str) -> bytes:
    """Return the 32 raw bytes of a valid public key (raises ``JWTKeyTypeError``)."""
    if public_key_kind(public_key) is None:
        raise JWTKeyTypeError("value is not a valid nkey public key")
    return base64.b32decode(public_key)[1:33]


def signing_keypair(seed: bytes | str) -> nkeys.KeyPair:
    """Return an nkeys ``KeyPair`` for a signing seed (any kind but curve)."""
    return signer_of(seed)[1]


def signer_of(seed: bytes | str) -> tuple[str, nkeys.KeyPair]:
    """(public key, nkeys ``KeyPair``) of a signing seed (any kind but curve)."""
    return _signer(_seed_bytes(seed))


@functools.lru_cache(maxsize=256)
def _signer(seed: bytes) -> tuple[str, nkeys.KeyPair]:
    # Cached: deriving both takes four base32 decodes, four CRC16s in pure Python and two
    # Ed25519 key derivations, several times the signature itself, and credentials are
    # signed with the same few scoped keys all day. The process holds these seeds anyway
    # (and the master key that unseals them all); the cache keeps them until a restart.
    # Seeds made for a creds file are never signed with, so they never land here.
    if _decode_seed(seed)[0] == "curve":
        raise JWTKeyTypeError("curve (xkey) seeds cannot sign")
    return public_key_of(seed), nkeys.from_seed(seed)
