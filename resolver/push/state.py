"""App keys of the push package (its own, like the scheduler's: only push code reads them)."""

from __future__ import annotations

from aiohttp import web

from resolver.push.connection import SystemConnection

#: This process's system-account connection; absent when ``nats.enabled`` is false.
PUSH_CONNECTION = web.AppKey("push_connection", SystemConnection)
