"""Post-commit steps handlers share: waking the pusher, waiting for a push to land."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from sqlalchemy import func, select

from resolver.appkeys import PUSHER, SESSIONMAKER, SETTINGS
from resolver.db.models import PushOutbox
from resolver.push.pusher import DONE, PENDING


def wake_pusher(app: web.Application) -> None:
    """After a commit that wrote outbox rows: let the pusher look now, not at its next sweep.

    Call it only after the commit: a push that overtook its commit would tell servers to
    fetch a JWT that is not served yet.
    """
    if PUSHER in app:
        app[PUSHER].wake()


#: How long an issue that created a scoped key waits for the account JWT to be pushed.
PUSH_WAIT_SECONDS = 3.0


async def wait_pushed(app: web.Application, account_key: str, jti: str) -> bool | None:
    """Whether the account JWT ``jti``, or a newer one of the account, was pushed.

    False when the push failed or did not finish within the wait (the pusher keeps trying);
    None when this process does not push at all (NATS disabled: another process will).
    """
    settings = app[SETTINGS]
    if not settings.nats.enabled:
        return None
    # A push waits ``push_timeout`` for replies; leave room for a retry or two.
    deadline = time.monotonic() + max(PUSH_WAIT_SECONDS, 2 * settings.nats.push_timeout)
    while True:
        async with app[SESSIONMAKER]() as session:
            ours = await session.scalar(
                select(func.min(PushOutbox.id)).where(
                    PushOutbox.account_key == account_key, PushOutbox.jti == jti
                )
            )
            statuses = set(
                await session.scalars(
                    select(PushOutbox.status).where(
                        PushOutbox.account_key == account_key, PushOutbox.id >= (ours or 0)
                    )
                )
            )
        # A newer JWT of the account carries the new key too; its push counts as well.
        if ours is not None and DONE in statuses:
            return True
        if ours is None or PENDING not in statuses or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
