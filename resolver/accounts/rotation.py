"""Signing key rotation: the operator's signing key and the accounts' signing keys.

Operator: the pre-published key scheme. The operator JWT always lists the active key and a
"next" key. A rotation promotes next to active (servers running the previous operator JWT
trust it already, so every account re-signed with it is accepted and no connection drops),
retires the old key, and makes a new next key. The old key stays listed in the operator JWT
until no stored account JWT is signed by it any more (``operator.operator_signing_keys``);
servers learn the new next key only when the operator deploys the new operator JWT (it is
read from their config file, never pushed), which must happen before the following rotation.

Accounts: a rotation makes a new key per (account, role set) that signs every new user JWT;
the old key is marked superseded and stays in the account JWT with its template, so the users
it signed stay connected, until every user JWT it signed has expired; then it is retired
(left out of the account JWT). ``revoke_old`` retires old keys at once: nats-server drops
their users, which is the point when a key leaked.

Every function runs in the caller's transaction and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.operator import (
    get_operator,
    jwt_issuer,
    new_operator_signing_key,
    operator_signing_keys,
    resign_operator,
)
from resolver.accounts.service import is_managed_here, lock_account, resign_account
from resolver.accounts.signing import active_signing_key, next_signing_key
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import (
    Account,
    AccountSigningKey,
    AuthCalloutKeys,
    IssuedUserKey,
    Operator,
    utcnow,
)
from resolver.errors import ConflictError, NotFoundError
from resolver.natsjwt import decode, new_keypair
from resolver.sealing import Sealer


def operator_jwt_url(settings: Settings) -> str:
    """The ``account_server_url`` the operator JWT carries (as ``init`` writes it)."""
    return f"{settings.public_url}/jwt/v1"


async def lock_operator(session: AsyncSession) -> Operator:
    """The operator, its row held until commit: two rotations never promote at once."""
    operator = await get_operator(session)
    await session.execute(
        update(Operator)
        .where(Operator.id == operator.id)
        .values(name=Operator.name)
        .execution_options(synchronize_session=False)
    )
    return operator


@dataclass(frozen=True)
class OperatorKeys:
    """Public keys only: what an operator rotation did (never a seed)."""

    active: str
    next: str
    #: The key that was active before (promotion only).
    retired: str | None = None


async def prepare_next_operator_key(
    session: AsyncSession, sealer: Sealer, settings: Settings, *, actor: Actor
) -> str | None:
    """Add a pre-published next key when the operator has none (an installation made before
    rotation existed); its public key, or None when one exists. The operator JWT is re-signed
    to list it; it signs nothing until servers run that operator JWT and a rotation
    promotes it."""
    operator = await lock_operator(session)
    if await next_signing_key(session, operator) is not None:
        return None
    key = new_operator_signing_key(sealer, operator, activated_at=None)
    session.add(key)
    await session.flush()
    await resign_operator(session, sealer, operator, account_server_url=operator_jwt_url(settings))
    record(
        session,
        actor,
        "operator.signing_key.prepare",
        target=operator.public_key,
        details={"next_key": key.public_key},
    )
    return key.public_key


async def promote_next_operator_key(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> OperatorKeys:
    """Promote the next key to active, retire the active one, make a new next key and
    re-sign the operator JWT. Accounts are not re-signed here (``accounts_to_resign``).

    ``ConflictError`` when there is no next key: promoting a key the servers have never
    seen would make every account they fetch or are pushed afterwards fail to validate.
    """
    when = now or utcnow()
    operator = await lock_operator(session)
    upcoming = await next_signing_key(session, operator)
    if upcoming is None:
        raise ConflictError(
            "the operator JWT lists no next signing key yet: `nats-iam-resolver rotate "
            "--operator` adds one first; deploy that operator JWT to every nats-server"
        )
    current = await active_signing_key(session, operator)
    current.retired_at = when
    upcoming.activated_at = when
    fresh = new_operator_signing_key(sealer, operator, activated_at=None)
    session.add(fresh)
    await session.flush()
    await resign_operator(session, sealer, operator, account_server_url=operator_jwt_url(settings))
    keys = OperatorKeys(
        active=upcoming.public_key, next=fresh.public_key, retired=current.public_key
    )
    record(
        session,
        actor,
        "operator.signing_key.rotate",
        target=operator.public_key,
        details={"active_key": keys.active, "next_key": keys.next, "retired_key": keys.retired},
    )
    return keys


async def operator_keys(session: AsyncSession) -> OperatorKeys | None:
    """The active and next key (None when there is no next key yet)."""
    operator = await get_operator(session)
    upcoming = await next_signing_key(session, operator)
    if upcoming is None:
        return None
    return OperatorKeys(
        active=(await active_signing_key(session, operator)).public_key, next=upcoming.public_key
    )


async def active_key_since(session: AsyncSession) -> datetime | None:
    """When the active operator signing key started signing."""
    operator = await get_operator(session)
    return (await active_signing_key(session, operator)).activated_at


async def accounts_to_resign(session: AsyncSession) -> list[int]:
    """Ids of the accounts held here whose stored JWT is not signed by the active operator
    key: after a promotion, every one of them; after a crash mid-way, the rest."""
    operator = await get_operator(session)
    active = (await active_signing_key(session, operator)).public_key
    rows = await session.execute(
        select(Account.id, Account.jwt)
        .where(
            Account.operator_id == operator.id,
            Account.deleted_at.is_(None),
            Account.seed_sealed.is_not(None),
        )
        .order_by(Account.id)
    )
    return [account_id for account_id, token in rows if jwt_issuer(token or "") != active]


async def foreign_accounts_on_retired_keys(session: AsyncSession) -> list[str]:
    """Names of accounts uploaded with ``nsc push`` whose JWT a retired operator key signed:
    they keep that key listed in the operator JWT until someone re-signs them with nsc."""
    operator = await get_operator(session)
    active = {
        (await active_signing_key(session, operator)).public_key,
        operator.public_key,
    }
    upcoming = await next_signing_key(session, operator)
    if upcoming is not None:
        active.add(upcoming.public_key)
    rows = await session.execute(
        select(Account.name, Account.jwt).where(
            Account.operator_id == operator.id,
            Account.deleted_at.is_(None),
            Account.seed_sealed.is_(None),
        )
    )
    return sorted(name for name, token in rows if jwt_issuer(token or "") not in active)


async def refresh_operator_jwt(session: AsyncSession, sealer: Sealer, settings: Settings) -> bool:
    """Re-sign the operator JWT when the keys it should list changed (a retired key no
    account uses any more); whether it changed."""
    operator = await lock_operator(session)
    before = operator.jwt
    listed = decode(before).claims.get("nats", {}).get("signing_keys", []) if before else None
    if listed == await operator_signing_keys(session, operator):
        return False
    await resign_operator(session, sealer, operator, account_server_url=operator_jwt_url(settings))
    return True


# ------------------------------------------------------------------------------ accounts


@dataclass
class RotatedKeys:
    """What one account's rotation did: public keys only (never a seed)."""

    account: str
    name: str
    #: Old key → its replacement (role set names are in ``role_sets``).
    replaced: dict[str, str] = field(default_factory=dict)
    role_sets: dict[str, str | None] = field(default_factory=dict)
    #: Keys left out of the account JWT now (``revoke_old``): their users are dropped.
    retired: list[str] = field(default_factory=list)


