"""The policy file: accounts, roles and bindings declared in YAML (``conf/policy.example.yaml``).

Parsing is strict and complete before anything is applied: every problem is reported with
its place in the file (``bindings[2].role``), so an apply never stops half-way on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from resolver.accounts.specs import validate_spec
from resolver.errors import ValidationError
from resolver.policy.roles import RoleSpec, parse_role

TOP_LEVEL = ("accounts", "roles", "bindings")
BINDING_KEYS = ("group", "group_id", "claim", "account", "role", "until")


@dataclass(frozen=True)
class BindingSpec:
    """One of ``group`` (SCIM displayName), ``group_id`` (SCIM id) or ``claim`` selects who."""

    account: str
    role: str
    group: str | None = None
    group_id: str | None = None
    claim: tuple[str, str] | None = None
    until: datetime | None = None

    @property
    def selector(self) -> str:
        if self.group is not None:
            return f"group {self.group!r}"
        if self.group_id is not None:
            return f"group id {self.group_id}"
        assert self.claim is not None
        return f"token claim {self.claim[0]}={self.claim[1]!r}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.group is not None:
            out["group"] = self.group
        if self.group_id is not None:
            out["group_id"] = self.group_id
        if self.claim is not None:
            out["claim"] = {"name": self.claim[0], "value": self.claim[1]}
        out["account"] = self.account
        out["role"] = self.role
        if self.until is not None:
            out["until"] = self.until.isoformat().replace("+00:00", "Z")
        return out


@dataclass(frozen=True)
class PolicyDocument:
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, RoleSpec] = field(default_factory=dict)
    bindings: tuple[BindingSpec, ...] = ()

    def to_yaml(self) -> str:
        doc = {
            "accounts": self.accounts,
            "roles": {name: role.to_dict() for name, role in sorted(self.roles.items())},
            "bindings": [b.to_dict() for b in self.bindings],
        }
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _where(path: str, exc: ValidationError) -> ValidationError:
    return ValidationError(f"{path}: {exc}")


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{path}: expected a non-empty string")
    return value.strip()


def parse_until(value: object, path: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"{path}: expected an ISO 8601 time, got {value!r}") from None
    else:
        raise ValidationError(f"{path}: expected an ISO 8601 time like 2026-12-31T00:00:00Z")
    if moment.tzinfo is None:
        raise ValidationError(f"{path}: give a time zone (e.g. a trailing Z for UTC)")
    return moment.astimezone(UTC)


def parse_binding(body: object, path: str, accounts: set[str], roles: set[str]) -> BindingSpec:
    if not isinstance(body, Mapping):
        raise ValidationError(f"{path}: expected a mapping")
    unknown = set(body) - set(BINDING_KEYS)
    if unknown:
        raise ValidationError(f"{path}: unknown key(s) {sorted(unknown)}")
    selectors = [k for k in ("group", "group_id", "claim") if body.get(k) is not None]
    if len(selectors) != 1:
        raise ValidationError(f"{path}: give exactly one of group, group_id or claim")
    account = _text(body.get("account"), f"{path}.account")
    role = _text(body.get("role"), f"{path}.role")
    if accounts and account not in accounts:
        raise ValidationError(f"{path}.account: {account!r} is not declared under accounts")
    if role not in roles:
        raise ValidationError(f"{path}.role: {role!r} is not declared under roles")
    claim = None
    if body.get("claim") is not None:
        raw = body["claim"]
        if not isinstance(raw, Mapping) or set(raw) != {"name", "value"}:
            raise ValidationError(f"{path}.claim: expected {{name: roles, value: ...}}")
        claim = (
            _text(raw["name"], f"{path}.claim.name"),
            _text(raw["value"], f"{path}.claim.value"),
        )
    return BindingSpec(
        account=account,
        role=role,
        group=_text(body["group"], f"{path}.group") if body.get("group") is not None else None,
        group_id=(
            _text(body["group_id"], f"{path}.group_id")
            if body.get("group_id") is not None
            else None
        ),
        claim=claim,
        until=parse_until(body["until"], f"{path}.until")
        if body.get("until") is not None
        else None,
    )


def parse_policy(text: str) -> PolicyDocument:
    """A validated ``PolicyDocument`` from YAML text, or a ``ValidationError`` naming the place."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValidationError(f"the policy file is not valid YAML{where}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ValidationError("the policy file must be a mapping with accounts, roles, bindings")
    unknown = set(doc) - set(TOP_LEVEL)
    if unknown:
        raise ValidationError(f"unknown top-level key(s) {sorted(unknown)}: {', '.join(TOP_LEVEL)}")

    accounts: dict[str, dict[str, Any]] = {}
    raw_accounts = doc.get("accounts") or {}
    if not isinstance(raw_accounts, Mapping):
        raise ValidationError("accounts: expected a mapping of account name to settings")
    for name, spec in raw_accounts.items():
        path = f"accounts.{name}"
        try:
            accounts[_text(name, path)] = validate_spec(spec or {})
        except ValidationError as exc:
            raise _where(path, exc) from None

    roles: dict[str, RoleSpec] = {}
    raw_roles = doc.get("roles") or {}
    if not isinstance(raw_roles, Mapping):
        raise ValidationError("roles: expected a mapping of role name to permissions")
    for name, body in raw_roles.items():
        try:
            roles[str(name)] = parse_role(str(name), body or {})
        except ValidationError as exc:
            raise _where(f"roles.{name}", exc) from None

    raw_bindings = doc.get("bindings") or []
    if not isinstance(raw_bindings, list):
        raise ValidationError("bindings: expected a list")
    bindings = tuple(
        parse_binding(body, f"bindings[{i}]", set(accounts), set(roles))
        for i, body in enumerate(raw_bindings)
    )
    seen: set[tuple[Any, ...]] = set()
    for i, binding in enumerate(bindings):
        key = (binding.group, binding.group_id, binding.claim, binding.account, binding.role)
        if key in seen:
            raise ValidationError(f"bindings[{i}]: the same binding is declared twice")
        seen.add(key)
    return PolicyDocument(accounts=accounts, roles=roles, bindings=bindings)
