"""NATS v2 JWTs: encode, decode and verify, claim builders, creds files, nkeys.

Pure: no I/O. Signing and verification go through PyJWT with an ``ed25519-nkey``
algorithm registered on a private ``PyJWS`` (see ``algorithm``).
"""

from ._fields import NO_LIMIT
from .account_parts import account_limits
from .algorithm import ALGORITHM, NkeyAlgorithm
from .claims import account_claims, operator_claims, user_claims
from .codec import (
    HEADER_JSON,
    KEY_RULES,
    LIB_VERSION,
    MAX_TOKEN_SIZE,
    STANDARD_FIELDS,
    DecodedJWT,
    compute_jti,
    decode,
    encode,
    encode_with_payload,
    prepare_claims,
    sign_payload,
)
from .creds import format_creds, parse_creds
from .errors import (
    CredsError,
    JWTClaimsError,
    JWTClaimTypeError,
    JWTError,
    JWTExpiredError,
    JWTFormatError,
    JWTKeyTypeError,
    JWTSignatureError,
    JWTTooLargeError,
    JWTVersionError,
)
from .gojson import go_json_dumps, go_json_loads
from .keys import is_public_key, new_keypair, public_key_kind, public_key_of, seed_kind
from .permissions import permission, permissions, response_permission, scoped_signing_key
from .xkeys import XKEY_VERSION, XKeyError, xkey_open, xkey_seal

__all__ = [
    "ALGORITHM",
    "HEADER_JSON",
    "KEY_RULES",
    "LIB_VERSION",
    "MAX_TOKEN_SIZE",
    "NO_LIMIT",
    "STANDARD_FIELDS",
    "XKEY_VERSION",
    "CredsError",
    "DecodedJWT",
    "JWTClaimTypeError",
    "JWTClaimsError",
    "JWTError",
    "JWTExpiredError",
    "JWTFormatError",
    "JWTKeyTypeError",
    "JWTSignatureError",
    "JWTTooLargeError",
    "JWTVersionError",
    "NkeyAlgorithm",
    "XKeyError",
    "account_claims",
    "account_limits",
    "compute_jti",
    "decode",
    "encode",
    "encode_with_payload",
    "format_creds",
    "go_json_dumps",
    "go_json_loads",
    "is_public_key",
    "new_keypair",
    "operator_claims",
    "parse_creds",
    "permission",
    "permissions",
    "prepare_claims",
    "public_key_kind",
    "public_key_of",
    "response_permission",
    "scoped_signing_key",
    "seed_kind",
    "sign_payload",
    "user_claims",
    "xkey_open",
    "xkey_seal",
]
