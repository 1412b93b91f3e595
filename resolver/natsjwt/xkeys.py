"""Curve (xkey) encryption as the Go nkeys package does it (``xkeys.go`` ``Seal``/``Open``).

nats-server encrypts auth callout requests to the auth account's xkey and accepts answers
encrypted back to its own xkey. The wire format is ``b"xkv1"`` + a random 24-byte nonce +
NaCl ``box`` (Curve25519, XSalsa20-Poly1305: 16-byte MAC then ciphertext), with the xkey
seed's 32 raw bytes used directly as the Curve25519 private scalar. PyNaCl's ``Box`` is that
same ``crypto_box``. Seeds never appear in an error message here.
"""

from __future__ import annotations

import os
from typing import Final

import nacl.exceptions
import nacl.public

from .errors import JWTError
from .keys import _decode_seed, public_key_kind, raw_public_key

#: Version prefix of every sealed message (nkeys ``XKeyVersionV1``).
XKEY_VERSION: Final = b"xkv1"
NONCE_SIZE: Final = nacl.public.Box.NONCE_SIZE  # 24
_HEADER_SIZE: Final = len(XKEY_VERSION) + NONCE_SIZE


class XKeyError(ValueError):
    """A message cannot be sealed or opened (bad key, version, or authentication)."""


def _private_key(seed: bytes | str) -> nacl.public.PrivateKey:
    try:
        kind, raw = _decode_seed(seed)
    except JWTError:
        raise XKeyError("value is not an xkey seed") from None
    if kind != "curve":
        raise XKeyError("value is not an xkey (curve) seed")
    return nacl.public.PrivateKey(raw)


def _public_key(public_key: str, role: str) -> nacl.public.PublicKey:
    if public_key_kind(public_key) != "curve":
        raise XKeyError(f"{role} is not an xkey public key (X...)")
    return nacl.public.PublicKey(raw_public_key(public_key))


def _box(seed: bytes | str, peer: str, role: str) -> nacl.public.Box:
    # Not cached: a cache would keep seeds alive in memory, and one scalar multiplication
    # (tens of microseconds) is small beside the rest of a callout.
    return nacl.public.Box(_private_key(seed), _public_key(peer, role))


def xkey_seal(
    message: bytes, sender_seed: bytes | str, recipient: str, *, nonce: bytes | None = None
) -> bytes:
    """Encrypt ``message`` from ``sender_seed`` (SX...) to ``recipient`` (X...).

    ``nonce`` is random unless given (tests with fixed vectors only: reusing a nonce with
    the same pair of keys breaks the encryption).
    """
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise XKeyError(f"nonce must be {NONCE_SIZE} bytes")
    box = _box(sender_seed, recipient, "recipient")
    sealed = box.encrypt(bytes(message), nonce)
    # PyNaCl returns nonce + MAC + ciphertext: exactly what follows the version in Go.
    return XKEY_VERSION + bytes(sealed)


def xkey_open(data: bytes, recipient_seed: bytes | str, sender: str) -> bytes:
    """Decrypt what ``sender`` (X...) sealed to the holder of ``recipient_seed`` (SX...)."""
    data = bytes(data)
    if len(data) <= _HEADER_SIZE:
        raise XKeyError("encrypted message is too short")
    if not data.startswith(XKEY_VERSION):
        raise XKeyError("encrypted message has an unknown version")
    box = _box(recipient_seed, sender, "sender")
    try:
        return box.decrypt(data[len(XKEY_VERSION) :])
    except nacl.exceptions.CryptoError:
        raise XKeyError("message could not be decrypted (wrong keys or altered)") from None


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` looks like an xkey-sealed message (rather than a JWT)."""
    return bytes(data[: len(XKEY_VERSION)]) == XKEY_VERSION
