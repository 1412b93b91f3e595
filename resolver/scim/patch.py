"""SCIM PATCH (RFC 7644 §3.5.2): normalize what IdPs send, plan member changes, apply the rest.

Three steps, kept apart so storage stays out of protocol rules:

1. ``normalize_patch`` turns any JSON body into a list of canonical ``PatchOperation`` (op
   lowercase, path parsed and normalized, no-path objects expanded one op per attribute,
   Entra's string booleans coerced, Okta's repeated ``id`` dropped) or raises ``ScimError``.
2. ``member_changes`` folds the ``members`` operations into a ``MemberPlan`` that a storage
   layer runs as a few statements on the join table, without loading the member list.
3. ``apply_operations`` applies everything else to the resource's JSON dict, which the caller
   then validates with scim2-models.

The path grammar is scim2-models' (see ``filters.py``); the IdP quirks are ours (DESIGN.md §3).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from inspect import isclass
from typing import Any, Literal

from pydantic import BaseModel
from scim2_models import EnterpriseUser, Group, User
from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)

from resolver.scim.errors import (
    InvalidFilterError,
    InvalidPathError,
    InvalidSyntaxError,
    InvalidValueError,
    MutabilityError,
    NoTargetError,
)
from resolver.scim.filters import CORE_SCHEMAS, Node, normalize_attr_path, parse_path

__all__ = [
    "BOOLEAN_ATTRIBUTES",
    "ENTERPRISE_USER_SCHEMA",
    "EXTENSION_SCHEMAS",
    "MULTI_VALUED_ATTRIBUTES",
    "PATCH_OP_SCHEMA",
    "MemberPlan",
    "MemberStep",
    "PatchOperation",
    "apply_operations",
    "member_changes",
    "normalize_patch",
]

PATCH_OP_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ENTERPRISE_USER_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
#: Schema URNs whose attributes live in a nested object of the resource (lowercase).
EXTENSION_SCHEMAS: frozenset[str] = frozenset({ENTERPRISE_USER_SCHEMA.lower()})

_ENTERPRISE = ENTERPRISE_USER_SCHEMA.lower()
_MANAGER = f"{_ENTERPRISE}:manager"

OpName = Literal["add", "replace", "remove"]


# --------------------------------------------------------------------------- schema facts


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The item type of a field annotation, and whether it is a list (multi-valued)."""
    is_list = False
    for _ in range(8):  # Annotated[Optional[list[X]]] at worst; bounded, never recursive
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
        elif origin is list and args:
            is_list, annotation = True, args[0]
        else:
            break
    return annotation, is_list


def _schema_facts() -> tuple[dict[str, str], frozenset[str], frozenset[str]]:
    """Attribute spellings, boolean and multi-valued attributes, read from scim2-models.

    Reading them from the models keeps this module in step with the schemas the caller
    validates against, instead of a second hand-written list.
    """
    spelling: dict[str, str] = {}
    booleans: set[str] = set()
    multi: set[str] = set()

    def walk(model: type[BaseModel], prefix: str, depth: int) -> None:
        for name, field in model.model_fields.items():
            alias = field.serialization_alias or name
            if alias.startswith("urn:") or (prefix.startswith("urn:") and alias == "schemas"):
                continue
            spelling.setdefault(alias.lower(), alias)
            key = prefix + alias.lower()
            item, is_list = _unwrap(field.annotation)
            if is_list:
                multi.add(key)
            if item is bool:
                booleans.add(key)
            if depth == 0 and isclass(item) and issubclass(item, BaseModel):
                walk(item, key + ".", depth + 1)

    walk(User, "", 0)
    walk(Group, "", 0)
    walk(EnterpriseUser, _ENTERPRISE + ":", 0)
    return spelling, frozenset(booleans), frozenset(multi)


