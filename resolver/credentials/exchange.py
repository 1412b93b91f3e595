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

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import MIN_CREDS_TTL, get_account, is_managed_here, lock_account
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.credentials.identity import Identity
from resolver.db.models import Account, Binding, IssuedKeyClaim, Role, User
from resolver.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from resolver.natsjwt import is_public_key
from resolver.policy.access import Grant, user_grants
from resolver.policy.roles import max_ttl
from resolver.policy.scoped_keys import load_roles
from resolver.policy.user_creds import group_tag, sign_scoped_user
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


async def find_identity_user(session: AsyncSession, identity: Identity) -> User | None:
    """The SCIM user ``identity`` names, or None (a workload, or someone never provisioned)."""
    value = identity.user_value
    if not value:
        return None
    attribute = identity.user_attribute
    if attribute == "userName":
        clause = User.user_name_key == value.casefold()
    elif attribute == "email":
        clause = User.email == value.lower()
    elif attribute == "externalId":
        clause = User.external_id == value
    else:
        clause = User.id == value
    users = list(await session.scalars(select(User).where(clause).limit(2)))
    if len(users) > 1:
        # Two SCIM users share that email or externalId: picking one would be a guess.
        raise PermissionDeniedError(
            f"more than one SCIM user has {attribute} {value!r}; ask an admin to fix the IdP"
        )
    return users[0] if users else None


async def claim_grants(session: AsyncSession, identity: Identity) -> list[Grant]:
    """Grants of bindings whose (claim, value) the identity's verified token carries."""
    if not identity.claims:
        return []
    now = datetime.now(UTC)
    rows = await session.execute(
        select(
            Binding.account_id,
            Account.name,
            Role.name,
            Binding.id,
            Binding.claim_name,
            Binding.claim_value,
        )
        .join(Role, Role.id == Binding.role_id)
        .join(Account, Account.id == Binding.account_id)
        .where(
            Binding.claim_name.is_not(None),
            Account.deleted_at.is_(None),
            or_(Binding.ends_at.is_(None), Binding.ends_at > now),
        )
        .order_by(Account.name, Role.name, Binding.id)
    )
    found = []
    for account_id, account_name, role, binding_id, claim, value in rows:
        if value in identity.claim_values(claim):
            found.append(
                Grant(account_id, account_name, role, binding_id, CLAIM_GROUP_PREFIX + claim, value)
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

    user = await find_identity_user(session, identity)
    if user is not None and not user.active:
        raise PermissionDeniedError(f"user {user.user_name!r} is inactive")
    if user is not None:
        name = user.user_name
    else:
        name = identity.workload_name or f"{identity.idp}:{identity.subject}"

    async def grants_now() -> list[Grant]:
        scim = await user_grants(session, user.id) if user is not None else []
        return scim + await claim_grants(session, identity)

    grants = await grants_now()
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
    try:
        account = await get_account(session, wanted_account)
    except NotFoundError:
        # The same answer as for an account they are not bound to: callers who are not
        # admins learn nothing about which accounts exist.
        raise PermissionDeniedError(
            f"{name} has no binding to account {wanted_account!r}"
        ) from None
    if not is_managed_here(account):
        raise ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    # Locked, then the grants read again: a removal committing meanwhile either comes
    # before this read (and the access is gone) or after (and finds this key to revoke).
    await lock_account(session, account)
    grants = [g for g in await grants_now() if g.account_id == account.id]
    if not grants:
        raise PermissionDeniedError(f"{name} has no binding to account {account.name!r}")
    held = {g.role for g in grants}
    if request.roles is not None:
        wanted = set(request.roles)
        if not wanted:
            raise ValidationError("roles, when given, must name at least one role")
        if missing := sorted(wanted - held):
            raise PermissionDeniedError(
                f"{name} does not hold {', '.join(missing)} in account {account.name!r} "
                f"(holds {', '.join(sorted(held))})"
            )
        held = wanted
    role_names = sorted(held)
    used = [g for g in grants if g.role in held]
    groups = tuple(sorted({g.group_name for g in used}))

    lifetime = min(
        settings.credentials.default_ttl_seconds
        if request.ttl_seconds is None
        else request.ttl_seconds,
        max_ttl(await load_roles(session, role_names)),
    )
    if identity.expires_at is not None:
        # SCIM-granted access of a person is revoked by SCIM; claim-granted access has no
        # such path, so it ends with the token.
        from_claims = any(g.group_id.startswith(CLAIM_GROUP_PREFIX) for g in used)
        grace = 0 if from_claims or user is None else identity.grace_seconds
        lifetime = min(lifetime, identity.expires_at + grace - when)

    signed = await sign_scoped_user(
        session,
        sealer,
        settings,
        account,
        role_names,
        name=name,
        tags=[group_tag(g) for g in groups],
        public_key=request.public_key,
        expires_at=when + lifetime,
        user_id=user.id if user is not None else None,
        now=when,
    )
    issued = signed.issued
    claim_bindings = sorted(
        {g.binding_id for g in used if g.group_id.startswith(CLAIM_GROUP_PREFIX)}
    )
    # SCIM has no members for a claim binding: this link is how ending it finds the key.
    session.add_all(IssuedKeyClaim(issued_key_id=issued.id, binding_id=b) for b in claim_bindings)
    record(
        session,
        Actor(name=name, request_id=request_id, source=source),
        "credentials.issue",
        target=account.public_key,
        details={
            "via": via,
            "idp": identity.idp,
            "subject": identity.subject,
            "user_id": user.id if user is not None else None,
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
