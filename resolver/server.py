"""Running the application: TLS, listen address, and the event loop."""

from __future__ import annotations

import gc
import ssl

from aiohttp import web

from resolver.app import create_app
from resolver.config import Settings
from resolver.errors import ConfigError
from resolver.logs import configure_logging


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.server.tls_cert is None or settings.server.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.server.tls_cert, settings.server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("server.tls_cert", f"cannot load certificate/key: {exc}") from None
    return context


GC_YOUNG_THRESHOLD = 20_000


async def _freeze_startup_objects(app: web.Application) -> None:
    # Everything imported and built at start-up (SQLAlchemy, pydantic schemas, ...) lives
    # for the whole process; moved out of the collector's sight, the full collections that
    # request garbage triggers stop walking it (measured by bench/resolver_get.py).
    gc.collect()
    gc.freeze()
    # A request through SQLAlchemy's ORM allocates thousands of objects, nearly all freed
    # by reference counting; at the default threshold (700) the young generation was
    # scanned several times per credentials request. 20,000 cut its CPU by about a sixth
    # (bench/credentials.py) for a few MB of garbage cycles waiting a little longer.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    configure_logging(settings.log.level, settings.log.format)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        ssl_context=ssl_context(settings),
        access_log=None,
        print=None,
    )
