"""Which SQL each filterable SCIM attribute maps to (see ``filters.AttributeMap``).

Core attributes with their own column use it (``userName`` via the case-folded unique key,
so the index serves Okta's look-up). Other string attributes are read from the stored JSON
(``json_extract`` on SQLite, ``#>>`` on PostgreSQL), and multi-valued ones (``emails``) are
expanded with ``json_each``/``json_array_elements`` inside a correlated ``EXISTS``. Group
membership goes through the join table. Nothing is ever filtered in Python.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.sql.expression import ColumnElement

from resolver.db.models import Group, GroupMember, User
from resolver.scim.filters import (
    AttributeMap,
    AttrType,
    ColumnAttribute,
    ExistsBuilder,
    RelatedAttribute,
    exists_in,
)
from resolver.scim.resources import ENTERPRISE_SCHEMA


def _fold(value: str) -> str:
    return value.casefold()


def _json_text(column: Any, *path: str) -> ColumnAttribute:
    return ColumnAttribute(column[path].as_string())


def _json_array(dialect: str, column: Any, key: str) -> tuple[Any, Any]:
    """A table of the items of ``column[key]`` and a function giving an item's sub-attribute."""
    if dialect == "postgresql":
        items = func.json_array_elements(column[key]).table_valued("value")
        return items, lambda sub: items.c.value.op("->>")(sub)
    items = func.json_each(column, f"$.{key}").table_valued("value")
    return items, lambda sub: func.json_extract(items.c.value, f"$.{sub}")


def _multi_valued(dialect: str, column: Any, key: str, subs: tuple[str, ...]) -> RelatedAttribute:
    items, sub = _json_array(dialect, column, key)

    def build(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return select(1).select_from(items).where(condition).exists()

    exists: ExistsBuilder = build
    return RelatedAttribute(
        exists=exists, sub_attributes=AttributeMap({s: ColumnAttribute(sub(s)) for s in subs})
    )


_USER_JSON_STRINGS = (
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
)
_NAME_PARTS = (
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
)
_ENTERPRISE_STRINGS = (
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
)


@cache
def user_attributes(dialect: str) -> AttributeMap:
    """Filterable user attributes on ``dialect`` (``sqlite`` or ``postgresql``)."""
    attributes: dict[str, ColumnAttribute | RelatedAttribute] = {
        "id": ColumnAttribute(User.id, case_exact=True),
        "userName": ColumnAttribute(User.user_name_key, fold=_fold),
        "externalId": ColumnAttribute(User.external_id, case_exact=True),
        "displayName": ColumnAttribute(User.display_name),
        "active": ColumnAttribute(User.active, AttrType.BOOLEAN),
        "meta.created": ColumnAttribute(User.created_at, AttrType.DATETIME),
        "meta.lastModified": ColumnAttribute(User.updated_at, AttrType.DATETIME),
        "groups": RelatedAttribute(
            exists=exists_in(GroupMember.__table__, GroupMember.user_id == User.id),
            sub_attributes=AttributeMap({"value": ColumnAttribute(GroupMember.group_id)}),
        ),
    }
    for name in _USER_JSON_STRINGS:
        attributes[name] = _json_text(User.resource, name)
    for part in _NAME_PARTS:
        attributes[f"name.{part}"] = _json_text(User.resource, "name", part)
    for name in _ENTERPRISE_STRINGS:
        spec = _json_text(User.resource, ENTERPRISE_SCHEMA, name)
        attributes[f"{ENTERPRISE_SCHEMA}:{name}"] = spec
    attributes[f"{ENTERPRISE_SCHEMA}:manager.value"] = ColumnAttribute(
        User.resource[(ENTERPRISE_SCHEMA, "manager", "value")].as_string(), case_exact=True
    )
    for key in ("emails", "phoneNumbers"):
        attributes[key] = _multi_valued(dialect, User.resource, key, ("value", "type", "display"))
    return AttributeMap(attributes)


@cache
def group_attributes(dialect: str) -> AttributeMap:
    """Filterable group attributes; ``members`` is the join table, never a loaded list."""
    return AttributeMap(
        {
            "id": ColumnAttribute(Group.id, case_exact=True),
            "displayName": ColumnAttribute(Group.display_name_key, fold=_fold),
            "externalId": ColumnAttribute(Group.external_id, case_exact=True),
            "meta.created": ColumnAttribute(Group.created_at, AttrType.DATETIME),
            "meta.lastModified": ColumnAttribute(Group.updated_at, AttrType.DATETIME),
            "members": RelatedAttribute(
                exists=exists_in(GroupMember.__table__, GroupMember.group_id == Group.id),
                sub_attributes=AttributeMap(
                    {"value": ColumnAttribute(GroupMember.user_id, case_exact=True)}
                ),
            ),
        }
    )
