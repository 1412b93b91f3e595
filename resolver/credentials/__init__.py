"""Short-lived NATS credentials for IdP identities: token exchange, front proxy, auth callout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


def setup(app: web.Application) -> None:
    # Imported here: resolver.appkeys imports this package (for IdentityVerifier), so a
    # top-level import of the views would be circular.
    from resolver.appkeys import IDENTITY_VERIFIER, SETTINGS
    from resolver.credentials import views
    from resolver.credentials.identity import IdentityVerifier

    if IDENTITY_VERIFIER not in app:
        # Built at start-up: a missing or bad public_key_file stops the process.
        app[IDENTITY_VERIFIER] = IdentityVerifier(app[SETTINGS])
    views.setup(app)
    app.cleanup_ctx.append(issuer_ctx)


async def issuer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The batching credential issuer: after the database, stopped before it (and after
    the auth callout, which is registered later and so stops first)."""
    from resolver.appkeys import CREDENTIAL_ISSUER, SEALER, SESSIONMAKER, SETTINGS
    from resolver.credentials.issuer import CredentialIssuer

    issuer = CredentialIssuer(app[SESSIONMAKER], app[SEALER], app[SETTINGS])
    issuer.start()
    app[CREDENTIAL_ISSUER] = issuer
    try:
        yield
    finally:
        await issuer.stop()
