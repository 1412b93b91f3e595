"""NATS ``.creds`` files: the user JWT and its seed, as nsc writes them.

The layout is nats-io/jwt ``FormatUserConfig`` (creds_utils.go): ``formatJwt`` followed
by ``DecorateSeed``. Note the asymmetric dashes (5 before BEGIN, 6 around END), which
clients match with loose regexes but nsc writes exactly.
"""

from __future__ import annotations

import re
from typing import Final

from .codec import decode
from .errors import CredsError, JWTError
from .keys import public_key_of, seed_kind

_CREDS_TEMPLATE: Final = """\
-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""

# One armoured block: a dashed marker line, the value, a dashed marker line. Same shape
# as the regex nats clients use, so files they accept are accepted here.
_BLOCK_RE: Final = re.compile(
    r"-{3,}[^\n]*-{3,}\r?\n([\w\-.=]+)\r?\n-{3,}[^\n]*-{3,}(?:\r?\n|\Z)", re.ASCII
)


def format_creds(user_jwt: str, user_seed: bytes) -> str:
    """Return the creds file text for a user JWT and the matching user seed.

    Like nats-io/jwt, refuses a JWT that is not a user JWT and a seed that is not the
    user seed of the JWT's subject (so a creds file can never pair the wrong key).
    """
    try:
        decoded = decode(user_jwt, expected_type="user")
        if seed_kind(user_seed) != "user":
            raise CredsError("seed is not a user seed")
        if public_key_of(user_seed) != decoded.subject:
            raise CredsError("seed does not match the JWT subject")
    except CredsError:
        raise
    except JWTError as exc:
        raise CredsError(f"cannot format creds: {exc}") from None
    seed_text = user_seed.decode("ascii") if isinstance(user_seed, bytes) else str(user_seed)
    return _CREDS_TEMPLATE.format(jwt=decoded.token, seed=seed_text.strip())


def parse_creds(text: str | bytes) -> tuple[str, bytes]:
    """Return ``(user_jwt, user_seed)`` from creds file text.

    The first armoured block is the JWT and the second the seed, as in the Go parsers.
    Neither is verified here; pass the JWT to ``decode`` to verify it.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    blocks = _BLOCK_RE.findall(text)
    if len(blocks) < 2:
        raise CredsError("creds file needs a JWT block and a seed block")
    user_jwt, seed = blocks[0], blocks[1]
    if user_jwt.count(".") != 2:
        raise CredsError("first creds block is not a JWT")
    try:
        kind = seed_kind(seed)
    except JWTError:
        raise CredsError("second creds block is not an nkey seed") from None
    if kind != "user":
        raise CredsError("creds seed is not a user seed")
    return user_jwt, seed.encode("ascii")
