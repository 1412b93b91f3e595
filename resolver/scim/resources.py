"""Resource schemas (scim2-models) and the validation of what clients send.

Everything a client writes goes through ``validate_user``/``validate_group``: IdP noise is
dropped first (unknown schema URNs and attributes, read-only ``id``/``meta``/``groups``,
Okta's ``password``), then scim2-models checks the rest in the request's context, and the
result is the JSON stored in ``resource``. Never a password: it is dropped before validation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from scim2_models import Context, EnterpriseUser, Group, User

from resolver.scim.errors import InvalidSyntaxError, InvalidValueError

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_RESPONSE_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_REQUEST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"

UserModel = User[EnterpriseUser]
GroupModel = Group

#: Column sizes of ``users``/``groups``: longer values are refused, not truncated.
MAX_KEY_LENGTH = 256
MAX_EMAIL_LENGTH = 320
# JSON nesting real resources never approach; keeps recursion far from Python's limit.
MAX_DEPTH = 32


def _aliases(model: type[Any]) -> dict[str, str]:
    return {
        (field.serialization_alias or name).lower(): field.serialization_alias or name
        for name, field in model.model_fields.items()
    }


_USER_FIELDS = _aliases(UserModel)
_GROUP_FIELDS = _aliases(GroupModel)


def loads(raw: bytes) -> Any:
    """Parse a request body: strict UTF-8 JSON, no NaN/Infinity, bounded nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSyntaxError("the body is not UTF-8") from None

    def reject(constant: str) -> Any:
        raise InvalidSyntaxError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=reject)
    except json.JSONDecodeError as exc:
        raise InvalidSyntaxError(f"the body is not valid JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise InvalidSyntaxError("the body nests too deeply") from None
    check_storable(value)
    return value


def check_storable(value: Any) -> None:
    """Refuse what a database cannot store: NUL, lone surrogates, non-finite numbers, depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidSyntaxError(f"the body nests more than {MAX_DEPTH} levels")
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise InvalidValueError("numbers must be finite")
        elif isinstance(node, Mapping):
            for key, child in node.items():
                _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise InvalidValueError("text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError("text must be valid Unicode (no lone surrogates)") from None


def _validation_detail(exc: PydanticValidationError) -> str:
    # Only locations and messages: pydantic's own text quotes the input, which may be secret.
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "") or "body"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _schemas_of(payload: Mapping[str, Any], core: str, extensions: tuple[str, ...]) -> list[str]:
    schemas = None
    for key, value in payload.items():
        if isinstance(key, str) and key.lower() == "schemas":
            schemas = value
    if schemas is None:
        return [core]  # lenient: the resource type is given by the endpoint
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise InvalidSyntaxError("'schemas' must be a list of URNs")
    lowered = {s.lower() for s in schemas}
    if core.lower() not in lowered:
        raise InvalidSyntaxError(f"'schemas' must contain {core}")
    # Unknown extension URNs (Entra adds its own to groups) are ignored, not refused.
    return [core, *(e for e in extensions if e.lower() in lowered)]


def _clean(
    payload: Any,
    *,
    core: str,
    extensions: tuple[str, ...],
    fields: Mapping[str, str],
    dropped: frozenset[str],
) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise InvalidSyntaxError("the body must be a JSON object")
    schemas = _schemas_of(payload, core, extensions)
    ext_by_lower = {e.lower(): e for e in extensions}
    doc: dict[str, Any] = {"schemas": schemas}
    for key, value in payload.items():
        lower = key.lower()
        if lower == "schemas" or lower in dropped:
            continue
        if lower in ext_by_lower:
            doc[ext_by_lower[lower]] = value
            if ext_by_lower[lower] not in schemas:
                schemas.append(ext_by_lower[lower])
        elif lower.startswith(core.lower() + ":"):
            # A core attribute qualified by its schema URN.
            name = fields.get(lower[len(core) + 1 :])
            if name is not None and name.lower() not in dropped:
                doc[name] = value
        elif lower in fields:
            doc[fields[lower]] = value
        # Anything else (another IdP's extension, a custom attribute) is ignored.
    return doc


def _validate(model: type[Any], doc: dict[str, Any], ctx: Context) -> dict[str, Any]:
    try:
        obj = model.model_validate(doc, scim_ctx=ctx)
    except PydanticValidationError as exc:
        raise InvalidValueError(_validation_detail(exc)) from None
    except (ValueError, TypeError) as exc:
        raise InvalidValueError(f"invalid resource: {type(exc).__name__}") from None
    result: dict[str, Any] = obj.model_dump(mode="json", exclude_none=True)
    for key in ("id", "meta", "password", "groups"):
        result.pop(key, None)
    check_storable(result)
    return result


def validate_user(
    payload: Any, *, replacing: bool, user_location: Callable[[str], str]
) -> dict[str, Any]:
    """The JSON to store for a user create (``replacing=False``) or replace/patch result."""
    doc = _clean(
        payload,
        core=USER_SCHEMA,
        extensions=(ENTERPRISE_SCHEMA,),
        fields=_USER_FIELDS,
        dropped=frozenset({"id", "meta", "password", "groups"}),
    )
    _fill_manager_ref(doc, user_location)
    emails = _hide_emails(doc)
    ctx = Context.RESOURCE_REPLACEMENT_REQUEST if replacing else Context.RESOURCE_CREATION_REQUEST
    result = _validate(UserModel, doc, ctx)
    _restore_emails(result, emails)
    for key in ("userName", "externalId", "displayName"):
        value = result.get(key)
        if isinstance(value, str) and len(value) > MAX_KEY_LENGTH:
            raise InvalidValueError(f"{key} is longer than {MAX_KEY_LENGTH} characters")
    if ENTERPRISE_SCHEMA in result and not result[ENTERPRISE_SCHEMA]:
        del result[ENTERPRISE_SCHEMA]
    if ENTERPRISE_SCHEMA not in result and ENTERPRISE_SCHEMA in result.get("schemas", []):
        result["schemas"] = [s for s in result["schemas"] if s != ENTERPRISE_SCHEMA]
    return result


_EMAIL_STAND_IN = "stand-in@example.com"


def _hide_emails(doc: dict[str, Any]) -> dict[int, str] | None:
    """Take e-mail values out of scim2-models' strict check, which refuses special-use
    domains (``user@corp.local``, Okta's own ``@okta.local``) and rewrites case. The IdP is
    authoritative for addresses and RFC 7643 only says SHOULD, so they are stored as sent."""
    key = next((k for k in doc if k.lower() == "emails"), None)
    items = doc.get(key) if key is not None else None
    if not isinstance(items, list):
        return None
    hidden: dict[int, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        for name, value in item.items():
            if name.lower() == "value" and isinstance(value, str) and value.strip():
                hidden[index] = value
                item[name] = _EMAIL_STAND_IN
    return hidden


def _restore_emails(result: dict[str, Any], hidden: dict[int, str] | None) -> None:
    items = result.get("emails")
    if not hidden or not isinstance(items, list):
        return
    for index, value in hidden.items():
        if index < len(items) and isinstance(items[index], dict):
            items[index]["value"] = value


def _fill_manager_ref(doc: dict[str, Any], user_location: Callable[[str], str]) -> None:
    # Entra sends the manager as a bare id; the schema wants its $ref, which we know.
    ext = doc.get(ENTERPRISE_SCHEMA)
    if not isinstance(ext, dict):
        return
    for key, manager in ext.items():
        if key.lower() == "manager" and isinstance(manager, dict):
            value = next((v for k, v in manager.items() if k.lower() == "value"), None)
            has_ref = any(k.lower() == "$ref" for k in manager)
            if isinstance(value, str) and value and not has_ref:
                manager["$ref"] = user_location(value)


def validate_group(
    payload: Any, *, replacing: bool
) -> tuple[dict[str, Any], dict[str, str | None] | None]:
    """The JSON to store for a group (without members) and its members (id -> display)."""
    doc = _clean(
        payload,
        core=GROUP_SCHEMA,
        extensions=(),
        fields=_GROUP_FIELDS,
        dropped=frozenset({"id", "meta"}),
    )
    ctx = Context.RESOURCE_REPLACEMENT_REQUEST if replacing else Context.RESOURCE_CREATION_REQUEST
    result = _validate(GroupModel, doc, ctx)
    for key in ("displayName", "externalId"):
        value = result.get(key)
        if isinstance(value, str) and len(value) > MAX_KEY_LENGTH:
            raise InvalidValueError(f"{key} is longer than {MAX_KEY_LENGTH} characters")
    members = result.pop("members", None) or []
    # Given as [] or null (RFC 7643 §2.5: unassigned) still means "no members".
    return result, member_displays(members) if "members" in doc else None


def member_displays(members: Any) -> dict[str, str | None]:
    """Member id -> the ``display`` sent with it (or None), in order, ids deduplicated."""
    items = members if isinstance(members, list) else [members]
    found: dict[str, str | None] = {}
    for member in items:
        if not isinstance(member, Mapping):
            raise InvalidValueError('every member must be an object with a "value" (a user id)')
        value = next((v for k, v in member.items() if k.lower() == "value"), None)
        display = next((v for k, v in member.items() if k.lower() == "display"), None)
        if not isinstance(value, str) or not value:
            raise InvalidValueError('every member needs a "value" (the user id)')
        found[value] = display[:MAX_KEY_LENGTH] if isinstance(display, str) and display else None
    return found


def _key(name: str, value: str) -> str:
    # Case-folding can lengthen a value (ß -> ss): the unique key must still fit its column.
    key = value.casefold()
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidValueError(f"{name} is longer than {MAX_KEY_LENGTH} characters")
    return key


def user_columns(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Values of the filterable columns, taken from a validated user document."""
    user_name = doc["userName"]
    email = None
    emails = [e for e in doc.get("emails") or [] if isinstance(e, dict) and e.get("value")]
    if emails:
        primary = next((e for e in emails if e.get("primary") is True), emails[0])
        email = str(primary["value"]).lower()
        if len(email) > MAX_EMAIL_LENGTH:
            email = None
    return {
        "user_name": user_name,
        "user_name_key": _key("userName", user_name),
        "external_id": doc.get("externalId"),
        "display_name": doc.get("displayName"),
        "email": email,
        "active": doc.get("active", True) is not False,
    }


def group_columns(doc: Mapping[str, Any]) -> dict[str, Any]:
    display_name = doc.get("displayName")
    if not isinstance(display_name, str) or not display_name:
        raise InvalidValueError("displayName is required")
    return {
        "display_name": display_name,
        "display_name_key": _key("displayName", display_name),
        "external_id": doc.get("externalId"),
    }
