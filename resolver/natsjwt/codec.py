"""Encode, decode and verify NATS v2 JWTs (nats-io/jwt v2 ``claims.go``, ``decoder.go``).

Format: ``b64(header) "." b64(payload) "." b64(signature)``, base64url without padding.
The header is always ``{"typ":"JWT","alg":"ed25519-nkey"}``; the signature is the
issuer nkey's Ed25519 signature over the first two segments; the payload is the claims
as Go's ``encoding/json`` writes them (see ``gojson``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from jwt.exceptions import (
    InvalidKeyError,
)

from .algorithm import ALGORITHM, NATS_JWS
from .errors import (
    JWTClaimsError,
    JWTClaimTypeError,
    JWTExpiredError,
    JWTFormatError,
    JWTKeyTypeError,
    JWTSignatureError,
    JWTTooLargeError,
    JWTVersionError,
)
from .gojson import go_json_dumps, go_json_loads
from .keys import public_key_kind, signer_of

# nats-io/jwt refuses larger tokens (decoder.go MaxTokenSize), and so does nats-server.
MAX_TOKEN_SIZE: Final = 1024 * 1024
LIB_VERSION: Final = 2
# ClaimsData field order in claims.go; each is omitempty.
STANDARD_FIELDS: Final = ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub")
HEADER_JSON: Final = b'{"typ":"JWT","alg":"ed25519-nkey"}'
_HEADER_SEGMENT: Final = base64.urlsafe_b64encode(HEADER_JSON).rstrip(b"=").decode("ascii")

# Which nkey kinds may issue, and be the subject of, each claim type. Account JWTs are
# only accepted from operator keys (nats-io/jwt also allows self-signed ones, which an
# operator-mode server never trusts). Subjects of authorization requests are not keys.
KEY_RULES: Final[dict[str, tuple[frozenset[str], frozenset[str] | None]]] = {
    "operator": (frozenset({"operator"}), frozenset({"operator"})),
    "account": (frozenset({"operator"}), frozenset({"account"})),
    "user": (frozenset({"account"}), frozenset({"user"})),
    "authorization_request": (frozenset({"server"}), None),
    "authorization_response": (frozenset({"account"}), frozenset({"user"})),
}

_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_SHA512_256: Final = hashlib.new("sha512_256")


@dataclass(frozen=True)
class DecodedJWT:
    """A verified NATS JWT: the header, the claims in token order and the exact bytes."""

    token: str
    header: dict[str, Any]
    claims: dict[str, Any]
    payload_bytes: bytes = field(repr=False)
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def nats(self) -> dict[str, Any]:
        return self.claims["nats"]

    @property
    def type(self) -> str:
        return self.claims["nats"]["type"]

    @property
    def version(self) -> int:
        return self.claims["nats"]["version"]

    @property
    def subject(self) -> str:
        return self.claims.get("sub", "")

    @property
    def issuer(self) -> str:
        return self.claims.get("iss", "")

    @property
    def issuer_account(self) -> str | None:
        """The account a scoped/signing-key-issued user belongs to (``nats.issuer_account``)."""
        return self.claims["nats"].get("issuer_account") or None

    @property
    def jti(self) -> str:
        return self.claims.get("jti", "")

    @property
    def iat(self) -> int:
        return self.claims.get("iat", 0)

    @property
    def exp(self) -> int | None:
        return self.claims.get("exp") or None

    @property
    def name(self) -> str:
        return self.claims.get("name", "")

    def is_expired(self, now: float | None = None) -> bool:
        """Whether ``exp`` has passed at ``now`` (unix seconds; default: the current time).

        Same rule as nats-io/jwt: expired when ``now > exp``; no ``exp`` never expires.
        """
        exp = self.exp
        if exp is None:
            return False
        current = int(time.time() if now is None else now)
        return current > exp


def compute_jti(claims: Mapping[str, Any]) -> str:
    """The ``jti`` nats-io/jwt computes: base32(SHA-512/256(standard fields as JSON)).

    Only the standard fields are hashed (``ClaimsData.hash()`` marshals ``ClaimsData``,
    not the whole claim), in their struct order, without ``jti``, with ``iat`` and ``iss``
    as they will appear in the token. The ``nats`` section is therefore not covered.
    """
    data = {
        name: claims[name]
        for name in STANDARD_FIELDS
        if name != "jti" and _present(claims.get(name))
    }
    hasher = _SHA512_256.copy()  # cheaper than looking the algorithm up by name each time
    hasher.update(go_json_dumps(data))
    digest = hasher.digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def _present(value: Any) -> bool:
    # Go's omitempty: "" and 0 are left out (and None, which Go cannot express).
    return value is not None and value != "" and value != 0


def prepare_claims(claims: Mapping[str, Any], *, issuer: str, iat: int) -> dict[str, Any]:
    """Order and complete claims as ``doEncode`` does: set iss, iat, jti and version 2.

    Raises ``JWTClaimsError`` for unknown top-level fields (Go would drop them silently)
    or a missing ``sub``/``nats.type``.
    """
    unknown = set(claims) - set(STANDARD_FIELDS) - {"nats"}
    if unknown:
        raise JWTClaimsError(f"unknown top-level claims: {sorted(unknown)}")
    nats = claims.get("nats")
    if not isinstance(nats, Mapping) or not isinstance(nats.get("type"), str):
        raise JWTClaimsError('claims need a "nats" object with a "type"')
    if not claims.get("sub"):
        raise JWTClaimsError("subject (sub) is not set")
    merged = {**claims, "iss": issuer, "iat": iat, "jti": None}
    result = {k: merged[k] for k in STANDARD_FIELDS if _present(merged.get(k))}
    result["jti"] = compute_jti(result)
    result = {k: result[k] for k in STANDARD_FIELDS if k in result}
    nats_out = dict(nats)
    # updateVersion() sets GenericFields.Version, which Go writes last, after "type".
    nats_out.pop("version", None)
    nats_out["version"] = LIB_VERSION
    result["nats"] = nats_out
    return result


def encode(claims: Mapping[str, Any], signer_seed: bytes, *, iat: int | None = None) -> str:
    """Sign ``claims`` (standard fields plus a ``nats`` dict) with ``signer_seed``.

    Sets ``iss`` to the seed's public key, ``iat`` (now unless given), ``jti`` and
    ``nats.version``; refuses issuer/subject key kinds the claim type does not allow,
    so a token nobody would accept is never produced.
    """
    return encode_with_payload(claims, signer_seed, iat=iat)[0]


def encode_with_payload(
    claims: Mapping[str, Any], signer_seed: bytes, *, iat: int | None = None
) -> tuple[str, dict[str, Any]]:
    """``encode``, also returning the payload as signed (``sub``, ``iat``, ``exp``,
    ``jti``...), for callers that record it: decoding the token again would verify a
    signature made a moment ago."""
    issuer, _pair = signer_of(signer_seed)
    when = int(time.time()) if iat is None else int(iat)
    payload = prepare_claims(claims, issuer=issuer, iat=when)
    _check_key_rules(payload)
    try:
        return sign_payload(go_json_dumps(payload), signer_seed), payload
    except ValueError as exc:
        raise JWTClaimsError(str(exc)) from None


def sign_payload(payload: bytes, signer_seed: bytes) -> str:
    """Sign payload bytes as they are, with no checks on their content.

    Low level: ``encode`` is what callers want. Useful to re-sign an existing payload or
    to build deliberately odd tokens in tests.
    """
    _public, pair = signer_of(signer_seed)  # raises for a curve seed: it cannot sign
    # The compact serialization by hand, not PyJWS.encode: the header is a constant, and
    # PyJWS's general path (header JSON, algorithm lookup, key preparation) cost as much as
    # the Ed25519 signature itself on the credentials hot path. tests/natsjwt check the
    # tokens against nsc's and against PyJWS with the registered algorithm.
    signing_input = _HEADER_SEGMENT + "." + _b64encode(payload)
    signature = bytes(pair.sign(signing_input.encode("ascii")))
    return signing_input + "." + _b64encode(signature)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str, what: str) -> bytes:
    if not _SEGMENT_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise JWTFormatError(f"{what} segment is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JWTFormatError(f"{what} segment is not unpadded base64url") from None


def _check_header(header_bytes: bytes) -> dict[str, Any]:
    try:
        header = go_json_loads(header_bytes)
    except ValueError:
        raise JWTFormatError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise JWTFormatError("header is not a JSON object")
    typ, alg = header.get("typ"), header.get("alg")
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise JWTFormatError(f"unsupported header typ {typ!r}")
    if alg == "ed25519":
        raise JWTVersionError("v1 tokens are not supported (header alg ed25519)")
    if alg != ALGORITHM:
        raise JWTFormatError(f"unsupported header alg {alg!r}; expected {ALGORITHM!r}")
    return header


def _check_version(claims: dict[str, Any]) -> None:
    nats = claims.get("nats")
    # A top-level "type" is how nats-io/jwt recognises v1 claims (decoder.go identifier).
    if "type" in claims or not isinstance(nats, dict) or "version" not in nats:
        raise JWTVersionError("v1 tokens are not supported (no nats.version)")
    version = nats["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise JWTFormatError("nats.version is not an integer")
    if version > LIB_VERSION:
        raise JWTVersionError(
            f"nats.version {version} is newer than the supported version {LIB_VERSION}"
        )
    if version < LIB_VERSION:
        raise JWTVersionError("v1 tokens are not supported")


def _check_key_rules(claims: Mapping[str, Any]) -> None:
    claim_type = claims["nats"]["type"]
    if claim_type not in KEY_RULES:
        raise JWTClaimTypeError(f"unsupported claim type {claim_type!r}")
    issuers, subjects = KEY_RULES[claim_type]
    issuer_kind = public_key_kind(claims.get("iss"))
    if issuer_kind not in issuers:
        raise JWTKeyTypeError(
            f"{claim_type} JWT issuer must be a {_kinds(issuers)} public key, "
            f"got {issuer_kind or 'no valid key'}"
        )
    if subjects is not None:
        subject_kind = public_key_kind(claims.get("sub"))
        if subject_kind not in subjects:
            raise JWTKeyTypeError(
                f"{claim_type} JWT subject must be a {_kinds(subjects)} public key, "
                f"got {subject_kind or 'no valid key'}"
            )
    issuer_account = claims["nats"].get("issuer_account")
    if issuer_account and public_key_kind(issuer_account) != "account":
        raise JWTKeyTypeError("nats.issuer_account must be an account public key")


def _kinds(kinds: frozenset[str]) -> str:
    return " or ".join(sorted(kinds))


def decode(
    token: str | bytes,
    *,
    expected_type: str | None = None,
    check_expiry: bool = False,
    now: float | None = None,
) -> DecodedJWT:
    """Decode and verify a NATS v2 JWT; raise a ``JWTError`` subclass when it is not one.

    Checks, in order: size (1 MiB), three unpadded base64url segments, header, v2
    payload, claim type (``expected_type`` if given), the signature against ``iss`` (by
    the algorithm registered on the private PyJWS), then the issuer/subject key kinds for
    the claim type.
    Expiry is only checked when ``check_expiry`` is set (see ``DecodedJWT.is_expired``):
    callers such as the resolver must still be able to read expired tokens. Surrounding
    whitespace (a trailing newline from a file or HTTP body) is ignored.
    """
    if expected_type is not None and expected_type not in KEY_RULES:
        raise ValueError(f"unknown expected_type {expected_type!r}")
    if isinstance(token, bytes | bytearray):
        if len(token) > MAX_TOKEN_SIZE:
            raise JWTTooLargeError(f"token of {len(token)} bytes exceeds {MAX_TOKEN_SIZE} bytes")
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise JWTFormatError("token is not ASCII") from None
    if not isinstance(token, str):
        raise TypeError("token must be str or bytes")
    if len(token) > MAX_TOKEN_SIZE:
        raise JWTTooLargeError(f"token of {len(token)} bytes exceeds {MAX_TOKEN_SIZE} bytes")
    token = token.strip()
    if not token.isascii():
        raise JWTFormatError("token is not ASCII")
    segments = token.split(".")
    if len(segments) != 3:
        raise JWTFormatError(f"expected 3 dot-separated segments, got {len(segments)}")
    header = _check_header(_b64decode(segments[0], "header"))
    payload_bytes = _b64decode(segments[1], "payload")
    signature = _b64decode(segments[2], "signature")
    if len(signature) != 64:
        raise JWTFormatError("signature is not 64 bytes")
    try:
        claims = go_json_loads(payload_bytes)
    except ValueError:
        raise JWTFormatError("payload is not valid UTF-8 JSON without duplicate keys") from None
    if not isinstance(claims, dict):
        raise JWTFormatError("payload is not a JSON object")
    _check_version(claims)
    claim_type = claims["nats"].get("type")
    if not isinstance(claim_type, str) or claim_type not in KEY_RULES:
        raise JWTClaimTypeError(f"unsupported claim type {claim_type!r}")
    if expected_type is not None and claim_type != expected_type:
        raise JWTClaimTypeError(f"expected a {expected_type} JWT, got a {claim_type} JWT")
    issuer = claims.get("iss")
    if public_key_kind(issuer) in (None, "curve"):
        raise JWTKeyTypeError("iss is not a valid nkey public key that can sign")
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    _verify_signature(signing_input, signature, issuer)
    _check_key_rules(claims)
    decoded = DecodedJWT(
        token=token,
        header=header,
        claims=claims,
        payload_bytes=payload_bytes,
        signing_input=signing_input,
        signature=signature,
    )
    if check_expiry and decoded.is_expired(now):
        raise JWTExpiredError(f"{claim_type} JWT expired at {decoded.exp}")
    return decoded


def _verify_signature(signing_input: bytes, signature: bytes, issuer: str) -> None:
    # Straight to the registered algorithm with the segments decoded above. Through
    # PyJWS.decode_complete the token would be split and decoded again, every character
    # checked in a Python loop (PyJWT 2.15): several times the Ed25519 check itself for
    # the auth callout's ~2 KB requests, on its hot path.
    algorithm = NATS_JWS.get_algorithm_by_name(ALGORITHM)
    try:
        key = algorithm.prepare_key(issuer)
    except InvalidKeyError as exc:
        raise JWTKeyTypeError(f"cannot verify: {exc}") from None
    if not algorithm.verify(signing_input, key, signature):
        raise JWTSignatureError("signature does not verify against the issuer (iss)")