_SPELLING, BOOLEAN_ATTRIBUTES, MULTI_VALUED_ATTRIBUTES = _schema_facts()
"""``BOOLEAN_ATTRIBUTES``: normalized paths coerced from Entra's ``"True"``/``"False"``
(``active``, ``emails.primary``...). ``MULTI_VALUED_ATTRIBUTES``: paths whose value is a list
(``emails``, ``members``...), so ``add`` appends instead of overwriting."""


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class PatchOperation:
    """One canonical PATCH operation.

    ``attribute`` is the normalized target: lowercase, core schema URN stripped, at most one
    dotted sub-attribute (``active``, ``name.givenname``, ``members``, ``emails``,
    ``urn:...:enterprise:2.0:user:manager``; a whole extension is its URN). With a value
    selection (``emails[type eq "work"].value``) ``attribute`` is the multi-valued attribute,
    ``value_filter`` the selection and ``sub_attribute`` what follows the brackets.
    ``value`` is the JSON value with booleans coerced; for ``remove`` it is ``None`` unless
    the client listed the values to remove (``members`` with ``[{"value": id}]``).
    """

    op: OpName
    attribute: str
    value: Any = None
    value_filter: Node | None = None
    sub_attribute: str | None = None


@dataclass(frozen=True, slots=True)
class _Context:
    resource_id: str
    booleans: frozenset[str]
    extensions: frozenset[str]
    multi_valued: frozenset[str]
    ignored: frozenset[str]


def normalize_patch(
    body: Any,
    *,
    resource_id: str,
    boolean_attributes: Collection[str] = BOOLEAN_ATTRIBUTES,
    extension_schemas: Collection[str] = EXTENSION_SCHEMAS,
    multi_valued: Collection[str] = MULTI_VALUED_ATTRIBUTES,
    ignored_attributes: Collection[str] = ("password",),
) -> list[PatchOperation]:
    """Validate a PATCH body and turn it into canonical operations, in request order.

    ``resource_id`` is the id of the patched resource: Okta repeats ``replace {id,
    displayName}`` on every group update, so an ``id`` equal to it is dropped and any other
    ``id`` is a ``mutability`` error. ``boolean_attributes`` (normalized paths) are coerced
    from strings; for a single-valued attribute (not in ``multi_valued``) Entra's legacy
    ``[{"value": x}]`` is read as ``x``. Raises ``ScimError`` subclasses only, whatever JSON
    ``body`` is. Operations on ``ignored_attributes`` are dropped: Okta syncs ``password``,
    and we never store one.
    """
    if not isinstance(body, Mapping):
        raise InvalidSyntaxError("a PATCH body must be a JSON object")
    _check_body(body)
    schemas = _get(body, "schemas")
    if not isinstance(schemas, list) or PATCH_OP_SCHEMA.lower() not in {
        s.lower() for s in schemas if isinstance(s, str)
    }:
        raise InvalidSyntaxError(f"a PATCH body must list the schema {PATCH_OP_SCHEMA}")
    operations = _get(body, "Operations")
    if not isinstance(operations, list) or not operations:
        raise InvalidSyntaxError("'Operations' must be a non-empty list")

    ctx = _Context(
        resource_id=resource_id,
        booleans=frozenset(b.lower() for b in boolean_attributes),
        extensions=frozenset(e.lower() for e in extension_schemas),
        multi_valued=frozenset(m.lower() for m in multi_valued),
        ignored=frozenset(i.lower() for i in ignored_attributes),
    )
    result: list[PatchOperation] = []
    for index, raw in enumerate(operations):
        result.extend(_normalize_operation(raw, index, ctx))
    return result


# Body -> Operations -> op -> value -> list -> entry -> value is 6; the margin is for clients
# that nest a little more. The bound keeps recursive copying clear of the recursion limit.
_MAX_DEPTH = 16


