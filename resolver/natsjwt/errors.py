"""Errors raised while encoding, decoding or verifying NATS JWTs.

Messages name what is wrong with a token (sizes, key kinds, claim types) and never
include seeds or signatures, so they are safe to log and to return to API callers.
"""

from __future__ import annotations


class JWTError(Exception):
    """Base class of every NATS JWT error."""


class JWTFormatError(JWTError):
    """The token is not a well-formed NATS v2 JWT (segments, base64url, JSON, header)."""


class JWTSignatureError(JWTError):
    """The signature does not verify against the issuer's public key."""


class JWTTooLargeError(JWTError):
    """The token is larger than nats-io/jwt accepts (1 MiB)."""


class JWTVersionError(JWTError):
    """The token is not a v2 token: a v1 token or one from a newer library."""


class JWTKeyTypeError(JWTError):
    """An issuer, subject or signing key is not an nkey of the kind the claim type needs."""


class JWTClaimTypeError(JWTError):
    """The claim type is unsupported or is not the one the caller expected."""


class JWTExpiredError(JWTError):
    """The token's ``exp`` has passed (only raised when expiry checking was asked for)."""


class JWTClaimsError(JWTError, ValueError):
    """Claims given to a builder or to ``encode`` cannot form a valid NATS JWT."""


class CredsError(JWTError, ValueError):
    """A creds file cannot be formatted or parsed."""
