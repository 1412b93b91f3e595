"""A local stand-in for an identity provider: a JWKS over HTTP and tokens signed in the test.

The one fake the test suite allows, because the IdP is outside our control. It is an aiohttp
server on 127.0.0.1 (an ephemeral port) running on a thread of its own, so both in-process
tests and a ``serve`` subprocess can fetch its keys while the test's own loop is busy or
blocked. Keys are made per instance (RSA for RS256, P-256 for ES256); ``rotate`` adds a new
key, and ``fetches`` counts JWKS requests so tests can see caching and refetching.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.ports import free_port

AUDIENCE = "api://nats-iam-resolver"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        codec = RSAAlgorithm if self.algorithm.startswith(("RS", "PS")) else ECAlgorithm
        body = json.loads(codec.to_jwk(self.private.public_key()))
        return {**body, "kid": self.kid, "use": "sig", "alg": self.algorithm}


def make_key(algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
    """A fresh key for ``algorithm`` (RS256 or ES256)."""
    if algorithm == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(algorithm)
    return SigningKey(kid or uuid.uuid4().hex[:12], algorithm, private)


@dataclass
class IdpStandIn:
    """``/jwks`` (all published keys) and ``/keys/<kid>`` (one PEM, the AWS ALB way)."""

    name: str = "test-idp"
    keys: list[SigningKey] = field(default_factory=list)
    port: int = 0
    fetches: int = 0
    pem_fetches: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/{self.name}"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/jwks"

    @property
    def key_url(self) -> str:
        return self.base_url + "/keys/{kid}"

    def key(self, algorithm: str = "RS256") -> SigningKey:
        """The newest published key for ``algorithm`` (made on first use)."""
        for key in reversed(self.keys):
            if key.algorithm == algorithm:
                return key
        return self.rotate(algorithm)

    def rotate(self, algorithm: str = "RS256") -> SigningKey:
        """Publish a new key (old ones stay published, as IdPs do during a rollover)."""
        key = make_key(algorithm)
        self.keys.append(key)
        return key

    def token(
        self,
        subject: str = "subject-1",
        *,
        algorithm: str = "RS256",
        key: SigningKey | None = None,
        ttl: int = 600,
        issuer: str | None = None,
        audience: str | list[str] | None = AUDIENCE,
        now: int | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token as the IdP would sign it; every field can be overridden or spoiled."""
        key = key or self.key(algorithm)
        when = int(time.time()) if now is None else now
        payload: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            "iat": when,
            "nbf": when,
            "exp": when + ttl,
        }
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            payload,
            key.private,
            algorithm=key.algorithm,
            headers={"kid": key.kid, **(headers or {})},
        )

    def config(self, *, header: str = "", **overrides: Any) -> str:
        """A ``[[idp]]`` table trusting this stand-in (TOML text)."""
        values: dict[str, Any] = {
            "name": self.name,
            "issuer": self.issuer,
            "audience": [AUDIENCE],
            "jwks_url": self.jwks_url,
            "algorithms": ["RS256", "ES256"],
            "user_claim": "email",
            **({"header": header} if header else {}),
            **overrides,
        }
        lines = ["[[idp]]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    # -- the HTTP side ---------------------------------------------------------------------

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": [key.jwk() for key in self.keys]})

    async def _pem(self, request: web.Request) -> web.Response:
        self.pem_fetches += 1
        for key in self.keys:
            if key.kid == request.match_info["kid"]:
                return web.Response(body=key.public_pem(), content_type="application/x-pem-file")
        return web.Response(status=404)

    def start(self) -> IdpStandIn:
        """Serve on 127.0.0.1 from a thread of its own; returns once it accepts requests."""
        self.port = self.port or free_port()
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            # A plain aiohttp app: the product's add_routes rule does not apply to a fake IdP.
            app.router.add_get("/jwks", self._jwks)
            app.router.add_get("/keys/{kid}", self._pem)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"idp-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the IdP stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        loop.close()
        self._loop = self._thread = None


@contextmanager
def running_idp(name: str) -> Iterator[IdpStandIn]:
    """A started stand-in named ``name``, stopped on the way out."""
    stand_in = IdpStandIn(name=name).start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