def _check_body(body: Any) -> None:
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise InvalidSyntaxError(f"the PATCH body nests more than {_MAX_DEPTH} levels")
        if isinstance(node, str) and "\x00" in node:
            # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the driver.
            raise InvalidValueError("the PATCH body contains a NUL character")
        if isinstance(node, Mapping):
            stack.extend((child, depth + 1) for child in node.values())
            stack.extend((key, depth + 1) for key in node)
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _normalize_operation(raw: Any, index: int, ctx: _Context) -> list[PatchOperation]:
    where = f"Operations[{index}]"
    if not isinstance(raw, Mapping):
        raise InvalidSyntaxError(f"{where} must be an object")
    op_name = _get(raw, "op")
    # Entra capitalises ("Replace"); the RFC's values are lowercase.
    op = op_name.lower() if isinstance(op_name, str) else None
    if op not in ("add", "replace", "remove"):
        raise InvalidSyntaxError(f"{where}.op must be add, replace or remove, not {op_name!r}")
    path = _get(raw, "path")
    if path is not None and not isinstance(path, str):
        raise InvalidPathError(f"{where}.path must be a string")
    has_value = _has(raw, "value")
    value = _get(raw, "value")

    if not path:
        if op == "remove":
            raise NoTargetError(f"{where}: remove needs a path")
        if not isinstance(value, Mapping):
            raise InvalidValueError(f"{where}: {op} without a path needs an object value")
        return list(_expand(op, value, None, ctx))

    node = parse_path(path)
    schema = _schema_urn(node, ctx)
    if schema is not None:
        # The path is a whole schema: the extension object, or (oddly) the core schema.
        if op == "remove":
            if schema in CORE_SCHEMAS:
                raise InvalidPathError(f"{where}: the core schema cannot be removed")
            return [PatchOperation("remove", schema)]
        if not isinstance(value, Mapping):
            raise InvalidValueError(f"{where}: the value of {path!r} must be an object")
        return list(_expand(op, value, None if schema in CORE_SCHEMAS else schema, ctx))

    if op != "remove" and not has_value:
        raise InvalidValueError(f"{where}: {op} needs a value")
    uri = (node.attr_path if isinstance(node, ValuePath) else node).uri
    if uri is not None and not _known_schema(uri, ctx):
        raise InvalidPathError(f"{where}: unknown schema {uri!r} in path {path!r}")
    if isinstance(node, ValuePath):
        attribute = normalize_attr_path(node.attr_path)
        sub = node.sub_attr.lower() if node.sub_attr else None
        return _make(op, attribute, value, node.val_filter, sub, ctx)
    return _make(op, normalize_attr_path(node), value, None, None, ctx)


def _schema_urn(node: AttrPath | ValuePath, ctx: _Context) -> str | None:
    """The lowercase URN when a path names a whole schema rather than an attribute.

    The grammar reads ``urn:...:2.0:User`` as attribute ``User`` of schema ``urn:...:2.0``.
    """
    if not isinstance(node, AttrPath) or node.uri is None or node.sub_attr is not None:
        return None
    urn = f"{node.uri}:{node.attr}"
    return urn.lower() if _known_schema(urn, ctx) else None


def _known_schema(urn: str, ctx: _Context) -> bool:
    return urn.lower() in ctx.extensions or urn.lower() in CORE_SCHEMAS


def _expand(
    op: str, obj: Mapping[str, Any], schema: str | None, ctx: _Context, *, top: bool = True
) -> Iterator[PatchOperation]:
    """One operation per key of a no-path value (or of an extension object).

    Keys may be plain (``active``), dotted (``name.givenName``), URN-qualified
    (``urn:...:User:department``), whole extensions (``urn:...:User: {...}``) or, from
    Entra, value paths (``emails[type eq "work"].value``).
    """
    for key, value in obj.items():
        lower = key.lower()
        if schema is None and lower == "schemas":
            continue  # describes the body, not an attribute to change
        if top and schema is None and (lower in ctx.extensions or lower in CORE_SCHEMAS):
            if not isinstance(value, Mapping):
                raise InvalidValueError(f"the value of {key!r} must be an object")
            nested = None if lower in CORE_SCHEMAS else lower
            yield from _expand(op, value, nested, ctx, top=False)
            continue
        node = parse_path(key)
        uri = (node.attr_path if isinstance(node, ValuePath) else node).uri
        if uri is not None and schema is not None:
            raise InvalidPathError(f"{key!r} cannot be qualified inside {schema!r}")
        if uri is not None and not _known_schema(uri, ctx):
            # Entra may add a schema of its own; like on create, what we do not know of is
            # ignored rather than failing the whole PATCH.
            continue
        prefix = f"{schema}:" if schema is not None else ""
        if isinstance(node, ValuePath):
            attribute = prefix + normalize_attr_path(node.attr_path)
            sub = node.sub_attr.lower() if node.sub_attr else None
            yield from _make(op, attribute, value, node.val_filter, sub, ctx)
        else:
            yield from _make(op, prefix + normalize_attr_path(node), value, None, None, ctx)


