"""The one decision behind every credential: a verified identity → a short-lived user JWT.

``POST /v1/credentials``, ``GET /v1/credentials/creds`` and the auth callout all end here,
so a person or workload gets the same answer however they ask.

- A person is the SCIM user whose attribute (userName, email, externalId, id) equals the
  identity's user value. Inactive: refused, whatever else the token says.
- A workload is an identity with no SCIM user; it can only reach accounts through bindings
  that match a token claim (``roles=ci-deployer``, ``groups=...``).
- Credentials never outlive the IdP token they came from, except by the IdP's configured
  grace for a person whose access comes from SCIM groups (the removal path revokes those);
  access that rests on a token claim stops with the token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, null, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import (
    MIN_CREDS_TTL,
    get_account,
    is_managed_here,
    lock_account_id,
    resign_account,
)
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.credentials.identity import Identity
from resolver.db.models import Account, Binding, Group, GroupMember, IssuedKeyClaim, Role, User
from resolver.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from resolver.natsjwt import is_public_key
from resolver.policy.access import Grant, grants_for
from resolver.policy.roles import max_ttl, parse_role, role_set_name
from resolver.policy.scoped_keys import load_roles, scoped_key_for
from resolver.policy.user_creds import group_tag, scoped_key_checked, sign_scoped_user
from resolver.sealing import Sealer

#: ``Grant.group_id`` of a grant that comes from a token claim, not a SCIM group.
CLAIM_GROUP_PREFIX = "claim:"


@dataclass(frozen=True)
class CredentialRequest:
    """What the caller asks for; everything but the identity is optional."""

    #: The caller's user public key (U...); None: a key pair is made, the seed returned.
    public_key: str | None
    #: Account name or public key; None: the only account the identity reaches.
    account: str | None = None
    #: A subset of the roles held in that account; None: all of them.
    roles: tuple[str, ...] | None = None
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class IssuedCredentials:
    jwt: str
    #: A creds file with a generated seed (never stored), when no public key was given.
    creds: str | None
    account_name: str
    account_public_key: str
    #: The account JWT in force after the issue (wait for its push if the key is new).
    account_jti: str
    #: The human (or workload) identity in the user JWT's ``name``.
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    expires_at: int
    #: A scoped key was made for this role set: the account JWT must reach the servers
    #: before the credentials work there.
    new_signing_key: bool
    user_public_key: str


def _claim_bindings(*columns: Any) -> Select[Any]:
    """``columns`` of the live bindings on the claims named by the ``names`` parameter
    (only claims the token carries can match: bindings on other claims are not read)."""
    return (
        select(*columns)
        .select_from(Binding)
        .join(Role, Role.id == Binding.role_id)
        .join(Account, Account.id == Binding.account_id)
        .where(
            Binding.claim_name.in_(bindparam("names", expanding=True)),
            Account.deleted_at.is_(None),
            or_(Binding.ends_at.is_(None), Binding.ends_at > bindparam("now")),
        )
    )


# Statements of the hot path, built once (building them costs more CPU than running them).
_CLAIM_GRANTS = _claim_bindings(
    Binding.account_id,
    Account.name,
    Role.name,
    Binding.id,
    Binding.claim_name,
    Binding.claim_value,
    Role.spec,
).order_by(Account.name, Role.name, Binding.id)
_CLAIM_GRANTS_IN_ACCOUNT = _CLAIM_GRANTS.where(Binding.account_id == bindparam("account_id"))


@dataclass(frozen=True)
class Person:
    """The SCIM user a token names (what the decision needs of it)."""

    id: str
    user_name: str
    active: bool


def _person_grants(column: Any) -> Select[Any]:
    # The user, outer-joined to every grant their groups give: one statement tells an
    # unknown user (no row), an inactive one, one without a binding (NULL grant columns)
    # and the grants themselves. The join conditions mirror resolver.policy.access.
    now = bindparam("now")
    return (
        select(
            User.id,
            User.user_name,
            User.active,
            Binding.account_id,
            Account.name,
            Role.name,
            Binding.id,
            Group.id,
            Group.display_name,
            Role.spec,
        )
        .select_from(User)
        .outerjoin(GroupMember, GroupMember.user_id == User.id)
        .outerjoin(Group, Group.id == GroupMember.group_id)
        .outerjoin(
            Binding,
            and_(
                or_(
                    Binding.group_id == Group.id,
                    and_(
                        Binding.group_id.is_(None),
                        Binding.group_name_key == Group.display_name_key,
                    ),
                ),
                or_(Binding.ends_at.is_(None), Binding.ends_at > now),
            ),
        )
        .outerjoin(Account, and_(Account.id == Binding.account_id, Account.deleted_at.is_(None)))
        .outerjoin(Role, Role.id == Binding.role_id)
        .where(column == bindparam("value"))
    )


def _typed_null(column: Any) -> Any:
    # A NULL of the column's type: PostgreSQL wants each UNION column of one type.
    return null().cast(column.type)


_NOT_A_CLAIM = (_typed_null(Binding.claim_name), _typed_null(Binding.claim_value))
# The claim grants shaped like _person_grants rows (no user, no group), for a UNION ALL.
_CLAIM_ROWS = _claim_bindings(
    _typed_null(User.id),
    _typed_null(User.user_name),
    _typed_null(User.active),
    Binding.account_id,
    Account.name,
    Role.name,
    Binding.id,
    _typed_null(Group.id),
    _typed_null(Group.display_name),
    Role.spec,
    Binding.claim_name,
    Binding.claim_value,
)
# Per user attribute: the person's grants alone, or with the token's claim grants in the
# same statement (one round trip fewer on the hot path). Claim rows have no user id.
_PERSON_GRANTS = {}
_PERSON_AND_CLAIM_GRANTS = {}
for _attribute, _column in (
    ("userName", User.user_name_key),
    ("email", User.email),
    ("externalId", User.external_id),
    ("id", User.id),
):
    _PERSON_GRANTS[_attribute] = _person_grants(_column)
    _PERSON_AND_CLAIM_GRANTS[_attribute] = union_all(
        _person_grants(_column).add_columns(*_NOT_A_CLAIM), _CLAIM_ROWS
    )


async def identity_grants(
    session: AsyncSession, identity: Identity
) -> tuple[Person | None, list[Grant]]:
    """The SCIM user ``identity`` names (None: a workload, or never provisioned), the
    grants their groups give them (none when inactive) and the grants of claim bindings
    the token's claims match, sorted by account, role and binding: one statement."""
    value = identity.user_value
    if not value:
        return None, await claim_grants(session, identity)
    attribute = identity.user_attribute
    if attribute == "userName":
        value = value.casefold()
    elif attribute == "email":
        value = value.lower()
    params: dict[str, Any] = {"value": value, "now": datetime.now(UTC)}
    if identity.claims:
        # Only claims the token carries can match: bindings on other claims are not read.
        params["names"] = sorted(identity.claims)
        rows = list(await session.execute(_PERSON_AND_CLAIM_GRANTS[attribute], params))
    else:
        rows = list(await session.execute(_PERSON_GRANTS[attribute], params))
    people = {row[0] for row in rows if row[0] is not None}
    if len(people) > 1:
        # Two SCIM users share that email or externalId: picking one would be a guess.
        raise PermissionDeniedError(
            f"more than one SCIM user has {attribute} {value!r}; ask an admin to fix the IdP"
        )
    person = None
    grants: list[Grant] = []
    for row in rows:
        if row[0] is None:  # a claim binding's row
            grants += _claim_grant(identity, *row[3:7], row[9], row[10], row[11])
            continue
        person = Person(row[0], row[1], bool(row[2]))
        if person.active and row[3] is not None and row[4] is not None and row[5] is not None:
            grants.append(Grant(*row[3:10]))
    grants.sort(key=lambda g: (g.account_name, g.role, g.binding_id))
    return person, (grants if person is None or person.active else [])


