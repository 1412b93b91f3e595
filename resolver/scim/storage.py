"""SQL helpers shared by the user and group stores: id lists, paging, locking updates."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Text, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from resolver.audit.service import Actor
from resolver.db.models import Group, User
from resolver.scim.errors import PreconditionFailedError, ScimNotFoundError, UniquenessError
from resolver.scim.events import EventHooks
from resolver.scim.filters import AttributeMap, Node, to_sql
from resolver.scim.render import Locations

#: Page size when the client gives no ``count``, and the most one page holds.
DEFAULT_COUNT = 100
MAX_COUNT = 1000


@dataclass(frozen=True)
class Page:
    """A 1-based ``startIndex`` and a ``count`` already clamped to ``0..MAX_COUNT``."""

    start_index: int = 1
    count: int = DEFAULT_COUNT

    @property
    def offset(self) -> int:
        return self.start_index - 1


def dialect_of(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def id_table(session: AsyncSession, ids: Sequence[str]) -> Any:
    """A one-column (``value``) table of ``ids`` passed as ONE JSON parameter.

    Any number of ids costs one bind parameter (drivers cap them at ~32k), and the database
    joins against it, so diffs and existence checks run in SQL.
    """
    payload = bindparam(None, json.dumps(list(ids)), type_=Text)
    if dialect_of(session) == "postgresql":
        return func.json_array_elements_text(cast(payload, PG_JSON)).table_valued("value")
    return func.json_each(payload).table_valued("value")


async def count_and_page(
    session: AsyncSession, query: Select[Any], order_by: Any, page: Page
) -> tuple[int, list[Any]]:
    """``totalResults`` and the rows of one page, in a stable order."""
    rows: list[Any] = []
    if page.count > 0:
        result = await session.scalars(
            query.order_by(order_by).offset(page.offset).limit(page.count)
        )
        rows = list(result)
        if page.offset == 0 and len(rows) < page.count:
            # A first page that is not full holds everything: no COUNT needed (the common
            # IdP look-up by userName/externalId/displayName).
            return len(rows), rows
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    return int(total or 0), rows


def parse_etags(header: str | None) -> list[str] | None:
    """The entity tags of an ``If-Match``/``If-None-Match`` header (``*`` stays ``*``)."""
    if header is None:
        return None
    tags = []
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tags.append(tag.strip().strip('"'))
    return [t for t in tags if t]


def etag_matches(tags: list[str] | None, version: int) -> bool:
    return tags is not None and ("*" in tags or str(version) in tags)


def check_if_match(tags: list[str] | None, version: int) -> None:
    """412 when the client holds another version than the stored one."""
    if tags is not None and not etag_matches(tags, version):
        raise PreconditionFailedError(
            f'the resource is at version W/"{version}", not the one If-Match names'
        )


#: Ids we hand out are UUIDs; anything else cannot exist (and never reaches the driver).
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,36}$")


@dataclass(frozen=True)
class ScimWriter:
    """What every write needs besides the session: who acts, the event hooks, URLs."""

    actor: Actor
    hooks: EventHooks
    where: Locations


async def flush_unique(session: AsyncSession, what: str) -> None:
    """Flush, turning a unique-constraint violation (a concurrent twin, say) into 409."""
    try:
        await session.flush()
    except IntegrityError:
        raise UniquenessError(f"{what} is already taken") from None


Resource = TypeVar("Resource", User, Group)


class ResourceStore(Generic[Resource]):
    """What the user and group stores share: the session, the writer, get and list."""

    model: ClassVar[type]
    noun: ClassVar[str]

    def __init__(self, session: AsyncSession, writer: ScimWriter | None = None) -> None:
        self.session = session
        self.writer = writer

    def _writer(self) -> ScimWriter:
        assert self.writer is not None, "writes need a ScimWriter"
        return self.writer

    def attributes(self, dialect: str) -> AttributeMap:
        raise NotImplementedError

    async def get(self, resource_id: str) -> Resource:
        row = await self.session.get(self.model, resource_id) if ID_RE.match(resource_id) else None
        if row is None:
            raise ScimNotFoundError(f"no {self.noun} with id {resource_id!r}")
        return row

    async def list(self, node: Node | None, page: Page) -> tuple[int, list[Resource]]:
        """Matching resources in a stable order (by id), one page of them."""
        query = select(self.model)
        if node is not None:
            query = query.where(to_sql(node, self.attributes(dialect_of(self.session))))
        return await count_and_page(self.session, query, self.model.id, page)
