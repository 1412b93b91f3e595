"""SCIM events → revocations: the security path from the IdP to nats-server.

The hook runs inside the SCIM request's transaction (``EventHooks.dispatch``), so the
revocations, the new account JWT and its outbox row commit with the membership change or
not at all; the SCIM view wakes the pusher after the commit.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.audit.service import Actor
from resolver.config import Settings
from resolver.db.models import Binding
from resolver.policy.deprovision import (
    accounts_bound_to_group,
    accounts_with_live_keys,
    group_members,
    revoke_lost_access,
)
from resolver.scim.events import (
    EventHook,
    GroupDeleted,
    GroupRenamed,
    MembershipChanged,
    ScimEvent,
    UserDeactivated,
    UserDeleted,
)
from resolver.sealing import Sealer


def deprovision_hook(sealer: Sealer, settings: Settings) -> EventHook:
    """The hook that revokes what a SCIM change took away (gains need nothing)."""

    async def hook(session: AsyncSession, actor: Actor, event: ScimEvent) -> None:
        if isinstance(event, MembershipChanged):
            if not event.removed:
                return
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
            # The user reaches nothing any more: every account where keys were issued to
            # them, bound or not (a binding may have gone since), loses them.
            accounts = await accounts_with_live_keys(session, event.user_id)
            what = "deactivated" if isinstance(event, UserDeactivated) else "deleted"
            await revoke_lost_access(
                session,
                sealer,
                settings,
                {account: [event.user_id] for account in accounts},
                actor=actor,
                reason=f"user {event.user_id} {what}",
                exclude_users={event.user_id},
            )
        elif isinstance(event, GroupRenamed):
            # The new name is stored: bindings made by the old name no longer match, and
            # (unless another binding still grants it) the members lose those accounts.
            accounts = set(
                await session.scalars(
                    select(Binding.account_id).where(
                        Binding.group_id.is_(None),
                        Binding.group_name_key == event.old_name.casefold(),
                    )
                )
            )
            if not accounts:
                return
            members = await group_members(session, event.group_id)
            await revoke_lost_access(
                session,
                sealer,
                settings,
                {account: members for account in accounts},
                actor=actor,
                reason=f"group {event.group_id} renamed from {event.old_name!r}",
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
