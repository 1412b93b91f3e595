"""Rows to SCIM JSON: ``meta``, ETags, and ``attributes``/``excludedAttributes`` projection.

No aiohttp: the views stream what these functions produce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from resolver.db.models import Group, User
from resolver.scim.errors import InvalidValueError
from resolver.scim.resources import ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA


def etag(version: int) -> str:
    return f'W/"{version}"'


def _timestamp(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Locations:
    """Absolute URLs of resources, from ``settings.public_url``."""

    base: str  # .../scim/v2

    def user(self, user_id: str) -> str:
        return f"{self.base}/Users/{user_id}"

    def group(self, group_id: str) -> str:
        return f"{self.base}/Groups/{group_id}"


def _meta(kind: str, row: User | Group, location: str) -> dict[str, Any]:
    return {
        "resourceType": kind,
        "created": _timestamp(row.created_at),
        "lastModified": _timestamp(row.updated_at),
        "location": location,
        "version": etag(row.version),
    }


def user_document(
    row: User, where: Locations, groups: Iterable[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """The SCIM form of a user; ``groups``: (group id, displayName) pairs it belongs to."""
    stored = dict(row.resource or {})
    schemas = [USER_SCHEMA]
    if ENTERPRISE_SCHEMA in stored:
        schemas.append(ENTERPRISE_SCHEMA)
    doc: dict[str, Any] = {"schemas": schemas, "id": row.id}
    if row.external_id is not None:
        doc["externalId"] = row.external_id
    doc["userName"] = row.user_name
    for key, value in stored.items():
        if key not in ("schemas", "id", "externalId", "userName", "active", "meta"):
            doc[key] = value
    if "active" in stored:
        # Left out when unassigned (RFC 7643 §2.5); the column then says active.
        doc["active"] = bool(row.active)
    group_list = [
        {"value": gid, "$ref": where.group(gid), "display": name, "type": "direct"}
        for gid, name in groups or ()
    ]
    if group_list:
        doc["groups"] = group_list
    doc["meta"] = _meta("User", row, where.user(row.id))
    return doc


def group_document(row: Group, where: Locations) -> dict[str, Any]:
    """The SCIM form of a group without ``members`` (streamed separately, see views)."""
    stored = dict(row.resource or {})
    doc: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "id": row.id}
    if row.external_id is not None:
        doc["externalId"] = row.external_id
    doc["displayName"] = row.display_name
    for key, value in stored.items():
        if key not in ("schemas", "id", "externalId", "displayName", "members", "meta"):
            doc[key] = value
    doc["meta"] = _meta("Group", row, where.group(row.id))
    return doc


def member_item(user_id: str, display: str | None, where: Locations) -> dict[str, Any]:
    item: dict[str, Any] = {"value": user_id, "$ref": where.user(user_id), "type": "User"}
    if display:
        item["display"] = display
    return item


# --------------------------------------------------------------------------- projection

# A selection tree: lowercase name -> sub-tree, or None for "the whole attribute".
Tree = dict[str, "Tree | None"]
_ALWAYS = frozenset({"id", "schemas"})


def _parse_list(raw: str | list[str] | None, core: str, extensions: Iterable[str]) -> Tree | None:
    if raw is None:
        return None
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidValueError("attributes must be a list of attribute names")
    exts = {e.lower() for e in extensions}
    tree: Tree = {}
    for item in items:
        path = item.strip().lower()
        if not path:
            continue
        if len(path) > 300:
            raise InvalidValueError("attribute name too long")
        parts: list[str]
        if path in exts:
            parts = [path]
        elif path.startswith("urn:"):
            schema, _, rest = path.rpartition(":")
            if schema == core.lower():
                parts = rest.split(".", 1)
            else:
                parts = [schema, *rest.split(".", 1)]
        else:
            parts = path.split(".", 1)
        node = tree
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = None
            else:
                child = node.get(part, {})
                if child is None:  # the whole attribute is already selected
                    break
                node[part] = child
                node = child
    return tree


@dataclass(frozen=True)
class Projection:
    """``attributes`` (only these, plus id/schemas) or ``excludedAttributes`` (all but these)."""

    include: Tree | None = None
    exclude: Tree | None = field(default=None)

    @classmethod
    def parse(
        cls,
        attributes: str | list[str] | None,
        excluded: str | list[str] | None,
        *,
        core: str,
        extensions: Iterable[str] = (),
    ) -> Projection:
        return cls(
            _parse_list(attributes, core, extensions) or None,
            _parse_list(excluded, core, extensions) or None,
        )

    def wants(self, name: str) -> bool:
        """Whether top-level attribute ``name`` appears at all (decides loading ``members``)."""
        key = name.lower()
        if self.include is not None:
            return key in self.include
        if self.exclude is not None:
            return not (key in self.exclude and self.exclude[key] is None)
        return True

    def sub(self, name: str) -> Projection:
        """The projection applying to the items of attribute ``name``."""
        key = name.lower()
        include = self.include.get(key) if self.include is not None else None
        exclude = self.exclude.get(key) if self.exclude is not None else None
        return Projection(include or None, exclude or None)

    def apply(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        result = dict(doc)
        if self.include is not None:
            result = _keep(result, self.include, top=True)
        if self.exclude is not None:
            result = _drop(result, self.exclude, top=True)
        return result


def _keep(doc: Mapping[str, Any], tree: Tree, *, top: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        lower = key.lower()
        if top and lower in _ALWAYS:
            out[key] = value
        elif lower in tree:
            sub = tree[lower]
            if sub is None:
                out[key] = value
            elif isinstance(value, Mapping):
                out[key] = _keep(value, sub, top=False)
            elif isinstance(value, list):
                out[key] = [
                    _keep(i, sub, top=False) if isinstance(i, Mapping) else i for i in value
                ]
            else:
                out[key] = value
    return out


def _drop(doc: Mapping[str, Any], tree: Tree, *, top: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        lower = key.lower()
        if (top and lower in _ALWAYS) or lower not in tree:
            out[key] = value
            continue
        sub = tree[lower]
        if sub is None:
            continue
        if isinstance(value, Mapping):
            out[key] = _drop(value, sub, top=False)
        elif isinstance(value, list):
            out[key] = [_drop(i, sub, top=False) if isinstance(i, Mapping) else i for i in value]
        else:
            out[key] = value
    return out
