"""A person's NATS credentials, signed with the scoped key of their role set in an account.

The person is a SCIM user; what they may do comes from their groups' bindings to the
account. The user JWT carries no permissions of its own (the scoped key's template applies),
its ``name`` is the userName (the human identity nats-server logs and the audit shows), its
tags name the granting groups, and it lives no longer than the strictest role allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import (
    MIN_CREDS_TTL,
    is_managed_here,
    lock_account,
    record_issued_key,
    resign_account,
)
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import Account, AccountSigningKey, IssuedUserKey, Revocation, User
from resolver.errors import ConflictError, NotFoundError, ValidationError
from resolver.natsjwt import (
    encode_with_payload,
    format_creds,
    is_public_key,
    new_keypair,
    user_claims,
)
from resolver.policy.access import user_grants
from resolver.policy.roles import max_ttl
from resolver.policy.scoped_keys import load_roles, scoped_key_for
from resolver.scim.storage import ID_RE
from resolver.sealing import Sealer

#: What a person gets when they do not ask for a lifetime (capped by their roles).
DEFAULT_TTL = 3_600
_TAG_CHARS = str.maketrans({c: "_" for c in " :,"})


@dataclass(frozen=True)
class PersonCreds:
    """What was issued. ``creds`` holds a seed when the service generated the key."""

    jwt: str
    creds: str | None
    issued: IssuedUserKey
    user_name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    #: The scoped key was created for this issue: the account JWT was re-signed with it.
    new_signing_key: bool


async def find_user(session: AsyncSession, ref: str) -> User:
    """The SCIM user with id ``ref`` or userName ``ref`` (case-insensitive)."""
    clause = User.user_name_key == ref.casefold()
    if ID_RE.match(ref):
        clause = or_(User.id == ref, clause)
    user = await session.scalar(select(User).where(clause))
    if user is None:
        raise NotFoundError(f"no user {ref!r}")
    return user


def group_tag(name: str) -> str:
    # nats-server lower-cases tags, and ``tag(group)`` in templates reads "group:<value>".
    return "group:" + name.translate(_TAG_CHARS).lower()


async def issue_person_creds(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account: Account,
    user_ref: str,
    *,
    ttl_seconds: int | None,
    actor: Actor,
    public_key: str | None = None,
    now: int | None = None,
) -> PersonCreds:
    """Sign a user JWT for the SCIM user ``user_ref`` in ``account``.

    Refused (``ConflictError``) for an inactive user or one without a binding to the
    account. ``public_key``: the caller's own user key (then no seed is made or returned).
    The issued key and its expiry are recorded so a later removal can revoke it.
    """
    if not is_managed_here(account):
        raise ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    if public_key is not None and not is_public_key(public_key, "user"):
        raise ValidationError("public_key must be a user public key (U...)")
    # Locked first: a removal committing meanwhile either comes before this (and the user
    # is refused below) or after (and finds the key issued here to revoke).
    await lock_account(session, account)
    user = await find_user(session, user_ref)
    if not user.active:
        raise ConflictError(f"user {user.user_name!r} is inactive")
    grants = [g for g in await user_grants(session, user.id) if g.account_id == account.id]
    if not grants:
        raise ConflictError(
            f"user {user.user_name!r} has no binding to account {account.name!r}: "
            "none of their groups is bound to it"
        )
    role_names = sorted({g.role for g in grants})
    groups = tuple(sorted({g.group_name for g in grants}))
    cap = max_ttl(await load_roles(session, role_names))
    if ttl_seconds is not None:
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
            raise ValidationError("ttl must be a whole number of seconds")
        if ttl_seconds < MIN_CREDS_TTL:
            raise ValidationError(f"ttl must be at least {MIN_CREDS_TTL} seconds")
    # The roles' cap wins over what was asked, even below MIN_CREDS_TTL: a role whose
    # max_ttl is 30 s means exactly that, and refusing every issue would help nobody.
    ttl_seconds = min(DEFAULT_TTL if ttl_seconds is None else ttl_seconds, cap)

    when = int(time.time()) if now is None else now
    key, created = await scoped_key_for(session, sealer, account, role_names)
    if created:
        # The new scoped key must be in the served (and pushed) account JWT before a user
        # JWT signed by it can connect.
        await resign_account(session, sealer, settings, account, force=True)
    if public_key is not None:
        await check_public_key(
            session, account.id, public_key, user_id=user.id, name=user.user_name
        )
    signed = sign_scoped_user(
        session,
        sealer,
        account,
        key,
        new_signing_key=created,
        name=user.user_name,
        tags=[group_tag(g) for g in groups],
        public_key=public_key,
        expires_at=when + ttl_seconds,
        user_id=user.id,
        now=when,
    )
    issued = signed.issued
    record(
        session,
        actor,
        "policy.user.issue",
        target=account.public_key,
        details={
            "user": user.user_name,
            "user_id": user.id,
            "user_key": issued.public_key,
            "roles": role_names,
            "groups": list(groups),
            "signing_key": issued.signing_key,
            "expires_at": issued.expires_at,
        },
        user=user.user_name,
        account=account.public_key,
    )
    return PersonCreds(
        jwt=signed.jwt,
        creds=signed.creds,
        issued=issued,
        user_name=user.user_name,
        roles=tuple(role_names),
        groups=groups,
        new_signing_key=signed.new_signing_key,
    )


@dataclass(frozen=True)
class SignedUser:
    jwt: str
    #: A creds file with the generated seed, when the caller brought no public key.
    creds: str | None
    issued: IssuedUserKey
    #: The scoped key was created for this issue: the account JWT was re-signed with it.
    new_signing_key: bool


def _key_state(owner: ColumnElement[bool]) -> Select[tuple[bool, bool]]:
    """(revoked here, issued here to someone else) for one public key, in one statement."""
    account_id, public_key = bindparam("account_id"), bindparam("public_key")
    return select(
        exists().where(Revocation.account_id == account_id, Revocation.public_key == public_key),
        exists().where(
            IssuedUserKey.account_id == account_id,
            IssuedUserKey.public_key == public_key,
            owner,
        ),
    )


# Built once: on the hot path of issuing credentials. "Someone else" for a person is any
# other user or a workload; for a workload, any person or another workload name.
_KEY_STATE_PERSON = _key_state(
    or_(IssuedUserKey.user_id.is_(None), IssuedUserKey.user_id != bindparam("user_id"))
)
_KEY_STATE_WORKLOAD = _key_state(
    or_(IssuedUserKey.user_id.is_not(None), IssuedUserKey.name != bindparam("name"))
)


def refuse_public_key(*, revoked: bool, taken: bool) -> None:
    """``ConflictError`` for a caller's public key revoked in the account or issued there
    to someone else (see ``check_public_key``)."""
    if revoked:
        raise ConflictError("that public key was revoked in this account: make a new key")
    if taken:
        raise ConflictError(
            "that public key was issued to someone else in this account: make a new key"
        )


async def check_public_key(
    session: AsyncSession, account_id: int, public_key: str, *, user_id: str | None, name: str
) -> None:
    """Refuse a caller's public key revoked in the account or issued there to someone else.

    Revocation is by public key: a key revoked once must not come back (a JWT issued in the
    entry's second would be born revoked anyway), and a key shared with another person or
    workload would let one's deprovisioning cut the other off, or leave them sharing the
    access. A workload (no ``user_id``) is known by its ``name``. One statement.
    """
    statement = _KEY_STATE_PERSON if user_id is not None else _KEY_STATE_WORKLOAD
    params = {"account_id": account_id, "public_key": public_key, "user_id": user_id, "name": name}
    revoked, taken = (await session.execute(statement, params)).one()
    refuse_public_key(revoked=bool(revoked), taken=bool(taken))


@dataclass(frozen=True)
class ScopedSignature:
    """A user JWT signed with a scoped key, not yet recorded."""

    jwt: str
    #: Its claims as signed (``sub``, ``jti``, ``iat``, ``exp``), for the issued-key row.
    payload: dict[str, Any]
    #: A creds file with the generated seed, when the caller brought no public key.
    creds: str | None


def sign_scoped(
    key_seed: bytes,
    account_public_key: str,
    *,
    name: str,
    tags: list[str],
    public_key: str | None,
    expires_at: int,
    now: int,
) -> ScopedSignature:
    """Sign a user JWT with an account's scoped key (its seed, unsealed): no permissions
    of its own (the key's template applies). ``public_key`` None: a key pair is made and
    its seed returned in ``creds`` (and never stored)."""
    seed = None
    if public_key is None:
        public_key, seed = new_keypair("user")
    claims = user_claims(
        name,
        public_key,
        issuer_account=account_public_key,
        tags=tags,
        exp=expires_at,
        scoped=True,
    )
    token, payload = encode_with_payload(claims, key_seed, iat=now)
    return ScopedSignature(
        jwt=token,
        payload=payload,
        creds=format_creds(token, seed) if seed is not None else None,
    )


def sign_scoped_user(
    session: AsyncSession,
    sealer: Sealer,
    account: Account,
    key: AccountSigningKey,
    *,
    new_signing_key: bool,
    name: str,
    tags: list[str],
    public_key: str | None,
    expires_at: int,
    user_id: str | None,
    now: int | None = None,
) -> SignedUser:
    """Sign and record a user JWT with ``account``'s scoped ``key``.

    The caller decided the person or workload may have the key's roles, holds the account
    lock, re-signed the account if the key is new, and checked ``public_key`` with
    ``check_public_key``. ``public_key`` None: a key pair is made and its seed returned in
    ``creds`` (and never stored).
    """
    signed = sign_scoped(
        sealer.open(key.seed_sealed),
        account.public_key,
        name=name,
        tags=tags,
        public_key=public_key,
        expires_at=expires_at,
        now=int(time.time()) if now is None else now,
    )
    issued = record_issued_key(
        session, account, signed.payload, name=name, signing_key=key.public_key, user_id=user_id
    )
    return SignedUser(
        jwt=signed.jwt,
        creds=signed.creds,
        issued=issued,
        new_signing_key=new_signing_key,
    )
