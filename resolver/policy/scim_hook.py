"""SCIM events → revocations: the security path from the IdP to nats-server.

Runs inside the SCIM request's transaction (``EventHooks``), so the revocation, the new
account JWT and its outbox row commit with the membership change or not at all; the SCIM
view wakes the pusher after the commit.
"""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.audit.service import Actor
from resolver.config import Settings
from resolver.policy.revoking import (
    accounts_bound_to_group,
    accounts_with_live_keys,
    group_members,
    revoke_lost_access,
)
from resolver.scim.events import (
    EventHook,
    GroupDeleted,
    MembershipChanged,
    ScimEvent,
    UserDeactivated,
    UserDeleted,
)
from resolver.sealing import Sealer


def deprovision_hook(sealer: Sealer, settings: Settings) -> EventHook:
    """The hook that revokes what a SCIM change took away."""

    async def hook(session: AsyncSession, actor: Actor, event: ScimEvent) -> None:
        if isinstance(event, MembershipChanged):
            if not event.removed:
                return  # gaining a group never needs a revocation
            accounts = await accounts_bound_to_group(session, event.group_id)
            await revoke_lost_access(
                session,
                sealer,
                settings,
                {account: event.removed for account in accounts},
                actor=actor,
                reason=f"removed from group {event.group_id}",
            )
        elif isinstance(event, UserDeactivated | UserDeleted):
            # Deactivated or deleted: the user reaches nothing, wherever keys were issued.
            accounts = await accounts_with_live_keys(session, event.user_id, int(time.time()))
            what = "deactivated" if isinstance(event, UserDeactivated) else "deleted"
            await revoke_lost_access(
                session,
                sealer,
                settings,
                {account: [event.user_id] for account in accounts},
                actor=actor,
                reason=f"user {what}",
                lost_everything=True,
            )
        elif isinstance(event, GroupDeleted):
            accounts = await accounts_bound_to_group(session, event.group_id)
            if not accounts:
                return
            members = await group_members(session, event.group_id)
            await revoke_lost_access(
                session,
                sealer,
                settings,
                {account: members for account in accounts},
                actor=actor,
                reason=f"group {event.group_id} deleted",
                exclude_groups={event.group_id},
            )

    return hook
