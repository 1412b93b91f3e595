"""Who is asking: IdP tokens and front-proxy assertions verified into an ``Identity``.

Every configured ``[[idp]]`` is a trusted issuer. A token is matched to its issuer by
``iss``, then checked with PyJWT against that issuer's keys, its audience, expiry,
not-before and its own list of algorithms (``alg`` from the token is never trusted alone:
PyJWT refuses any algorithm outside the list, which stops ``none`` and HMAC-with-a-public-key
tricks). What comes out names the person (a claim matched against a SCIM attribute) or the
workload, with the claims bindings may match and the token's expiry.

No aiohttp here: the views and the auth callout hand in the token, header or address.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError

from resolver.config import IdpSettings, Settings
from resolver.credentials.jwt_decoding import DECODER
from resolver.errors import AuthenticationError, ConfigError

log = logging.getLogger("resolver.credentials.identity")

#: Longest token accepted at all (a JWT with many group claims is a few KiB).
MAX_TOKEN_BYTES = 16_384
#: What a ``kid`` may look like before it goes into a key URL's path.
_KID_RE = re.compile(r"^[A-Za-z0-9._~+=-]{1,200}$")
PROXY_IDP = "front-proxy"


class InvalidTokenError(AuthenticationError):
    """The token (or assertion) did not verify; the message says why, never the token."""

    code = "invalid_token"


@dataclass(frozen=True)
class Identity:
    """A verified caller: a person to be found in SCIM, or a workload known by its claims."""

    #: The ``[[idp]]`` name, or ``front-proxy`` for an unsigned proxy header.
    idp: str
    #: The token's ``sub`` (the proxy header's value for an unsigned header).
    subject: str
    #: The value that names the person (the IdP's ``user_claim``); None when absent.
    user_value: str | None
    #: The SCIM attribute ``user_value`` is compared with (userName, email, externalId, id).
    user_attribute: str
    #: Verified claims, which claim bindings are matched against (empty when not allowed).
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: The token's ``exp``; None for an unsigned proxy header.
    expires_at: int | None = None
    #: How long a person's credentials may outlive the token.
    grace_seconds: int = 0
    #: Name given to a workload (no SCIM user): ``<idp>:<workload_name_claim value>``.
    workload_name: str | None = None

    def claim_values(self, name: str) -> set[str]:
        """The values of claim ``name`` as strings (a list claim gives each element)."""
        value = self.claims.get(name)
        if isinstance(value, str):
            return {value}
        if isinstance(value, list | tuple):
            return {item for item in value if isinstance(item, str)}
        if isinstance(value, bool | int):
            return {str(value).lower() if isinstance(value, bool) else str(value)}
        return set()


# -- keys --------------------------------------------------------------------------------


class _Keys:
    """Where one issuer's verification keys come from."""

    async def key_for(self, kid: str | None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class _JwksKeys(_Keys):
    """Keys from a JWKS URL through PyJWT's ``PyJWKClient``: it caches the key set for
    ``jwks_cache_seconds`` and refetches on an unknown ``kid`` at most once per
    ``jwks_refetch_seconds`` (its cooldown), so forged kids cannot flood the IdP.

    Two things are added here. The client fetches with urllib, which blocks, so lookups run
    in a thread. And when a refetch fails (the IdP is down) keys seen before keep working:
    the client drops its cached set on expiry, and an IdP outage should not lock everybody
    out of NATS.
    """

    def __init__(self, url: str, *, cache_seconds: int, refetch_seconds: int, timeout: float):
        self._client = PyJWKClient(
            url,
            cache_jwk_set=True,
            lifespan=cache_seconds,
            cooldown_duration=refetch_seconds,
            timeout=timeout,
        )
        self._url = url
        self._seen: dict[str, Any] = {}

    async def key_for(self, kid: str | None) -> Any:
        if kid is None:
            raise InvalidTokenError("the token names no signing key (kid)")
        cached = self._client.jwk_set_cache.get() if self._client.jwk_set_cache else None
        if cached is not None:
            # The usual case: a fresh cached set with this kid needs no thread (the lookup
            # below would cost a thread hop per token for a dictionary read).
            for found in cached.keys:
                if found.key_id == kid and found.public_key_use in ("sig", None):
                    self._seen[kid] = found.key
                    return found.key
        try:
            found = await asyncio.to_thread(self._client.get_signing_key, kid)
        except PyJWKClientConnectionError as exc:
            log.warning("JWKS fetch from %s failed: %s", self._url, exc)
            if kid in self._seen:
                return self._seen[kid]
            raise InvalidTokenError("the IdP's signing keys could not be fetched") from None
        except PyJWKClientError:
            raise InvalidTokenError(
                "the token's signing key (kid) is not published by its IdP"
            ) from None
        self._seen[kid] = found.key
        return found.key


class _PemFileKey(_Keys):
    """One fixed public key (a proxy that signs with a single key)."""

    def __init__(self, pem: bytes, where: str):
        try:
            self._key = load_pem_public_key(pem)
        except ValueError:
            raise ConfigError(where, "is not a PEM public key") from None

    async def key_for(self, kid: str | None) -> Any:
        return self._key


class _KeyUrl(_Keys):
    """One PEM per key id from a URL template (AWS ALB publishes its keys this way).

    A key id's key never changes there, so a fetched key is kept for good; unknown ids are
    fetched at most once per refetch interval, like the JWKS above.
    """

    def __init__(self, template: str, *, refetch_seconds: int, timeout: float):
        self._template = template
        self._refetch_seconds = refetch_seconds
        self._timeout = timeout
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> Any:
        if kid is None or not _KID_RE.match(kid):
            raise InvalidTokenError("the assertion names no usable key id (kid)")
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys:
                if time.monotonic() - self._fetched_at < self._refetch_seconds:
                    raise InvalidTokenError("the assertion's key id (kid) is not known")
                self._fetched_at = time.monotonic()
                url = self._template.replace("{kid}", kid)
                try:
                    pem = await asyncio.to_thread(self._fetch, url)
                    self._keys[kid] = load_pem_public_key(pem)
                except Exception as exc:
                    log.warning("public key fetch from %s failed: %s", url, exc)
                    raise InvalidTokenError(
                        "the assertion's signing key could not be fetched"
                    ) from None
        return self._keys[kid]

    def _fetch(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=self._timeout) as response:  # noqa: S310
            return response.read(65_536)


def _keys_for(idp: IdpSettings, settings: Settings) -> _Keys:
    creds = settings.credentials
    if idp.jwks_url:
        return _JwksKeys(
            idp.jwks_url,
            cache_seconds=creds.jwks_cache_seconds,
            refetch_seconds=creds.jwks_refetch_seconds,
            timeout=creds.jwks_timeout,
        )
    if idp.public_key_file is not None:
        where = f"idp {idp.name!r}.public_key_file"
        try:
            pem = idp.public_key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(where, f"cannot be read: {exc.strerror}") from None
        return _PemFileKey(pem, where)
    return _KeyUrl(
        idp.key_url, refetch_seconds=creds.jwks_refetch_seconds, timeout=creds.jwks_timeout
    )


# -- verification ------------------------------------------------------------------------


@dataclass
class _Issuer:
    idp: IdpSettings
    keys: _Keys


_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "the token's audience (aud) is not accepted here"),
    (jwt.InvalidIssuerError, "the token's issuer (iss) does not match"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted for its IdP"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
)