def _make(
    op: str,
    attribute: str,
    value: Any,
    value_filter: Node | None,
    sub: str | None,
    ctx: _Context,
) -> list[PatchOperation]:
    schema, name, dotted = _split(attribute)
    if schema is None and name in ctx.ignored:
        return []
    if schema is None and name == "id":
        # Okta sends ``replace {id, displayName}`` with every group update.
        if op != "remove" and value_filter is None and dotted is None and value is not None:
            if value == ctx.resource_id:
                return []
        raise MutabilityError("'id' is assigned by the service provider and cannot change")
    if schema is None and name == "meta":
        raise MutabilityError("'meta' is read-only")

    if (
        value_filter is None
        and dotted is None
        and attribute not in ctx.multi_valued
        and isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], Mapping)
        and len(value[0]) == 1
        and _has(value[0], "value")
    ):
        # Entra (before aadOptscim062020) wraps single values: "value": [{"value": "Babs"}].
        value = _get(value[0], "value")

    if op != "remove" and value is None:
        # RFC 7643 §2.5: null is "unassigned", so replacing with it removes; adding
        # nothing changes nothing (and must never be read as "remove all members").
        if op == "add":
            return []
        op = "remove"

    if op != "remove" or value is not None:
        target = f"{attribute}.{sub}" if sub else attribute
        entry = value_filter is not None and sub is None
        value = _coerce_booleans(target, value, ctx.booleans, entry=entry)
    if attribute == _MANAGER and isinstance(value, str):
        value = {"value": value}  # Entra sends the manager's id bare
    return [PatchOperation(typing.cast(OpName, op), attribute, value, value_filter, sub)]


def _coerce_booleans(target: str, value: Any, booleans: frozenset[str], *, entry: bool) -> Any:
    """Coerce string booleans (Entra: ``"False"``) of boolean attributes, recursively.

    ``entry`` says ``value`` is one item of a multi-valued attribute (a filtered path without
    a sub-attribute), whose keys are sub-attributes of ``target``.
    """
    if target in booleans and not entry:
        return _boolean(target, value)
    if isinstance(value, Mapping):
        return {
            k: _coerce_booleans(f"{target}.{k.lower()}", v, booleans, entry=False)
            for k, v in value.items()
        }
    if isinstance(value, list) and not entry:
        return [_coerce_booleans(target, item, booleans, entry=True) for item in value]
    return copy.deepcopy(value)