def _claim_grant(
    identity: Identity,
    account_id: int,
    account_name: str,
    role: str,
    binding_id: int,
    spec: Any,
    claim: str,
    value: str,
) -> list[Grant]:
    """The grant of one claim binding, if the token's claim carries its value."""
    if value not in identity.claim_values(claim):
        return []
    group = CLAIM_GROUP_PREFIX + claim
    return [Grant(account_id, account_name, role, binding_id, group, value, spec)]


async def claim_grants(
    session: AsyncSession, identity: Identity, *, account_id: int | None = None
) -> list[Grant]:
    """Grants of bindings whose (claim, value) the identity's verified token carries."""
    if not identity.claims:
        return []
    params: dict[str, object] = {"names": sorted(identity.claims), "now": datetime.now(UTC)}
    if account_id is None:
        rows = await session.execute(_CLAIM_GRANTS, params)
    else:
        rows = await session.execute(_CLAIM_GRANTS_IN_ACCOUNT, {**params, "account_id": account_id})
    found = []
    for bound_to, account_name, role, binding_id, claim, value, spec in rows:
        found += _claim_grant(
            identity, bound_to, account_name, role, binding_id, spec, claim, value
        )
    return found


def _choose_account(grants: list[Grant], wanted: str | None, who: str) -> str:
    names = sorted({g.account_name for g in grants})
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise ValidationError(
            f"{who} reaches accounts {', '.join(names)}: say which one with account"
        )
    return wanted