class IdentityVerifier:
    """Verifies IdP tokens and proxy assertions for every configured ``[[idp]]``."""

    def __init__(self, settings: Settings):
        self._bearer: dict[str, _Issuer] = {}
        self._by_header: dict[str, _Issuer] = {}
        for idp in settings.idp:
            issuer = _Issuer(idp, _keys_for(idp, settings))
            if idp.header:
                self._by_header[idp.header.lower()] = issuer
            else:
                self._bearer[idp.issuer] = issuer
        proxy = settings.front_proxy
        self._proxy_header = proxy.identity_header.lower()
        self._proxy_attribute = proxy.user_attribute
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in proxy.trusted_proxies]

    @property
    def configured(self) -> bool:
        """Whether any way of proving an identity is configured at all."""
        return bool(self._bearer or self._by_header or self._proxy_header)

    @property
    def assertion_headers(self) -> tuple[str, ...]:
        """Lower-cased names of headers carrying signed proxy assertions."""
        return tuple(self._by_header)

    async def verify_token(self, token: str) -> Identity:
        """A bearer IdP token (OIDC ID or access token) → the identity it proves."""
        if not self._bearer:
            raise InvalidTokenError("no identity provider is configured for bearer tokens")
        header, claims = _unverified(token)
        issuer = claims.get("iss")
        trusted = self._bearer.get(issuer) if isinstance(issuer, str) else None
        if trusted is None:
            raise InvalidTokenError("the token's issuer (iss) is not a trusted IdP")
        return await _verify(trusted, token, header)

    async def verify_assertion(self, header: str, value: str) -> Identity:
        """A front proxy's signed assertion from header ``header``."""
        issuer = self._by_header.get(header.lower())
        if issuer is None:
            raise InvalidTokenError(f"header {header!r} carries no trusted assertion")
        token = value.strip()
        return await _verify(issuer, token, _unverified(token)[0])

    async def from_headers(
        self, headers: Mapping[str, str], remote: str | None, bearer: str | None
    ) -> Identity:
        """The identity a request proves: a signed proxy assertion, a bearer IdP token, or
        (from a trusted proxy address only) a plain identity header, in that order.

        A present but invalid assertion or token is refused, never skipped for the next.
        """
        for header in self._by_header:
            value = headers.get(header)
            if value:
                return await self.verify_assertion(header, value)
        if bearer:
            return await self.verify_token(bearer)
        if self._proxy_header:
            value = headers.get(self._proxy_header)
            if value:
                if self._from_trusted_proxy(remote):
                    return self._proxy_identity(value.strip())
                log.warning(
                    "ignored %s header from %s: not a trusted proxy address",
                    self._proxy_header,
                    remote,
                )
        raise AuthenticationError(
            "an IdP token is required (Authorization: Bearer <token>)"
            if self.configured
            else "no identity provider is configured"
        )

    def _from_trusted_proxy(self, remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def _proxy_identity(self, value: str) -> Identity:
        if not value or len(value) > 256 or any(ord(c) < 32 for c in value):
            raise InvalidTokenError("the proxy's identity header holds no usable name")
        return Identity(
            idp=PROXY_IDP, subject=value, user_value=value, user_attribute=self._proxy_attribute
        )


# header.payload.signature, base64url (ALB pads with '='); the signature may be empty
# (alg "none", refused by name below). What PyJWT accepts is a subset.
_JWT_SHAPE = re.compile(r"([A-Za-z0-9_-]+={0,2})\.([A-Za-z0-9_-]+={0,2})\.[A-Za-z0-9_-]*={0,2}")


def _json_segment(segment: str) -> Any:
    bare = segment.rstrip("=")
    return json.loads(base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4)))


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, not verified yet: only to pick the issuer and its key.

    Read here, not by PyJWT: since 2.15 it checks every character of a token in a Python
    loop, and the ``jwt.decode`` that follows (which verifies everything, this shape
    included) does it again. Once per token is enough on the hot path.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidTokenError("the token is too large")
    shape = _JWT_SHAPE.fullmatch(token)
    try:
        if shape is None:
            raise ValueError("not three base64url segments")
        header, claims = (_json_segment(part) for part in shape.groups())
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; JSON nested too deep
        raise InvalidTokenError("the token is not a well-formed JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidTokenError("the token is not a well-formed JWT")
    return header, claims


async def _verify(issuer: _Issuer, token: str, header: Mapping[str, Any]) -> Identity:
    idp = issuer.idp
    if header.get("alg") not in idp.algorithms:
        raise InvalidTokenError("the token's algorithm is not accepted for its IdP")
    if idp.signer and header.get("signer") != idp.signer:
        raise InvalidTokenError("the assertion was not signed by the configured signer")
    kid = header.get("kid")
    key = await issuer.keys.key_for(kid if isinstance(kid, str) else None)
    try:
        claims = DECODER.decode(
            token,
            key,
            algorithms=list(idp.algorithms),
            audience=list(idp.audience) or None,
            issuer=idp.issuer,
            leeway=idp.leeway_seconds,
            options={"require": ["exp", "iss", "sub"], "verify_aud": bool(idp.audience)},
        )
    except jwt.PyJWTError as exc:
        for error, message in _ERRORS:
            if isinstance(exc, error):
                raise InvalidTokenError(message) from None
        raise InvalidTokenError("the token does not verify") from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError("the token's subject (sub) is empty")
    user_value = claims.get(idp.user_claim)
    workload = claims.get(idp.workload_name_claim)
    return Identity(
        idp=idp.name,
        subject=subject,
        user_value=user_value if isinstance(user_value, str) and user_value else None,
        user_attribute=idp.user_attribute,
        claims=claims if idp.claim_bindings else {},
        expires_at=int(claims["exp"]),
        grace_seconds=idp.grace_seconds,
        workload_name=f"{idp.name}:{workload}" if isinstance(workload, str) and workload else None,
    )
