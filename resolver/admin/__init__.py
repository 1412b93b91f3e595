"""The admin HTTP API (``/admin/v1``): bearer tokens with the ``admin`` or ``admin:read`` scope."""

from __future__ import annotations

from aiohttp import web

from resolver.admin import accounts


def setup(app: web.Application) -> None:
    accounts.setup(app)
