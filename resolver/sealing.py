"""Seeds sealed at rest: XSalsa20-Poly1305 (PyNaCl ``SecretBox``) under one master key.

Nothing outside this module handles the master key, and seeds leave it only as ``bytes``
for the moment they sign something. A database dump therefore holds ciphertext only.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from resolver.config import MASTER_KEY_ENV
from resolver.errors import ConfigError, SealingError

#: Version byte in front of every sealed value, so the scheme can change without guessing.
_VERSION = b"\x01"


class Sealer:
    """Seals and opens secrets with the master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != nacl.secret.SecretBox.KEY_SIZE:
            raise ConfigError("master key", f"must be {nacl.secret.SecretBox.KEY_SIZE} bytes")
        self._box = nacl.secret.SecretBox(master_key)

    def seal(self, secret: bytes) -> bytes:
        return _VERSION + bytes(self._box.encrypt(secret))

    def open(self, sealed: bytes) -> bytes:
        if not sealed or sealed[:1] != _VERSION:
            raise SealingError("sealed value has an unknown format")
        try:
            return self._box.decrypt(sealed[1:])
        except nacl.exceptions.CryptoError:
            raise SealingError("sealed value cannot be opened with this master key") from None

    def __repr__(self) -> str:  # never show the key
        return "Sealer(<master key hidden>)"


def generate_master_key_file(path: Path) -> bool:
    """Write a new random master key to ``path`` with mode 0600; False if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    try:
        # O_EXCL: never overwrite a key, that would make every sealed seed unreadable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key) + b"\n")
    return True


def _decode_key(source: str, text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(source, "master key must be base64") from None
    if len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise ConfigError(source, "master key must decode to 32 bytes")
    return key


def load_master_key(path: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The master key from ``$RESOLVER_MASTER_KEY`` (base64) or else from ``path``."""
    env = os.environ if env is None else env
    if env.get(MASTER_KEY_ENV):
        return _decode_key(MASTER_KEY_ENV, env[MASTER_KEY_ENV])
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(
            "security.master_key_file", f"{path} not found (run `init` or set {MASTER_KEY_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("security.master_key_file", f"cannot read {path}: {exc}") from None
    return _decode_key("security.master_key_file", text)
