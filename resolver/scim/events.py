"""Domain events of the SCIM surface and the hooks that consume them.

Services emit events inside the caller's transaction; every hook runs in that same
transaction (it gets the session), so whatever a hook writes (audit rows today, revocations
and outbox rows once the policy work lands) commits or rolls back with the SCIM change.
No aiohttp here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.audit.service import Actor, record
from resolver.db.models import User


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """Members really added to / removed from a group (ids that changed nothing are left out)."""

    group_id: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserDeactivated:
    """``active`` went from true to false (Entra's and Okta's way to deprovision)."""

    user_id: str
    #: The userName, for the audit row.
    user_name: str | None = None


@dataclass(frozen=True, slots=True)
class UserDeleted:
    """Emitted before the row goes, so a hook can still read it; ``group_ids``: its groups."""

    user_id: str
    group_ids: tuple[str, ...] = ()
    #: The userName, for the audit row.
    user_name: str | None = None


@dataclass(frozen=True, slots=True)
class GroupDeleted:
    """Emitted before the row goes, so a hook can still read the group's members."""

    group_id: str


@dataclass(frozen=True, slots=True)
class GroupRenamed:
    """``displayName`` changed (after the new name is flushed): bindings by name follow it."""

    group_id: str
    old_name: str


ScimEvent = MembershipChanged | UserDeactivated | UserDeleted | GroupDeleted | GroupRenamed
EventHook = Callable[[AsyncSession, Actor, ScimEvent], Awaitable[None]]


class EventHooks:
    """The registry services dispatch to; hooks run in registration order."""

    def __init__(self, hooks: list[EventHook] | None = None) -> None:
        self._hooks: list[EventHook] = list(hooks or [])

    def subscribe(self, hook: EventHook) -> EventHook:
        """Add a hook (usable as a decorator)."""
        self._hooks.append(hook)
        return hook

    async def dispatch(self, session: AsyncSession, actor: Actor, event: ScimEvent) -> None:
        """Run every hook in the caller's transaction; a hook's error aborts the change."""
        for hook in self._hooks:
            await hook(session, actor, event)


async def audit_hook(session: AsyncSession, actor: Actor, event: ScimEvent) -> None:
    """The default hook: one audit row per event, under the SCIM token's name and request id."""
    if isinstance(event, MembershipChanged):
        if event.added or event.removed:
            changed = (*event.added, *event.removed)
            # IdPs change one member per request most of the time: that row names the
            # person, so ``?user=`` finds it (one primary-key read). A bulk change lists ids.
            user = (
                await session.scalar(select(User.user_name).where(User.id == changed[0]))
                if len(changed) == 1
                else None
            )
            record(
                session,
                actor,
                "scim.group.members",
                event.group_id,
                {"added": list(event.added), "removed": list(event.removed)},
                user=user,
            )
    elif isinstance(event, UserDeactivated):
        record(
            session,
            actor,
            "scim.user.deactivate",
            event.user_id,
            {"userName": event.user_name},
            user=event.user_name,
        )
    elif isinstance(event, UserDeleted):
        record(
            session,
            actor,
            "scim.user.delete",
            event.user_id,
            {"groups": list(event.group_ids), "userName": event.user_name},
            user=event.user_name,
        )
    elif isinstance(event, GroupDeleted):
        record(session, actor, "scim.group.delete", event.group_id)


def default_hooks() -> EventHooks:
    return EventHooks([audit_hook])