def _role_set(
    grants: list[Grant], wanted: tuple[str, ...] | None, name: str, account: str
) -> tuple[list[str], list[Grant]]:
    """The role set to sign for (all held, or the asked subset) and the grants giving it."""
    if not grants:
        raise PermissionDeniedError(f"{name} has no binding to account {account!r}")
    held = {g.role for g in grants}
    if wanted is not None:
        asked = set(wanted)
        if not asked:
            raise ValidationError("roles, when given, must name at least one role")
        if missing := sorted(asked - held):
            raise PermissionDeniedError(
                f"{name} does not hold {', '.join(missing)} in account {account!r} "
                f"(holds {', '.join(sorted(held))})"
            )
        held = asked
    return sorted(held), [g for g in grants if g.role in held]


async def exchange(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    identity: Identity,
    request: CredentialRequest,
    *,
    via: str,
    source: str | None,
    request_id: str | None = None,
    now: int | None = None,
) -> IssuedCredentials:
    """Decide and sign the user JWT ``identity`` may have, and record it (issued key, audit).

    ``via`` names the way in for the audit (``token``, ``proxy``, ``callout``). Refusals
    are ``PermissionDeniedError`` (who they are is known, what they want is not theirs),
    ``AuthenticationError`` (the token ran out) or ``ValidationError`` (a bad request).
    The caller owns the transaction.
    """
    when = int(time.time()) if now is None else now
    if request.public_key is not None and not is_public_key(request.public_key, "user"):
        raise ValidationError("public_key must be a user public key (U...)")
    if request.ttl_seconds is not None and (
        isinstance(request.ttl_seconds, bool)
        or not isinstance(request.ttl_seconds, int)
        or request.ttl_seconds < MIN_CREDS_TTL
    ):
        raise ValidationError(f"ttl must be a whole number of seconds, at least {MIN_CREDS_TTL}")
    if identity.expires_at is not None and identity.expires_at <= when:
        # Accepted within the IdP's clock-skew leeway, but nothing is left to issue for.
        raise AuthenticationError("the token has expired")

    # Everything that can be read before the account lock is read here: on SQLite the lock
    # is the database's one write lock, so what happens under it decides the throughput.
    user, grants = await identity_grants(session, identity)
    if user is not None and not user.active:
        raise PermissionDeniedError(f"user {user.user_name!r} is inactive")
    if user is not None:
        name = user.user_name
    else:
        name = identity.workload_name or f"{identity.idp}:{identity.subject}"
    if not grants:
        if user is None and identity.user_value:
            raise PermissionDeniedError(
                f"no SCIM user has {identity.user_attribute} {identity.user_value!r}, "
                "and no binding matches the token's claims"
            )
        if user is None:
            raise PermissionDeniedError(
                f"{name} is not a provisioned user and no binding matches its token's claims"
            )
        raise PermissionDeniedError(f"user {name!r} has no binding to any account")

    wanted_account = _choose_account(grants, request.account, name)
    account_id = {g.account_name: g.account_id for g in grants}.get(wanted_account)
    if account_id is None and is_public_key(wanted_account, "account"):
        try:
            account_id = (await get_account(session, wanted_account)).id
        except NotFoundError:
            pass
    # An unknown account gets the same answer as one they are not bound to: callers who
    # are not admins learn nothing about which accounts exist.
    grants = [g for g in grants if g.account_id == account_id]
    role_names, used = _role_set(grants, request.roles, name, wanted_account)
    specs = {g.role: g.role_spec for g in used if g.role_spec is not None}
    roles = (
        [parse_role(role, specs[role]) for role in role_names]
        if set(specs) == set(role_names)
        else await load_roles(session, role_names)
    )
    lifetime = min(
        settings.credentials.default_ttl_seconds
        if request.ttl_seconds is None
        else request.ttl_seconds,
        max_ttl(roles),
    )
    from_scim = any(not g.group_id.startswith(CLAIM_GROUP_PREFIX) for g in used)
    from_claims = any(g.group_id.startswith(CLAIM_GROUP_PREFIX) for g in used)
    if identity.expires_at is not None:
        # SCIM-granted access of a person is revoked by SCIM; claim-granted access has no
        # such path, so it ends with the token.
        grace = 0 if from_claims or user is None else identity.grace_seconds
        lifetime = min(lifetime, identity.expires_at + grace - when)
    user_id = user.id if user is not None else None
    key = await scoped_key_checked(
        session, account_id, role_set_name(roles), request.public_key, user_id=user_id, name=name
    )

    # Locked, then what granted the roles read again: a removal committing meanwhile
    # either comes before this read (and the access is gone) or after (and finds the key
    # issued here to revoke). Nothing else is read under the lock unless it must be.
    try:
        account = await lock_account_id(session, account_id)
    except NotFoundError:
        raise PermissionDeniedError(
            f"{name} has no binding to account {wanted_account!r}"
        ) from None
    if not is_managed_here(account):
        raise ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    current = []
    if from_scim and user is not None:
        current += await grants_for(session, user.id, account_id=account.id)
    if from_claims:
        current += await claim_grants(session, identity, account_id=account.id)
    if not set(role_names) <= {g.role for g in current}:
        raise PermissionDeniedError(f"{name} has no binding to account {account.name!r}")
    used = [g for g in current if g.role in role_names]
    groups = tuple(sorted({g.group_name for g in used}))
    created = False
    if key is None:
        # The first issue for this role set here: made under the lock, so two first issues
        # cannot both make one.
        key, created = await scoped_key_for(session, sealer, account, role_names, roles=roles)
    if created:
        # The new scoped key must be in the served (and pushed) account JWT before a user
        # JWT signed by it can connect.
        await resign_account(session, sealer, settings, account, force=True)
    signed = await sign_scoped_user(
        session,
        sealer,
        account,
        key,
        new_signing_key=created,
        name=name,
        tags=[group_tag(g) for g in groups],
        public_key=request.public_key,
        expires_at=when + lifetime,
        user_id=user_id,
        now=when,
    )
    issued = signed.issued
    claim_bindings = sorted(
        {g.binding_id for g in used if g.group_id.startswith(CLAIM_GROUP_PREFIX)}
    )
    if claim_bindings:
        # SCIM has no members for a claim binding: this link is how ending it finds the key.
        await session.flush()  # for issued.id
        session.add_all(
            IssuedKeyClaim(issued_key_id=issued.id, binding_id=b) for b in claim_bindings
        )
    record(
        session,
        Actor(name=name, request_id=request_id, source=source),
        "credentials.issue",
        target=account.public_key,
        details={
            "via": via,
            "idp": identity.idp,
            "subject": identity.subject,
            "user_id": user_id,
            "account": account.name,
            "user_key": issued.public_key,
            "roles": role_names,
            "groups": list(groups),
            "bindings": sorted({g.binding_id for g in used}),
            "signing_key": issued.signing_key,
            "expires_at": issued.expires_at,
        },
    )
    return IssuedCredentials(
        jwt=signed.jwt,
        creds=signed.creds,
        account_name=account.name,
        account_public_key=account.public_key,
        account_jti=account.jti or "",
        name=name,
        roles=tuple(role_names),
        groups=groups,
        expires_at=int(issued.expires_at or when + lifetime),
        new_signing_key=signed.new_signing_key,
        user_public_key=issued.public_key,
    )


def refusal_actor(
    identity: Identity | None, *, source: str | None, request_id: str | None
) -> Actor:
    """Who to name in the audit row of a refused request: the identity if it verified."""
    if identity is None:
        return Actor(name="anonymous", request_id=request_id, source=source)
    return Actor(
        name=identity.user_value or identity.workload_name or f"{identity.idp}:{identity.subject}",
        request_id=request_id,
        source=source,
    )
