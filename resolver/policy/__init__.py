"""Bindings (IdP group → account + role), roles compiled into scoped signing keys, explain."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Revoke on SCIM changes (the hook runs in the SCIM transaction)."""
    from resolver.appkeys import SCIM_EVENTS, SEALER, SETTINGS
    from resolver.policy.hooks import deprovision_hook
    from resolver.scim.events import default_hooks

    if SCIM_EVENTS not in app:
        app[SCIM_EVENTS] = default_hooks()
    app[SCIM_EVENTS].subscribe(deprovision_hook(app[SEALER], app[SETTINGS]))
