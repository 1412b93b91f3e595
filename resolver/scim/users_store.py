"""Users in SQL. Never commits: the handler owns the transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update

from resolver.audit.service import record
from resolver.db.models import Group, GroupMember, User, new_uuid, utcnow
from resolver.scim.attributes import user_attributes
from resolver.scim.errors import InvalidPathError, ScimNotFoundError
from resolver.scim.events import UserDeactivated, UserDeleted
from resolver.scim.filters import AttributeMap
from resolver.scim.patch import apply_operations, normalize_patch
from resolver.scim.resources import user_columns, validate_user
from resolver.scim.storage import (
    ID_RE,
    ResourceStore,
    check_if_match,
    flush_unique,
)


class UserStore(ResourceStore[User]):
    """SCIM users: create, read, list, replace, patch, delete."""

    model = User
    noun = "user"

    def attributes(self, dialect: str) -> AttributeMap:
        return user_attributes(dialect)

    async def groups_of(self, user_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """(group id, displayName) of each user's groups, in one query."""
        found: dict[str, list[tuple[str, str]]] = defaultdict(list)
        if not user_ids:
            return found
        rows = await self.session.execute(
            select(GroupMember.user_id, Group.id, Group.display_name)
            .join(Group, Group.id == GroupMember.group_id)
            .where(GroupMember.user_id.in_(list(user_ids)))
            .order_by(Group.display_name_key)
        )
        for user_id, group_id, name in rows:
            found[user_id].append((group_id, name))
        return found

    async def create(self, payload: Any) -> User:
        writer = self._writer()
        doc = validate_user(payload, replacing=False, user_location=writer.where.user)
        columns = user_columns(doc)
        now = utcnow()
        row = User(id=new_uuid(), resource=doc, version=1, created_at=now, updated_at=now)
        for key, value in columns.items():
            setattr(row, key, value)
        self.session.add(row)
        # Audited before the flush: one round trip writes both rows (the id is ours already).
        record(
            self.session,
            writer.actor,
            "scim.user.create",
            row.id,
            {"userName": row.user_name},
            user=row.user_name,
        )
        await flush_unique(self.session, f"userName {row.user_name!r}")
        return row

    async def _lock(self, user_id: str, if_match: list[str] | None) -> User:
        """Bump the version first: the row (SQLite: the database) is ours until commit."""
        if not ID_RE.match(user_id):
            raise ScimNotFoundError(f"no user with id {user_id!r}")
        result = await self.session.execute(
            update(User)
            .where(User.id == user_id)
            .values(version=User.version + 1, updated_at=utcnow())
            .returning(User)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        row = result.scalar_one_or_none()
        if row is None:
            raise ScimNotFoundError(f"no user with id {user_id!r}")
        check_if_match(if_match, row.version - 1)
        return row

    async def _store(self, row: User, doc: dict[str, Any], action: str) -> User:
        writer = self._writer()
        was_active = row.active
        for key, value in user_columns(doc).items():
            setattr(row, key, value)
        row.resource = doc
        await flush_unique(self.session, f"userName {row.user_name!r}")
        record(
            self.session,
            writer.actor,
            action,
            row.id,
            {"userName": row.user_name},
            user=row.user_name,
        )
        if was_active and not row.active:
            event = UserDeactivated(row.id, row.user_name)
            await writer.hooks.dispatch(self.session, writer.actor, event)
        return row

    async def replace(self, user_id: str, payload: Any, if_match: list[str] | None) -> User:
        row = await self._lock(user_id, if_match)
        doc = validate_user(payload, replacing=True, user_location=self._writer().where.user)
        return await self._store(row, doc, "scim.user.replace")

    async def patch(self, user_id: str, body: Any, if_match: list[str] | None) -> User:
        row = await self._lock(user_id, if_match)
        ops = normalize_patch(body, resource_id=row.id)
        if any(op.attribute.split(".")[0] == "members" for op in ops):
            raise InvalidPathError("users have no members")
        # The stored document carries userName, externalId, active... as last written.
        current = dict(row.resource or {})
        patched = apply_operations(current, ops, skip=())
        doc = validate_user(patched, replacing=True, user_location=self._writer().where.user)
        return await self._store(row, doc, "scim.user.patch")

    async def delete(self, user_id: str, if_match: list[str] | None) -> None:
        writer = self._writer()
        row = await self._lock(user_id, if_match)
        group_ids = tuple(
            await self.session.scalars(
                select(GroupMember.group_id).where(GroupMember.user_id == row.id)
            )
        )
        await writer.hooks.dispatch(
            self.session, writer.actor, UserDeleted(row.id, group_ids, row.user_name)
        )
        await self.session.execute(
            delete(User).where(User.id == row.id).execution_options(synchronize_session=False)
        )
        self.session.expunge(row)
