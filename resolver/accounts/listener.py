"""Hears other replicas' account JWT changes (PostgreSQL ``LISTEN``) and drops cache entries.

One dedicated asyncpg connection per process, outside the SQLAlchemy pool (a pooled
connection would be recycled or pinged away from under the ``LISTEN``). When it breaks, the
whole cache is dropped, since notifications sent meanwhile are lost, and it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from resolver.accounts.cache import AccountJWTCache
from resolver.accounts.changes import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


def asyncpg_dsn(database_url: str) -> str:
    """The libpq-style DSN asyncpg wants, from a ``postgresql+asyncpg://`` URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class ChangeListener:
    """Keeps a ``LISTEN`` open and applies each notification to ``cache``."""

    def __init__(self, dsn: str, cache: AccountJWTCache, *, retry_seconds: float = 1.0) -> None:
        self._dsn = dsn
        self._cache = cache
        self._retry = retry_seconds
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="account-jwt-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._cache.invalidate([payload])

    async def _run(self) -> None:
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn)
                closed = asyncio.Event()
                conn.add_termination_listener(_setter(closed))
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                # Anything sent while we were not listening is lost: start from empty.
                self._cache.clear()
                self.listening.set()
                await closed.wait()
                log.warning("account change listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving: entries still age out after max_age
                log.warning("account change listener cannot listen: %s", type(exc).__name__)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            self._cache.clear()
            await asyncio.sleep(self._retry)


def _setter(event: asyncio.Event) -> Any:
    def on_terminate(_conn: Any) -> None:
        event.set()

    return on_terminate
