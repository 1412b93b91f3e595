"""The one post-commit step handlers share: waking the pusher after they queued pushes."""

from __future__ import annotations

from aiohttp import web

from resolver.appkeys import PUSHER


def wake_pusher(app: web.Application) -> None:
    """After a commit that wrote outbox rows: let the pusher look now, not at its next sweep.

    Call it only after the commit: a push that overtook its commit would tell servers to
    fetch a JWT that is not served yet.
    """
    if PUSHER in app:
        app[PUSHER].wake()
