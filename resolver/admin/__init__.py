"""The admin HTTP API (``/admin/v1``): bearer tokens with the ``admin`` or ``admin:read`` scope."""

from __future__ import annotations

from aiohttp import web

from resolver.admin import accounts, audit_views, binding_views, job_views, role_views, user_views


def setup(app: web.Application) -> None:
    accounts.setup(app)
    role_views.setup(app)
    binding_views.setup(app)
    user_views.setup(app)
    audit_views.setup(app)
    job_views.setup(app)
