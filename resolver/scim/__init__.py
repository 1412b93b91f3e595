"""SCIM 2.0 server: protocol rules (filters, PATCH, errors) kept apart from storage.

``setup(app)`` registers the ``/scim/v2`` routes, the SCIM error renderer (so even aiohttp's
own 404/405/413 and unexpected 500s under ``/scim/`` come out as SCIM error bodies) and the
default event hook (audit). Other features add hooks with ``app[SCIM_EVENTS].subscribe``.
"""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    from resolver.appkeys import SCIM_EVENTS
    from resolver.http.errors import register_error_renderer
    from resolver.scim import views_discovery, views_groups, views_users
    from resolver.scim.events import default_hooks
    from resolver.scim.views_common import PREFIX, render_scim_error

    if SCIM_EVENTS not in app:
        app[SCIM_EVENTS] = default_hooks()
    register_error_renderer(app, "/scim/", render_scim_error)
    views_discovery.setup(app, PREFIX)
    views_users.setup(app, PREFIX)
    views_groups.setup(app, PREFIX)
