"""Groups and their members in SQL, without ever loading a whole member list.

Membership is the ``group_members`` join table: an add is an INSERT of the ids not yet
there (an anti-join against the given ids), a removal one DELETE ... IN, a replace-all one
DELETE ... NOT IN plus that INSERT; the given ids travel as one JSON parameter (see
``storage.id_table``). The diff (ids really added/removed) comes back from those statements
and goes to the event hooks in the same transaction. Never commits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, exists, insert, select, update

from resolver.audit.service import record
from resolver.db.models import Group, GroupMember, User, new_uuid, utcnow
from resolver.scim.attributes import group_attributes
from resolver.scim.errors import InvalidValueError, ScimNotFoundError
from resolver.scim.events import GroupDeleted, GroupRenamed, MembershipChanged
from resolver.scim.filters import AttributeMap
from resolver.scim.patch import (
    PatchOperation,
    apply_operations,
    member_changes,
    normalize_patch,
)
from resolver.scim.resources import group_columns, member_displays, validate_group
from resolver.scim.storage import (
    ID_RE,
    ResourceStore,
    check_if_match,
    flush_unique,
    id_table,
)

#: Member rows fetched per round trip while a member list is streamed out.
STREAM_BATCH = 2000


class GroupStore(ResourceStore[Group]):
    """SCIM groups: create, read, list, replace, patch, delete, and member streaming."""

    model = Group
    noun = "group"

    def attributes(self, dialect: str) -> AttributeMap:
        return group_attributes(dialect)

    async def members(self, group_id: str) -> AsyncIterator[tuple[str, str | None]]:
        """(user id, display) of every member, streamed in batches in a stable order."""
        result = await self.session.stream(
            select(GroupMember.user_id, GroupMember.display, User.display_name, User.user_name)
            .join(User, User.id == GroupMember.user_id)
            .where(GroupMember.group_id == group_id)
            .order_by(GroupMember.user_id)
            .execution_options(yield_per=STREAM_BATCH)
        )
        async for user_id, display, display_name, user_name in result:
            yield user_id, display or display_name or user_name

    # ----------------------------------------------------------------- writes

    async def create(self, payload: Any) -> Group:
        writer = self._writer()
        doc, members = validate_group(payload, replacing=False)
        now = utcnow()
        row = Group(id=new_uuid(), resource=doc, version=1, created_at=now, updated_at=now)
        for key, value in group_columns(doc).items():
            setattr(row, key, value)
        self.session.add(row)
        record(
            self.session,
            writer.actor,
            "scim.group.create",
            row.id,
            {"displayName": row.display_name},
        )
        await flush_unique(self.session, f"displayName {row.display_name!r}")
        if members:
            await self._check_users_exist(list(members))
            added = await self._add(row.id, members)
            await self._emit(row.id, added, ())
        return row

    async def _lock(self, group_id: str, if_match: list[str] | None) -> Group:
        """Bump the version first: concurrent writers of this group queue up here."""
        if not ID_RE.match(group_id):
            raise ScimNotFoundError(f"no group with id {group_id!r}")
        result = await self.session.execute(
            update(Group)
            .where(Group.id == group_id)
            .values(version=Group.version + 1, updated_at=utcnow())
            .returning(Group)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        row = result.scalar_one_or_none()
        if row is None:
            raise ScimNotFoundError(f"no group with id {group_id!r}")
        check_if_match(if_match, row.version - 1)
        return row

    async def _store(self, row: Group, doc: dict[str, Any], action: str) -> None:
        changed = row.resource != doc or row.display_name != doc.get("displayName")
        old_name = row.display_name
        for key, value in group_columns(doc).items():
            setattr(row, key, value)
        row.resource = doc
        await flush_unique(self.session, f"displayName {row.display_name!r}")
        if changed:
            writer = self._writer()
            record(self.session, writer.actor, action, row.id, {"displayName": row.display_name})
            if old_name is not None and old_name.casefold() != row.display_name.casefold():
                # Bindings name groups by displayName: a rename can take access away.
                event = GroupRenamed(row.id, old_name)
                await writer.hooks.dispatch(self.session, writer.actor, event)

    async def replace(self, group_id: str, payload: Any, if_match: list[str] | None) -> Group:
        """PUT. ``members`` given: the new member list (Okta sends the full one); not given:
        membership is left alone rather than wiped (an omitted list is no reason to revoke)."""
        row = await self._lock(group_id, if_match)
        doc, members = validate_group(payload, replacing=True)
        await self._store(row, doc, "scim.group.replace")
        if members is not None:
            await self._check_users_exist(list(members))
            removed = await self._remove_all_except(row.id, list(members))
            added = await self._add(row.id, members)
            await self._emit(row.id, added, removed)
        return row

    async def patch(self, group_id: str, body: Any, if_match: list[str] | None) -> Group:
        """PATCH, atomically: every operation or (on any error) none of them."""
        row = await self._lock(group_id, if_match)
        ops = normalize_patch(body, resource_id=row.id)
        plan = member_changes(ops)
        if any(op.attribute != "members" for op in ops):
            doc, _ = validate_group(apply_operations(row.resource or {}, ops), replacing=True)
            await self._store(row, doc, "scim.group.patch")
        if not plan.is_empty:
            if plan.add:
                await self._check_users_exist(plan.add)
            if plan.clear:
                removed = await self._remove_all_except(row.id, plan.add)
            else:
                removed = await self._remove(row.id, plan.remove)
            displays = _displays(ops)
            added = await self._add(row.id, {i: displays.get(i) for i in plan.add})
            await self._emit(row.id, added, removed)
        return row

    async def delete(self, group_id: str, if_match: list[str] | None) -> None:
        writer = self._writer()
        row = await self._lock(group_id, if_match)
        await writer.hooks.dispatch(self.session, writer.actor, GroupDeleted(row.id))
        await self.session.execute(
            delete(Group).where(Group.id == row.id).execution_options(synchronize_session=False)
        )
        self.session.expunge(row)

    # ----------------------------------------------------------------- membership

    async def _check_users_exist(self, ids: Sequence[str]) -> None:
        """400 invalidValue naming the unknown ids; one query however many ids are given."""
        unknown = [i for i in ids if not ID_RE.match(i)]
        valid = [i for i in ids if ID_RE.match(i)]
        if valid:
            given = id_table(self.session, valid)
            unknown += list(
                await self.session.scalars(
                    select(given.c.value).where(~exists().where(User.id == given.c.value))
                )
            )
        if unknown:
            shown = ", ".join(repr(i[:40]) for i in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise InvalidValueError(f"unknown member ids: {shown}{more}")

    async def _add(self, group_id: str, members: Mapping[str, str | None]) -> tuple[str, ...]:
        """INSERT only the rows not already there; the ids really added."""
        if not members:
            return ()
        given = id_table(self.session, list(members))
        missing = list(
            await self.session.scalars(
                select(given.c.value).where(
                    ~exists().where(
                        GroupMember.group_id == group_id, GroupMember.user_id == given.c.value
                    )
                )
            )
        )
        missing = list(dict.fromkeys(missing))
        if missing:
            now = utcnow()
            await self.session.execute(
                insert(GroupMember),
                [
                    {"group_id": group_id, "user_id": u, "display": members[u], "created_at": now}
                    for u in missing
                ],
            )
        return tuple(missing)

    async def _remove(self, group_id: str, ids: Sequence[str]) -> tuple[str, ...]:
        valid = [i for i in ids if ID_RE.match(i)]
        if not valid:
            return ()
        given = id_table(self.session, valid)
        result = await self.session.execute(
            delete(GroupMember)
            .where(GroupMember.group_id == group_id, GroupMember.user_id.in_(select(given.c.value)))
            .returning(GroupMember.user_id)
            .execution_options(synchronize_session=False)
        )
        return tuple(result.scalars())

    async def _remove_all_except(self, group_id: str, keep: Sequence[str]) -> tuple[str, ...]:
        condition = GroupMember.group_id == group_id
        if keep:
            given = id_table(self.session, keep)
            condition = condition & GroupMember.user_id.not_in(select(given.c.value))
        result = await self.session.execute(
            delete(GroupMember)
            .where(condition)
            .returning(GroupMember.user_id)
            .execution_options(synchronize_session=False)
        )
        return tuple(result.scalars())

    async def _emit(self, group_id: str, added: Sequence[str], removed: Sequence[str]) -> None:
        if added or removed:
            writer = self._writer()
            event = MembershipChanged(group_id, tuple(added), tuple(removed))
            await writer.hooks.dispatch(self.session, writer.actor, event)


def _displays(ops: Iterable[PatchOperation]) -> dict[str, str | None]:
    """The ``display`` sent with each member id added by ``add``/``replace members``."""
    found: dict[str, str | None] = {}
    for op in ops:
        if op.attribute == "members" and op.op != "remove" and op.value is not None:
            found.update(member_displays(op.value))
    return found
