"""SCIM filters (RFC 7644 §3.4.2.2): parse, then translate to a SQLAlchemy WHERE clause.

Parsing is delegated to scim2-models (pinned ``==0.12.3`` in pyproject): its LALR grammar is
the RFC's ABNF with the errata applied, case-insensitive on operators, depth-limited, and it
yields a public, walkable AST (``scim2_models.path``: ``LogicalExpr``, ``Not``,
``Comparison``, ``Present``, ``ValuePath``, ``AttrPath``). scim2-server only evaluates that
AST in Python over loaded resources, which we must not do (groups and user lists are large),
so the SQL translation is ours. The one thing the RFC grammar refuses and an IdP sends is
Entra's unquoted comparison value (``externalId eq jyoung``); ``_quote_bare_values`` quotes
such words before the grammar sees them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

from scim2_models import Path, ScimFilter
from scim2_models.exceptions import SCIMException
from scim2_models.path import (
    ORDERING_OPERATORS,
    STRING_OPERATORS,
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    PathNode,
    Present,
    ValuePath,
)
from sqlalchemy import and_, func, literal, not_, or_, select, true
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.expression import ColumnElement, FromClause

from resolver.scim.errors import InvalidFilterError, InvalidPathError, ScimError

__all__ = [
    "CORE_SCHEMAS",
    "AttrType",
    "AttributeMap",
    "ColumnAttribute",
    "Node",
    "RelatedAttribute",
    "exists_in",
    "normalize_attr_path",
    "parse_filter",
    "parse_path",
    "to_sql",
]

#: Parsed filter node; the scim2-models AST, re-exported so callers need not import it.
Node: TypeAlias = FilterNode

CORE_USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
#: Attributes of these schemas are addressed without their URN, so the URN is stripped.
CORE_SCHEMAS: frozenset[str] = frozenset({CORE_USER_SCHEMA.lower(), CORE_GROUP_SCHEMA.lower()})

# Real filters are a few dozen characters; the bound keeps a hostile query string from
# costing more than a parse of a few kilobytes.
MAX_FILTER_LENGTH = 4096

_COMPARE_OPS = frozenset(op.value for op in CompareOperator)
_KEYWORDS = _COMPARE_OPS | {"and", "or", "not", "pr"}
_JSON_WORDS = frozenset({"true", "false", "null"})
_BLANK = " \t\f\r\n"  # the characters the grammar ignores between tokens
_DELIMITERS = _BLANK + '()[]"'
# scim2-models reports lark's error column only inside its message ("invalid syntax at column
# N"); should a later version word it differently, its detail is passed on as it is.
_COLUMN_RE = re.compile(r"column (\d+)")


# --------------------------------------------------------------------------- parsing


def _quote_bare_values(text: str) -> tuple[str, list[int]]:
    """Quote a bare word used as a comparison value, as Entra sends them (``eq jyoung``).

    Any word right after ``<attribute> <compare-op>`` that is not ``true``/``false``/``null``
    becomes a JSON string; numbers too, so ``externalId eq 00123`` keeps its text (the SQL
    translation turns numeric strings back into numbers for integer attributes). Blanks
    outside strings become spaces so that the grammar's column is a position in ``text``.

    Returns the rewritten text and, for each of its indexes, the index in ``text`` it came
    from (one extra entry for the end), so errors can point at what the client sent.
    """
    out: list[str] = []
    origin: list[int] = []
    words: list[str] = []  # the last two significant tokens, lowercased ("" for punctuation)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _BLANK:
            out.append(" ")
            origin.append(i)
            i += 1
            continue
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(text[i:j])
            origin.extend(range(i, j))
            words = [*words[-1:], ""]
            i = j
            continue
        if ch in "()[]":
            out.append(ch)
            origin.append(i)
            words = [*words[-1:], ""]
            i += 1
            continue
        j = i
        while j < n and text[j] not in _DELIMITERS:
            j += 1
        word = text[i:j]
        after_operator = (
            len(words) == 2
            and words[1] in _COMPARE_OPS
            and words[0] != ""
            and words[0] not in _KEYWORDS
        )
        if after_operator and word.lower() not in _JSON_WORDS:
            quoted = json.dumps(word)
            out.append(quoted)
            origin.extend([i] * len(quoted))
        else:
            out.append(word)
            origin.extend(range(i, j))
        words = [*words[-1:], word.lower()]
        i = j
    origin.append(n)
    return "".join(out), origin


def _syntax_detail(kind: str, exc: SCIMException, text: str, origin: list[int]) -> str:
    """Rewrite scim2-models' "invalid syntax at column N" to point into the client's text."""
    detail = exc.detail
    match = _COLUMN_RE.search(detail)
    if match is None:
        return f"invalid {kind}: {detail}"
    column = int(match.group(1))
    index = origin[min(max(column - 1, 0), len(origin) - 1)]
    if index >= len(text):
        return f"invalid {kind} syntax at position {index + 1}: unexpected end of {kind}"
    return f"invalid {kind} syntax at position {index + 1}, near {text[index : index + 20]!r}"


def _prepare(text: Any, kind: str, error: type[ScimError]) -> tuple[str, list[int]]:
    if not isinstance(text, str):
        raise error(f"the {kind} must be a string")
    if len(text) > MAX_FILTER_LENGTH:
        raise error(f"the {kind} is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip(_BLANK):
        raise error(f"the {kind} is empty")
    return _quote_bare_values(text)


def parse_filter(text: str) -> Node:
    """Parse a ``filter`` query parameter (or ``/.search`` body field) into its AST.

    Raises ``InvalidFilterError`` (400 ``invalidFilter``) with the position of the problem;
    never anything else, whatever the input.
    """
    rewritten, origin = _prepare(text, "filter", InvalidFilterError)
    try:
        node = ScimFilter(rewritten).ast
    except SCIMException as exc:
        raise InvalidFilterError(_syntax_detail("filter", exc, text, origin)) from None
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: library guards these
        raise InvalidFilterError(f"invalid filter: {exc}") from None
    if node is None:
        raise InvalidFilterError("the filter is empty")
    return node


def parse_path(text: str) -> PathNode:
    """Parse a PATCH ``path`` (RFC 7644 §3.5.2 ``PATH``) into its AST.

    Returns an ``AttrPath`` (``name.givenName``, URN-prefixed paths) or a ``ValuePath``
    (``members[value eq "id"]``, ``emails[type eq "work"].value``). A bare comparison is
    grammatical (errata 7122) but means nothing as a PATCH target, so it is refused.
    Raises ``InvalidPathError`` only.
    """
    rewritten, origin = _prepare(text, "path", InvalidPathError)
    try:
        node = Path(rewritten).ast
    except SCIMException as exc:
        raise InvalidPathError(_syntax_detail("path", exc, text, origin)) from None
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: library guards these
        raise InvalidPathError(f"invalid path: {exc}") from None
    if not isinstance(node, AttrPath | ValuePath):
        raise InvalidPathError(f"the path {text!r} is a filter, not an attribute path")
    return node


def normalize_attr_path(path: AttrPath, *, core_schemas: Iterable[str] = CORE_SCHEMAS) -> str:
    """The lookup key of an attribute path: lowercase, the core schema URN stripped.

    ``urn:ietf:params:scim:schemas:core:2.0:User:name.givenName`` -> ``name.givenname``;
    an extension keeps its URN: ``urn:...:enterprise:2.0:user:manager.value``.
    """
    key = path.attr.lower()
    if path.uri is not None and path.uri.lower() not in core_schemas:
        key = f"{path.uri.lower()}:{key}"
    if path.sub_attr is not None:
        key = f"{key}.{path.sub_attr.lower()}"
    return key


# --------------------------------------------------------------------------- attribute map


class AttrType(StrEnum):
    """How a filter literal is coerced before it is compared with the column."""

    STRING = "string"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    INTEGER = "integer"


#: A column of a Core table or of an ORM entity (``users.c.user_name`` or ``User.user_name``).
SqlColumn: TypeAlias = ColumnElement[Any] | QueryableAttribute[Any]

#: Given a condition over the related rows (``true()`` for ``pr``), returns a correlated
#: ``EXISTS`` (or any boolean clause) selecting the parent rows having such a related row.
ExistsBuilder: TypeAlias = Callable[[ColumnElement[bool]], ColumnElement[bool]]


@dataclass(frozen=True, slots=True)
class ColumnAttribute:
    """A single-valued attribute stored in a column of the filtered table.

    ``case_exact`` follows the attribute's schema: ``id`` and ``externalId`` compare
    exactly, ``userName``, ``displayName``, e-mail values etc. case-insensitively.
    Datetime literals become aware UTC datetimes: map ``DateTime(timezone=True)`` columns.

    ``fold`` is for a column that stores a pre-folded key (``user_name_key`` =
    ``str.casefold(userName)``): the literal is folded in Python and compared exactly, so the
    column's (unique) index serves the lookup instead of a ``lower(col)`` scan.
    """

    column: SqlColumn
    type: AttrType = AttrType.STRING
    case_exact: bool = False
    fold: Callable[[str], str] | None = None


@dataclass(frozen=True, slots=True)
class RelatedAttribute:
    """A multi-valued attribute kept outside the filtered row (join table, child table, JSON).

    ``sub_attributes`` maps the sub-attribute names used inside ``[...]`` or after the dot
    (``value``, ``type``, ``display``) to columns of the related rows; ``exists`` wraps a
    condition over them into a clause over the parent (see ``exists_in``). A comparison on
    the bare attribute (``emails co "@x"``, ``members pr``) uses ``default_sub_attribute``.
    """

    exists: ExistsBuilder
    sub_attributes: AttributeMap
    default_sub_attribute: str = "value"


def exists_in(related: FromClause, *correlation: ColumnElement[bool]) -> ExistsBuilder:
    """An ``ExistsBuilder`` for a related table (or join) and its link to the parent row.

    ``exists_in(group_members, group_members.c.group_id == groups.c.id)`` makes
    ``members[value eq "u1"]`` ``EXISTS (SELECT 1 FROM group_members WHERE group_id =
    groups.id AND user_id = 'u1')``, correlated when used in a query over ``groups``.
    """

    def build(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return select(literal(1)).select_from(related).where(*correlation, condition).exists()

    return build


class AttributeMap:
    """Which SQL each filterable attribute maps to, keyed by normalized path.

    Keys are written the way the SCIM schema spells them (``userName``, ``name.familyName``,
    ``meta.lastModified``, ``urn:...:enterprise:2.0:User:employeeNumber``) and are normalized
    like filter paths (lowercase, core URN stripped); to let ``employeeNumber`` work without
    its extension URN, map both spellings. Anything not mapped is refused with
    ``invalidFilter`` rather than silently matching nothing.
    """

    def __init__(
        self,
        attributes: Mapping[str, ColumnAttribute | RelatedAttribute],
        *,
        core_schemas: Iterable[str] = CORE_SCHEMAS,
    ) -> None:
        self.core_schemas = frozenset(s.lower() for s in core_schemas)
        self._attributes: dict[str, ColumnAttribute | RelatedAttribute] = {}
        for raw_key, spec in attributes.items():
            self._attributes[self.normalize(raw_key)] = spec

    def normalize(self, raw_key: str) -> str:
        """Normalize a key as written by the caller (``urn:...:User:userName`` -> username)."""
        key = raw_key.lower()
        if key.startswith("urn:"):
            schema, _, rest = key.rpartition(":")
            if schema in self.core_schemas:
                return rest
        return key

    def get(self, key: str) -> ColumnAttribute | RelatedAttribute | None:
        """The mapping of a normalized key, or ``None``."""
        return self._attributes.get(key)

    def key_of(self, path: AttrPath) -> str:
        return normalize_attr_path(path, core_schemas=self.core_schemas)


# --------------------------------------------------------------------------- translation


def to_sql(node: Node, attribute_map: AttributeMap) -> ColumnElement[bool]:
    """Translate a parsed filter into a WHERE clause over the mapped columns.

    Raises ``InvalidFilterError`` for unknown attributes, operators an attribute type does
    not support (``gt`` on a boolean, ``co`` on a datetime) and literals that do not fit it.
    """
    return _Translator(attribute_map).build(node, negated=False)


class _Translator:
    def __init__(self, attribute_map: AttributeMap) -> None:
        self.map = attribute_map

    def build(self, node: FilterNode, *, negated: bool) -> ColumnElement[bool]:
        # ``negated`` is true below a ``not``: there a comparison must not yield NULL for a
        # missing value, or ``not (title eq "x")`` would drop the rows without a title.
        if isinstance(node, LogicalExpr):
            terms = [self.build(term, negated=negated) for term in node.terms]
            return and_(*terms) if node.op == LogicalOperator.and_ else or_(*terms)
        if isinstance(node, Not):
            return not_(self.build(node.expr, negated=True))
        if isinstance(node, Comparison | Present):
            return self.leaf(node, negated=negated)
        if isinstance(node, ValuePath):
            spec = self.map.get(self.map.key_of(node.attr_path))
            if spec is None:
                raise _unknown(node.attr_path)
            if not isinstance(spec, RelatedAttribute):
                raise InvalidFilterError(
                    f"attribute '{node.attr_path}' is not multi-valued: "
                    "a [filter] cannot select its values"
                )
            # EXISTS is never NULL, so the condition inside starts afresh.
            inner = _Translator(spec.sub_attributes).build(node.val_filter, negated=False)
            return spec.exists(inner)
        raise InvalidFilterError(f"unsupported filter expression {node}")

    def leaf(self, node: Comparison | Present, *, negated: bool) -> ColumnElement[bool]:
        path = node.attr_path
        key = self.map.key_of(path)
        spec = self.map.get(key)
        if isinstance(spec, ColumnAttribute):
            return _column_condition(spec, node, str(path), negated=negated)
        if isinstance(spec, RelatedAttribute):
            # ``emails co "@x"`` / ``members pr``: any value of the multi-valued attribute.
            sub_key = spec.sub_attributes.normalize(spec.default_sub_attribute)
            sub_spec = spec.sub_attributes.get(sub_key)
            if isinstance(node, Present):
                return spec.exists(true())
            if not isinstance(sub_spec, ColumnAttribute):
                raise _unknown(path)
            return spec.exists(_column_condition(sub_spec, node, str(path), negated=False))
        if path.sub_attr is not None:
            # ``members.value eq "id"``: a sub-attribute of a related attribute.
            parent = self.map.get(key.rpartition(".")[0])
            if isinstance(parent, RelatedAttribute):
                sub_spec = parent.sub_attributes.get(path.sub_attr.lower())
                if not isinstance(sub_spec, ColumnAttribute):
                    raise _unknown(path)
                return parent.exists(_column_condition(sub_spec, node, str(path), negated=False))
        raise _unknown(path)


def _unknown(path: AttrPath) -> InvalidFilterError:
    return InvalidFilterError(f"unknown attribute '{path}'")


_LIKE_ESCAPE = "/"
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")


def _column_condition(
    spec: ColumnAttribute, node: Comparison | Present, name: str, *, negated: bool
) -> ColumnElement[bool]:
    col = spec.column
    if isinstance(node, Present):
        if spec.type is AttrType.STRING:
            return and_(col.is_not(None), col != "")
        return col.is_not(None)

    op = node.op
    if node.value is None:
        # Not in the RFC, but ``eq null`` has one obvious meaning and some clients use it.
        if op == CompareOperator.eq:
            return col.is_(None)
        if op == CompareOperator.ne:
            return col.is_not(None)
        raise InvalidFilterError(f"'{op.value}' cannot compare '{name}' with null")
    if op in ORDERING_OPERATORS and spec.type is AttrType.BOOLEAN:
        raise InvalidFilterError(f"'{op.value}' cannot be used on the boolean '{name}'")
    if op in STRING_OPERATORS and spec.type is not AttrType.STRING:
        raise InvalidFilterError(f"'{op.value}' needs a string attribute; '{name}' is not one")
    value = _coerce(spec.type, node.value, name)

    condition: ColumnElement[bool]
    if spec.type is AttrType.STRING and spec.fold is not None:
        condition = _string_condition(col, op, spec.fold(value), case_exact=True)
    elif spec.type is AttrType.STRING:
        condition = _string_condition(col, op, value, case_exact=spec.case_exact)
    elif op == CompareOperator.eq:
        condition = col == value
    elif op == CompareOperator.ne:
        condition = col != value
    elif op == CompareOperator.gt:
        condition = col > value
    elif op == CompareOperator.ge:
        condition = col >= value
    elif op == CompareOperator.lt:
        condition = col < value
    else:
        condition = col <= value

    if op == CompareOperator.ne:
        # A missing value is "not equal" (scim2-models' evaluator agrees), and the OR keeps
        # the clause from being NULL, so it is also safe under ``not``.
        return or_(col.is_(None), condition)
    if negated:
        return and_(col.is_not(None), condition)
    return condition


def _string_condition(
    col: SqlColumn, op: CompareOperator, value: str, *, case_exact: bool
) -> ColumnElement[bool]:
    if op in STRING_OPERATORS:
        escaped = (
            value.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
            .replace("%", _LIKE_ESCAPE + "%")
            .replace("_", _LIKE_ESCAPE + "_")
        )
        pattern = {
            CompareOperator.co: f"%{escaped}%",
            CompareOperator.sw: f"{escaped}%",
            CompareOperator.ew: f"%{escaped}",
        }[op]
        if not case_exact:
            # lower() on both sides, so the database's idea of case applies to both (SQLite's
            # lower() is ASCII-only; Python's str.lower() is not).
            return func.lower(col).like(func.lower(literal(pattern)), escape=_LIKE_ESCAPE)
        # SQLite's LIKE ignores ASCII case, PostgreSQL's does not: LIKE narrows (and can use
        # an index), a case-sensitive check that both databases implement alike decides.
        like = col.like(literal(pattern), escape=_LIKE_ESCAPE)
        if op == CompareOperator.co:
            exact = func.replace(col, value, "") != col if value else true()
        elif op == CompareOperator.sw:
            exact = func.substr(col, 1, len(value)) == value
        else:
            exact = func.substr(col, func.length(col) - len(value) + 1) == value
        return and_(like, exact)

    left: Any = col if case_exact else func.lower(col)
    right: Any = literal(value) if case_exact else func.lower(literal(value))
    if op == CompareOperator.eq:
        return left == right
    if op == CompareOperator.ne:
        return left != right
    if op == CompareOperator.gt:
        return left > right
    if op == CompareOperator.ge:
        return left >= right
    if op == CompareOperator.lt:
        return left < right
    return left <= right


def _coerce(kind: AttrType, value: Any, name: str) -> Any:
    """Bring a literal to the attribute's type; IdPs quote booleans and numbers freely."""
    if kind is AttrType.STRING:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, str) and "\x00" not in value:  # PostgreSQL text cannot hold NUL
            return value
    elif kind is AttrType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"  # Entra sends "True"/"False"
    elif kind is AttrType.INTEGER:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and len(value) < 24 and _INTEGER_RE.fullmatch(value.strip()):
            number = int(value)
        # Beyond 64 bits the driver, not the filter, would fail: a 500 instead of a 400.
        if number is not None and -(2**63) <= number < 2**63:
            return number
    elif kind is AttrType.DATETIME and isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)  # RFC 7643 §2.3.5 wants an offset
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):  # OverflowError: year 1 with a positive offset
            raise InvalidFilterError(
                f"'{name}' needs an ISO 8601 dateTime, not {value!r}"
            ) from None
    raise InvalidFilterError(f"'{name}' needs a {kind.value} value, not {value!r}")