def _boolean(target: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidValueError(f"'{target}' must be a boolean, not {value!r}")


# --------------------------------------------------------------------------- members


@dataclass(frozen=True, slots=True)
class MemberStep:
    """One change to a group's member set, in request order."""

    action: Literal["add", "remove", "remove_all", "replace"]
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberPlan:
    """The member operations of one PATCH, in order and folded.

    ``steps`` keeps the request's order. The folded form is what storage runs: the new
    member set is ``(∅ if clear else current) - remove | add``, with ``add`` and ``remove``
    disjoint, i.e. at most ``DELETE all``, ``DELETE ... WHERE user_id IN remove`` and an
    ``INSERT`` of ``add`` that ignores rows already present.
    """

    steps: tuple[MemberStep, ...] = ()
    clear: bool = False
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the PATCH does not touch membership at all."""
        return not self.clear and not self.add and not self.remove


def member_changes(ops: Iterable[PatchOperation], *, attribute: str = "members") -> MemberPlan:
    """Fold the ``members`` operations into a ``MemberPlan``.

    Both removal shapes remove only the listed ids: ``remove members[value eq "id"]`` and
    Entra's legacy ``Remove members`` with ``value: [{"value": id}]``. Only ``remove members``
    without a value (or ``replace members`` with ``[]``/``null``) removes everyone.
    """
    steps: list[MemberStep] = []
    for op in ops:
        if op.attribute == attribute:
            step = _member_step(op)
            if step is not None:
                steps.append(step)
        elif op.attribute.startswith(attribute + "."):
            raise InvalidPathError(
                f"'{attribute}' can only change as a whole or with {attribute}[value eq \"id\"]"
            )

    clear = False
    add: dict[str, None] = {}  # dicts as ordered sets, so the plan is deterministic
    remove: dict[str, None] = {}
    for step in steps:
        if step.action in ("remove_all", "replace"):
            clear = True
            add = dict.fromkeys(step.ids)
            remove = {}
        elif step.action == "add":
            for member_id in step.ids:
                add[member_id] = None
                remove.pop(member_id, None)
        else:
            for member_id in step.ids:
                add.pop(member_id, None)
                if not clear:  # after a clear the id is already gone
                    remove[member_id] = None
    return MemberPlan(tuple(steps), clear, tuple(add), tuple(remove))


def _member_step(op: PatchOperation) -> MemberStep | None:
    if op.sub_attribute is not None:
        raise InvalidPathError(f"cannot {op.op} a sub-attribute of selected members")
    if op.op == "remove":
        if op.value_filter is not None:
            return MemberStep("remove", _ids_from_filter(op.value_filter))
        if op.value is None:
            return MemberStep("remove_all")
        ids = _member_ids(op.value)
        return MemberStep("remove", ids) if ids else None
    if op.value_filter is not None:
        raise InvalidPathError(f"{op.op} cannot select members with a filter")
    ids = _member_ids(op.value)
    if op.op == "replace":
        return MemberStep("replace", ids)
    return MemberStep("add", ids) if ids else None


def _member_ids(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    ids: dict[str, None] = {}
    for item in items:
        member_id = _get(item, "value") if isinstance(item, Mapping) else None
        if not isinstance(member_id, str) or not member_id:
            raise InvalidValueError(f'a member must be an object with a "value" id, not {item!r}')
        ids[member_id] = None
    return tuple(ids)


def _ids_from_filter(node: Node) -> tuple[str, ...]:
    """The ids of ``value eq "a"`` or ``value eq "a" or value eq "b"``; nothing else."""
    if isinstance(node, LogicalExpr) and node.op == LogicalOperator.or_:
        return tuple(dict.fromkeys(i for term in node.terms for i in _ids_from_filter(term)))
    if (
        isinstance(node, Comparison)
        and node.op == CompareOperator.eq
        and node.attr_path.attr.lower() == "value"
        and node.attr_path.sub_attr is None
        and isinstance(node.value, str)
        and node.value
    ):
        return (node.value,)
    raise InvalidFilterError(f'members can only be selected with value eq "id", not {node}')


# --------------------------------------------------------------------------- apply


def apply_operations(
    resource: Mapping[str, Any],
    ops: Iterable[PatchOperation],
    *,
    skip: Collection[str] = ("members",),
    multi_valued: Collection[str] = MULTI_VALUED_ATTRIBUTES,
    extension_schemas: Collection[str] = EXTENSION_SCHEMAS,
) -> dict[str, Any]:
    """Apply operations to the JSON form of a resource and return the new dict.

    Attribute names match case-insensitively; new keys get the schema's spelling. The input
    is not modified. Operations on ``skip`` attributes (``members``: see ``member_changes``)
    are left out. The result is not validated: run it through scim2-models.
    """
    doc: dict[str, Any] = copy.deepcopy(dict(resource))
    applier = _Applier(
        frozenset(m.lower() for m in multi_valued), frozenset(e.lower() for e in extension_schemas)
    )
    skipped = frozenset(s.lower() for s in skip)
    for op in ops:
        schema, name, _ = _split(op.attribute)
        if schema is None and name in skipped:
            continue
        applier.apply(doc, op)
    return doc


class _Applier:
    def __init__(self, multi_valued: frozenset[str], extensions: frozenset[str]) -> None:
        self.multi_valued = multi_valued
        self.extensions = extensions

    def apply(self, doc: dict[str, Any], op: PatchOperation) -> None:
        if op.attribute in self.extensions:
            self.apply_extension(doc, op)
            return
        schema, name, dotted = _split(op.attribute)
        if schema is None and name in ("id", "meta"):
            raise MutabilityError(f"'{name}' cannot be changed")
        container = self.container(doc, schema, create=op.op != "remove")
        if container is None:
            return  # removing from an extension the resource does not have
        key = _find_key(container, name) or _spell(name)
        multi = (f"{schema}:{name}" if schema else name) in self.multi_valued or isinstance(
            container.get(key), list
        )
        if op.value_filter is not None:
            self.apply_selected(container, key, op)
        elif dotted is not None:
            self.apply_sub_attribute(container, key, dotted, op, multi=multi)
        else:
            self.apply_attribute(container, key, op, multi=multi)

    def apply_extension(self, doc: dict[str, Any], op: PatchOperation) -> None:
        key = _find_key(doc, op.attribute)
        if op.op == "remove":
            if key is not None:
                del doc[key]
            schemas = doc.get("schemas")
            if isinstance(schemas, list):
                doc["schemas"] = [
                    s for s in schemas if not (isinstance(s, str) and s.lower() == op.attribute)
                ]
            return
        if not isinstance(op.value, Mapping):
            raise InvalidValueError(f"the value of '{op.attribute}' must be an object")
        container = self.container(doc, op.attribute, create=True)
        assert container is not None
        _merge(container, op.value)

    def container(self, doc: dict[str, Any], schema: str | None, *, create: bool) -> Any:
        if schema is None:
            return doc
        key = _find_key(doc, schema)
        if key is None:
            if not create:
                return None
            key = ENTERPRISE_USER_SCHEMA if schema == _ENTERPRISE else schema
            doc[key] = {}
            schemas = doc.get("schemas")
            if isinstance(schemas, list) and not any(
                isinstance(s, str) and s.lower() == schema for s in schemas
            ):
                schemas.append(key)
        if not isinstance(doc[key], dict):
            raise InvalidValueError(f"'{key}' of the resource is not an object")
        return doc[key]

    def apply_attribute(
        self, container: dict[str, Any], key: str, op: PatchOperation, *, multi: bool
    ) -> None:
        current = container.get(key)
        value = op.value
        if op.op == "remove":
            if value is not None and multi and isinstance(current, list):
                # Remove only the listed values, never the whole attribute.
                given = value if isinstance(value, list) else [value]
                kept = [i for i in current if not any(_same_value(i, g) for g in given)]
                _set_or_drop(container, key, kept)
            else:
                container.pop(key, None)
            return
        if multi:
            items = copy.deepcopy(value) if isinstance(value, list) else [copy.deepcopy(value)]
            if op.op == "add" and isinstance(current, list):
                new = [i for i in items if not any(_same_value(c, i) for c in current)]
                merged = [*current, *new]
                _settle_primary(merged, new)
                container[key] = merged
            else:
                _settle_primary(items, items)
                container[key] = items
            return
        if isinstance(value, Mapping) and isinstance(current, dict):
            # RFC 7644 §3.5.2.1/3: sub-attributes not given are left unchanged.
            _merge(current, value)
        else:
            container[key] = copy.deepcopy(value)

    def apply_sub_attribute(
        self, container: dict[str, Any], key: str, sub: str, op: PatchOperation, *, multi: bool
    ) -> None:
        current = container.get(key)
        targets: list[Any]
        if current is None:
            if op.op == "remove":
                return
            entry: dict[str, Any] = {}
            container[key] = [entry] if multi else entry
            targets = [entry]
        elif isinstance(current, dict):
            targets = [current]
        elif isinstance(current, list):
            # No filter on a multi-valued attribute: every value is the target.
            targets = [t for t in current if isinstance(t, dict)]
            if not targets and op.op != "remove":
                targets = [{}]
                current.append(targets[0])
        else:
            raise InvalidPathError(f"'{key}' has no sub-attribute '{sub}'")
        for target in targets:
            _set_sub(target, sub, op)

    def apply_selected(self, container: dict[str, Any], key: str, op: PatchOperation) -> None:
        assert op.value_filter is not None
        current = container.get(key)
        if current is None:
            current = []
        if not isinstance(current, list):
            raise InvalidPathError(f"'{key}' is not multi-valued: it has no values to select")
        matches = [i for i in current if isinstance(i, dict) and _matches(op.value_filter, i)]

        if op.op == "remove":
            if op.sub_attribute is not None:
                for item in matches:
                    _set_sub(item, op.sub_attribute, op)
            else:
                _set_or_drop(container, key, [i for i in current if not _contains(matches, i)])
            return

        if op.sub_attribute is None and not isinstance(op.value, Mapping):
            raise InvalidValueError(f"the value for selected '{key}' entries must be an object")
        if not matches:
            # Entra adds through a filtered path (``emails[type eq "work"].value``) when no
            # such value exists yet; that works whenever the filter spells out the entry.
            template = _equality_template(op.value_filter)
            if template is None:
                raise NoTargetError(f"no value of '{key}' matches {op.value_filter}")
            entry: dict[str, Any] = dict(template)
            current = [*current, entry]
            container[key] = current
            matches = [entry]
            if op.sub_attribute is None:
                _merge(entry, op.value)
        else:
            for index, item in enumerate(current):
                if not _contains(matches, item):
                    continue
                if op.sub_attribute is None and op.op == "replace":
                    replacement = copy.deepcopy(dict(op.value))
                    current[index] = replacement
                    matches = [replacement if m is item else m for m in matches]
                elif op.sub_attribute is None:
                    _merge(item, op.value)
        if op.sub_attribute is not None:
            for item in matches:
                _set_sub(item, op.sub_attribute, op)
        _settle_primary(current, matches)


def _set_sub(target: dict[str, Any], sub: str, op: PatchOperation) -> None:
    existing = _find_key(target, sub)
    if op.op == "remove":
        if existing is not None:
            del target[existing]
        return
    target[existing or _spell(sub)] = copy.deepcopy(op.value)


def _set_or_drop(container: dict[str, Any], key: str, items: list[Any]) -> None:
    # RFC 7643 §2.5: an empty list is unassigned; drop the key rather than keep [].
    if items:
        container[key] = items
    else:
        container.pop(key, None)


def _settle_primary(items: list[Any], touched: list[Any]) -> None:
    """RFC 7643 §2.4: at most one ``primary: true``; the value just written wins."""
    primaries = [i for i in items if isinstance(i, dict) and _get(i, "primary") is True]
    if len(primaries) < 2:
        return
    winners = [i for i in primaries if _contains(touched, i)] or primaries
    keep = winners[-1]
    for item in primaries:
        if item is not keep:
            item[_find_key(item, "primary") or "primary"] = False


def _merge(target: dict[str, Any], value: Mapping[str, Any]) -> None:
    for k, v in value.items():
        target[_find_key(target, k.lower()) or k] = copy.deepcopy(v)


def _contains(items: list[Any], item: Any) -> bool:
    return any(i is item for i in items)


def _same_value(item: Any, given: Any) -> bool:
    """Whether an existing value is one the client listed (every key it gave matches)."""
    if isinstance(given, Mapping) and isinstance(item, Mapping):
        return bool(given) and all(_loose_equal(_get(item, k), v) for k, v in given.items())
    return _loose_equal(item, given)


def _loose_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    return bool(a == b) and type(a) is type(b)


def _equality_template(node: Node) -> dict[str, Any] | None:
    """``type eq "work" and primary eq true`` -> ``{"type": "work", "primary": True}``."""
    if isinstance(node, Comparison):
        path = node.attr_path
        if node.op != CompareOperator.eq or path.uri or path.sub_attr or node.value is None:
            return None
        return {path.attr: node.value}
    if isinstance(node, LogicalExpr) and node.op == LogicalOperator.and_:
        template: dict[str, Any] = {}
        for term in node.terms:
            part = _equality_template(term)
            if part is None:
                return None
            for k, v in part.items():
                existing = _find_key(template, k.lower())
                if existing is not None and not _loose_equal(template[existing], v):
                    return None
                template[existing or k] = v
        return template
    return None


def _matches(node: Node, item: Mapping[str, Any]) -> bool:
    """Evaluate a value filter on one value of a multi-valued attribute (strings caseless)."""
    if isinstance(node, LogicalExpr):
        results = (_matches(term, item) for term in node.terms)
        return all(results) if node.op == LogicalOperator.and_ else any(results)
    if isinstance(node, Not):
        return not _matches(node.expr, item)
    if isinstance(node, Present | Comparison):
        value = _get(item, node.attr_path.attr)
        if node.attr_path.sub_attr is not None:
            value = _get(value, node.attr_path.sub_attr) if isinstance(value, Mapping) else None
        if isinstance(node, Present):
            return value not in (None, "", [], {})
        return _compare(value, node.op, node.value)
    return False


def _compare(value: Any, op: CompareOperator, literal: Any) -> bool:
    if literal is None or value is None:
        same = value is None and literal is None
        return (
            same if op == CompareOperator.eq else (not same if op == CompareOperator.ne else False)
        )
    if isinstance(value, bool) or isinstance(literal, bool):
        a, b = _as_bool(value), _as_bool(literal)
        if a is None or b is None:
            return op == CompareOperator.ne
        return (a == b) if op == CompareOperator.eq else (a != b and op == CompareOperator.ne)
    if isinstance(value, str) and isinstance(literal, str):
        a, b = value.casefold(), literal.casefold()
    elif isinstance(value, int | float) and isinstance(literal, int | float):
        a, b = value, literal
        if op in (CompareOperator.co, CompareOperator.sw, CompareOperator.ew):
            return False
    else:
        return op == CompareOperator.ne
    if op == CompareOperator.eq:
        return a == b
    if op == CompareOperator.ne:
        return a != b
    if op == CompareOperator.co:
        return b in a  # type: ignore[operator]
    if op == CompareOperator.sw:
        return a.startswith(b)  # type: ignore[union-attr]
    if op == CompareOperator.ew:
        return a.endswith(b)  # type: ignore[union-attr]
    if op == CompareOperator.gt:
        return a > b  # type: ignore[operator]
    if op == CompareOperator.ge:
        return a >= b  # type: ignore[operator]
    if op == CompareOperator.lt:
        return a < b  # type: ignore[operator]
    return a <= b  # type: ignore[operator]


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


# --------------------------------------------------------------------------- helpers


def _split(attribute: str) -> tuple[str | None, str, str | None]:
    """``urn:...:user:manager.value`` -> (``urn:...:user``, ``manager``, ``value``).

    The schema ends at the last colon (attribute names have none; URNs contain dots, as in
    ``2.0``, so the dot is looked for only after it).
    """
    schema: str | None = None
    rest = attribute
    if attribute.startswith("urn:"):
        schema, _, rest = attribute.rpartition(":")
    name, _, sub = rest.partition(".")
    return schema, name, sub or None


def _find_key(mapping: Mapping[str, Any], lower_name: str) -> str | None:
    """The key of ``mapping`` equal to ``lower_name`` ignoring case (SCIM names are caseless)."""
    if lower_name in mapping:
        return lower_name
    for key in mapping:
        if isinstance(key, str) and key.lower() == lower_name:
            return key
    return None


def _get(mapping: Any, name: str) -> Any:
    if not isinstance(mapping, Mapping):
        return None
    key = _find_key(mapping, name.lower())
    return None if key is None else mapping[key]


def _has(mapping: Mapping[str, Any], name: str) -> bool:
    return _find_key(mapping, name.lower()) is not None


def _spell(lower_name: str) -> str:
    return _SPELLING.get(lower_name, lower_name)
