"""PyJWT's ``decode``, with its base64url segment check done by one regular expression.

Since 2.15 (the fix for GHSA-hxm8-2xgr-2p9m: junk characters were accepted), PyJWS checks
every character of every segment against the base64url alphabet in a Python generator. An
RS256 IdP token has about 600 characters. Measured in a tight loop, PyJWT's whole
``decode`` cost about 150 µs where the RSA signature check is about 40 µs, and this
subclass took it to about 115 µs: the loop cost about as much as the signature check. Every
credentials request and every auth callout verifies a token.

``_RegexSegmentJWS`` keeps PyJWT's rule to the letter (only base64url characters; at most
two ``=`` of padding, and then only on a length that is a multiple of 4; no stripped length
of 1 mod 4; the canonical encoding only) and gives the same ``DecodeError``. Everything else
(signature, algorithms, key, every claim) is PyJWT's own.

The override is of a private method. If a PyJWT release renames or drops it, ``DECODER``
is plain PyJWT again (slower, same answers): tests/credentials/test_jwt_decoding.py checks
that the hook is still there and that both give the same answer on every case.
"""

from __future__ import annotations

import binascii
import re

import jwt
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError
from jwt.utils import base64url_decode, base64url_encode

_HOOK = "_decode_base64url_segment"
# The alphabet, then the padding (group 1). A third "=" or any other byte does not match.
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*(={0,2})")


class _RegexSegmentJWS(PyJWS):
    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise DecodeError(f"Invalid {name} padding")
        padding = len(match.group(1))
        if padding and len(segment) % 4 != 0:
            raise DecodeError(f"Invalid {name} padding")
        stripped = segment[: len(segment) - padding]
        if len(stripped) % 4 == 1:
            raise DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(stripped)
        except (TypeError, binascii.Error) as err:
            raise DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != stripped:
            raise DecodeError(f"Invalid {name} padding")
        return decoded


def hook_in_place() -> bool:
    """Whether this PyJWT still checks segments with the method overridden here."""
    return callable(getattr(PyJWS, _HOOK, None)) and isinstance(
        getattr(jwt.PyJWT(), "_jws", None), PyJWS
    )


def _decoder() -> jwt.PyJWT:
    decoder = jwt.PyJWT()
    if hook_in_place():
        decoder._jws = _RegexSegmentJWS(options=decoder._jws.options)
    return decoder


#: Use as ``jwt.decode``: ``DECODER.decode(token, key, algorithms=..., ...)``.
DECODER = _decoder()