async def rotation_exclusion(session: AsyncSession, account: Account) -> str | None:
    """Why ``account``'s keys are not rotated here (None: they are).

    The system account's user (the pusher's creds file) and the auth callout account's
    sentinel and service user are long-lived JWTs signed by the plain key, outside the
    issued-key records that tell when an old key has no users left: rotating would either
    keep the old key for ever or lock this service out of NATS.
    """
    if not is_managed_here(account):
        return "managed elsewhere (nsc): rotate its keys there"
    if account.is_system:
        return "the system account: its users (the service's own creds) never expire"
    callout = await session.scalar(
        select(AuthCalloutKeys.id).where(AuthCalloutKeys.account_id == account.id)
    )
    if callout is not None:
        return "the auth callout account: its sentinel and service user never expire"
    return None


def _current(older_than: datetime | None) -> list[ColumnElement[bool]]:
    """Conditions of a current (neither superseded nor retired) key made before ``older_than``."""
    conditions = [AccountSigningKey.superseded_at.is_(None), AccountSigningKey.retired_at.is_(None)]
    if older_than is not None:
        conditions.append(AccountSigningKey.created_at <= older_than)
    return conditions


async def keys_due(
    session: AsyncSession, account: Account, *, older_than: datetime | None = None
) -> list[AccountSigningKey]:
    """The account's current signing keys a rotation replaces (made before ``older_than``)."""
    rows = await session.scalars(
        select(AccountSigningKey)
        .where(AccountSigningKey.account_id == account.id, *_current(older_than))
        .order_by(AccountSigningKey.id)
    )
    return list(rows)


async def accounts_due(session: AsyncSession, *, older_than: datetime) -> list[int]:
    """Ids of live accounts with a current signing key made before ``older_than``."""
    rows = await session.scalars(
        select(Account.id)
        .where(
            Account.deleted_at.is_(None),
            Account.seed_sealed.is_not(None),
            exists().where(AccountSigningKey.account_id == Account.id, *_current(older_than)),
        )
        .order_by(Account.id)
    )
    return list(rows)


