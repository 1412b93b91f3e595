"""The ``ed25519-nkey`` JWS algorithm and the private ``PyJWS`` it is registered on.

It is registered on a module-private ``PyJWS`` rather than PyJWT's global instance so
that other users of PyJWT in the process (the OIDC verifier) can never accept an nkey
token, and so that no default algorithm (``none``, HMAC) is accepted for NATS tokens.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

import nacl.exceptions
import nacl.signing
import nkeys
from jwt.algorithms import Algorithm
from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidKeyError

from .errors import JWTKeyTypeError
from .keys import public_key_kind, raw_public_key, signing_keypair

ALGORITHM: Final = "ed25519-nkey"


class NkeyAlgorithm(Algorithm):
    """Ed25519 over nkeys: sign with a seed, verify with an encoded public key."""

    def prepare_key(self, key: Any) -> nkeys.KeyPair | nacl.signing.VerifyKey:
        """Turn a seed into a signing key pair, or a public key into a verify key."""
        if isinstance(key, nkeys.KeyPair | nacl.signing.VerifyKey):
            return key
        if isinstance(key, str) and public_key_kind(key) is not None:
            if public_key_kind(key) == "curve":
                raise InvalidKeyError("curve (xkey) keys cannot verify signatures")
            return nacl.signing.VerifyKey(raw_public_key(key))
        if isinstance(key, bytes | bytearray | str):
            try:
                return signing_keypair(key)
            except JWTKeyTypeError as exc:
                # The message never carries the key itself.
                raise InvalidKeyError(str(exc)) from None
        raise InvalidKeyError("expected an nkey seed or public key")

    def sign(self, msg: bytes, key: Any) -> bytes:
        if not isinstance(key, nkeys.KeyPair):
            raise InvalidKeyError("signing needs an nkey seed, not a public key")
        return bytes(key.sign(msg))

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        if not isinstance(key, nacl.signing.VerifyKey):
            raise InvalidKeyError("verification needs an nkey public key")
        try:
            key.verify(msg, sig)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> NoReturn:
        raise NotImplementedError("nkeys have no JWK form")

    @staticmethod
    def from_jwk(jwk: Any) -> NoReturn:
        raise NotImplementedError("nkeys have no JWK form")


def _make_jws() -> PyJWS:
    # algorithms=[] strips every PyJWT default (including "none") from this instance.
    jws = PyJWS(algorithms=[])
    jws.register_algorithm(ALGORITHM, NkeyAlgorithm())
    return jws


NATS_JWS: Final = _make_jws()
