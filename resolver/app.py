"""The composition root: the only place that builds engines, clients and schedulers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from resolver import admin, credentials, health, jobs, policy, push, scim
from resolver.accounts import views as account_views
from resolver.appkeys import ENGINE, SCHEMA_HEAD, SEALER, SESSIONMAKER, SETTINGS, TOKEN_BUCKETS
from resolver.audit import connections_ctx as connection_audit
from resolver.auth.ratelimit import TokenBuckets
from resolver.config import Settings
from resolver.credentials.callout_ctx import setup_callout
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.migrate import head_revision
from resolver.http import metrics_view
from resolver.http.handling import add_fallback, check_all_handled
from resolver.sealing import Sealer, load_master_key


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    if ENGINE not in app:
        # Commits on the event loop must not checkpoint: a job does (jobs/wal_checkpoint.py).
        app[ENGINE] = create_engine(
            app[SETTINGS].database_url,
            echo=app[SETTINGS].database.echo,
            wal_autocheckpoint=False,
        )
    app[SESSIONMAKER] = create_sessionmaker(app[ENGINE])
    yield
    await app[ENGINE].dispose()


def create_app(
    settings: Settings, *, overrides: Mapping[web.AppKey[Any], Any] | None = None
) -> web.Application:
    """Build the application; ``overrides`` replaces registrations (tests, benchmarks)."""
    # No middlewares: every route is wrapped by resolver.http.handling instead (see there).
    app = web.Application(client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[SCHEMA_HEAD] = head_revision() or ""
    for key, value in (overrides or {}).items():
        app[key] = value
    if SEALER not in app:
        # Fail at start-up, not at the first signature, when the master key is missing.
        app[SEALER] = Sealer(load_master_key(settings.master_key_path))
    if TOKEN_BUCKETS not in app:
        security = settings.security
        app[TOKEN_BUCKETS] = TokenBuckets(security.token_requests_per_second, security.token_burst)
    app.cleanup_ctx.append(database_ctx)

    health.setup(app)
    account_views.setup(app)
    push.setup(app)
    connection_audit.setup(app)
    admin.setup(app)
    jobs.setup(app)
    scim.setup(app)
    policy.setup(app)
    credentials.setup(app)
    metrics_view.setup(app)
    # After push (stops before the push connection) and credentials (its verifier).
    setup_callout(app)
    add_fallback(app)
    app.on_startup.append(_check_routes)
    return app


async def _check_routes(app: web.Application) -> None:
    # At start-up, so routes added after create_app (tests) are checked too.
    check_all_handled(app)