async def rotate_account_keys(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account: Account,
    *,
    actor: Actor,
    revoke_old: bool = False,
    older_than: datetime | None = None,
    now: datetime | None = None,
) -> RotatedKeys | None:
    """Replace the account's current signing keys (those made before ``older_than``) with
    new ones of the same role sets and templates; re-sign and queue the push.

    Without ``revoke_old`` the old keys stay in the account JWT (superseded): their users
    stay connected until their JWTs expire. With it, they and every earlier superseded key
    are retired now and nats-server drops their users. None when nothing was due.
    ``ConflictError`` for an account whose keys are not rotated here (``rotation_exclusion``).
    """
    reason = await rotation_exclusion(session, account)
    if reason is not None:
        raise ConflictError(f"account {account.name!r} is not rotated: {reason}")
    if not revoke_old and not await keys_due(session, account, older_than=older_than):
        return None  # nothing to do: no lock taken
    # Under the account's lock: a credentials batch holding it picks its key before or
    # after the rotation, never a key superseded meanwhile.
    await lock_account(session, account)
    when = now or utcnow()
    due = await keys_due(session, account, older_than=older_than)
    earlier: list[AccountSigningKey] = []
    if revoke_old:
        earlier = list(
            await session.scalars(
                select(AccountSigningKey).where(
                    AccountSigningKey.account_id == account.id,
                    AccountSigningKey.superseded_at.is_not(None),
                    AccountSigningKey.retired_at.is_(None),
                )
            )
        )
    if not due and not earlier:
        return None
    done = RotatedKeys(account=account.public_key, name=account.name)
    for old in due:
        public, seed = new_keypair("account")
        session.add(
            AccountSigningKey(
                account_id=account.id,
                public_key=public,
                seed_sealed=sealer.seal(seed),
                role_set=old.role_set,
                template=old.template,
            )
        )
        old.superseded_at = when
        done.replaced[old.public_key] = public
        done.role_sets[old.public_key] = old.role_set
    for old in [*due, *earlier] if revoke_old else []:
        old.superseded_at = old.superseded_at or when
        old.retired_at = when
        done.retired.append(old.public_key)
    await session.flush()
    await resign_account(session, sealer, settings, account, force=True)
    record(
        session,
        actor,
        "account.signing_keys.rotate",
        target=account.public_key,
        details={
            "name": account.name,
            "replaced": done.replaced,
            "role_sets": done.role_sets,
            "retired": done.retired,
            "revoke_old": revoke_old,
            "jti": account.jti,
        },
        account=account.public_key,
    )
    return done


async def accounts_with_superseded_keys(session: AsyncSession) -> list[int]:
    """Ids of live accounts that still list a superseded key."""
    rows = await session.scalars(
        select(AccountSigningKey.account_id)
        .join(Account, Account.id == AccountSigningKey.account_id)
        .where(
            Account.deleted_at.is_(None),
            AccountSigningKey.superseded_at.is_not(None),
            AccountSigningKey.retired_at.is_(None),
        )
        .distinct()
        .order_by(AccountSigningKey.account_id)
    )
    return list(rows)


async def retire_drained_keys(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account: Account,
    *,
    actor: Actor,
    now: int,
) -> list[str]:
    """Retire the account's superseded keys no live user JWT was signed by (all expired or
    revoked), re-sign once if any; their public keys."""
    await lock_account(session, account)
    live = (
        select(IssuedUserKey.id)
        .where(
            IssuedUserKey.signing_key == AccountSigningKey.public_key,
            IssuedUserKey.revoked_at.is_(None),
            (IssuedUserKey.expires_at.is_(None)) | (IssuedUserKey.expires_at > now),
        )
        .exists()
    )
    drained = list(
        await session.scalars(
            select(AccountSigningKey).where(
                AccountSigningKey.account_id == account.id,
                AccountSigningKey.superseded_at.is_not(None),
                AccountSigningKey.retired_at.is_(None),
                ~live,
            )
        )
    )
    if not drained:
        return []
    when = utcnow()
    for key in drained:
        key.retired_at = when
    await session.flush()
    await resign_account(session, sealer, settings, account, force=True)
    retired = [key.public_key for key in drained]
    record(
        session,
        actor,
        "account.signing_keys.retire",
        target=account.public_key,
        details={"name": account.name, "retired": retired, "jti": account.jti},
        account=account.public_key,
    )
    return retired


async def account_by_id(session: AsyncSession, account_id: int) -> Account:
    account = await session.get(Account, account_id)
    if account is None or account.deleted_at is not None:
        raise NotFoundError(f"no account with id {account_id}")
    return account
