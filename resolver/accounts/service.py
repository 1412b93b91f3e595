"""Accounts: create, re-sign, issue workload creds, revoke. The caller owns the transaction.

Every function here runs inside the caller's session and never commits. A function that
stores a new account JWT also writes its push outbox row and notes the change for the JWT
caches (``changes.note_jwt_changed``), so after the caller's commit the new JWT is served,
announced to other replicas and pushed, in that order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from resolver.accounts.changes import note_jwt_changed
from resolver.accounts.operator import get_operator
from resolver.accounts.signing import (
    active_signing_key,
    add_plain_signing_key,
    build_account_claims,
    new_account,
    next_iat,
    plain_signing_key,
    store_account_jwt,
)
from resolver.accounts.specs import validate_spec
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import Account, IssuedUserKey, Operator, Revocation, utcnow
from resolver.db.statements import Statements
from resolver.errors import ConflictError, NotFoundError, ValidationError
from resolver.natsjwt import (
    JWTError,
    decode,
    encode,
    encode_with_payload,
    format_creds,
    is_public_key,
    new_keypair,
    prepare_claims,
    user_claims,
)
from resolver.push.outbox import enqueue_push
from resolver.sealing import Sealer

#: Claims that change on every signature; equal claims apart from these mean "no change".
VOLATILE_CLAIMS = frozenset({"iat", "jti", "exp"})
#: Account names: what admins type on the command line. Never shaped like a public key.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,199}$")
_WORKLOAD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:/-]{0,255}$")
MIN_CREDS_TTL = 60
MAX_CREDS_TTL = 366 * 86_400
ONE_HOUR = 3_600


def resign_window(ttl_seconds: int) -> int:
    """How long before ``exp`` an account JWT is renewed: max(1 h, ttl/4), at most ttl/2.

    The cap keeps a just-signed JWT outside the window when the TTL is short, so a re-sign
    of unchanged claims stays a no-op instead of producing a new JWT on every call.
    """
    return min(max(ONE_HOUR, ttl_seconds // 4), ttl_seconds // 2)


def is_due_for_resign(account: Account, *, ttl_seconds: int, now: int) -> bool:
    """Whether ``account``'s JWT is missing or expires within the re-sign window."""
    if account.jwt is None or account.expires_at is None:
        return True
    return account.expires_at - now <= resign_window(ttl_seconds)


def is_managed_here(account: Account) -> bool:
    """Whether this service holds the account's keys (else it was uploaded by ``nsc push``)."""
    return account.seed_sealed is not None


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else int(now)


# One statement (RETURNING works on SQLite 3.35+ and PostgreSQL), built once: credentials
# are issued under this lock, so it is on the hot path.
_LOCK_ACCOUNT = (
    update(Account)
    .where(Account.id == bindparam("account_id"))
    # Setting updated_at to itself also keeps its onupdate from firing.
    .values(updated_at=Account.updated_at)
    .returning(Account.jwt, Account.jti, Account.issued_at, Account.expires_at)
    .execution_options(synchronize_session=False)
)


async def lock_account(session: AsyncSession, account: Account) -> None:
    """Hold ``account``'s row until commit and reload its stored JWT fields.

    Two transactions re-signing one account at once (two revocations, say) would otherwise
    both build claims from what each saw before the other committed: the later commit
    would drop the earlier one's revocation from the served JWT, and both would get the
    same iat and jti. A no-op UPDATE takes the row lock on PostgreSQL and the write lock
    on SQLite (where reads before a transaction's first write see no lock at all); what
    is read after it, revocations included, is current.
    """
    row = (await session.execute(_LOCK_ACCOUNT, {"account_id": account.id})).one()
    for name in ("jwt", "jti", "issued_at", "expires_at"):
        # Not a change of ours: refresh the loaded values without marking the row dirty.
        set_committed_value(account, name, getattr(row, name))


_LOCK_AND_LOAD = (
    update(Account)
    .where(Account.id == bindparam("account_id"), Account.deleted_at.is_(None))
    .values(updated_at=Account.updated_at)
    .returning(Account)
    .execution_options(synchronize_session=False)
)


async def lock_account_id(session: AsyncSession, account_id: int) -> Account:
    """``lock_account`` for an account known by id, loading it in the same statement.

    ``NotFoundError`` when it is gone (deleted meanwhile). For the hot path of issuing
    credentials, where every statement under the lock counts.
    """
    account = await session.scalar(
        _LOCK_AND_LOAD,
        {"account_id": account_id},
        execution_options={"populate_existing": True},
    )
    if account is None:
        raise NotFoundError(f"no account with id {account_id}")
    return account


async def get_account(session: AsyncSession, ref: str) -> Account:
    """The live account named ``ref`` or with public key ``ref``; ``NotFoundError`` if none."""
    column = Account.public_key if is_public_key(ref, "account") else Account.name
    account = await session.scalar(
        select(Account).where(column == ref, Account.deleted_at.is_(None))
    )
    if account is None:
        raise NotFoundError(f"no account {ref!r}")
    return account


async def list_accounts(session: AsyncSession) -> list[Account]:
    """Every live account, by name."""
    rows = await session.scalars(
        select(Account).where(Account.deleted_at.is_(None)).order_by(Account.name)
    )
    return list(rows)


async def create_account(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    *,
    name: str,
    spec: dict[str, Any] | None = None,
    actor: Actor,
    now: int | None = None,
) -> Account:
    """A new account: its key (sealed), a plain signing key, a signed JWT and a push.

    ``spec`` holds ``limits`` (account limit names; every limit left out is unlimited, -1),
    ``tags``, ``exports``, ``imports`` and ``description``. Raises ``ValidationError`` for
    a bad name or spec and ``ConflictError`` when the name is taken.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValidationError(
            "account name must be 1-200 characters: letters, digits, spaces or ._@-, "
            "starting with a letter or digit"
        )
    if is_public_key(name, "account"):
        raise ValidationError("an account name cannot look like an account public key")
    clean_spec = validate_spec(spec)
    if await session.scalar(select(Account.id).where(Account.name == name)) is not None:
        raise ConflictError(f"an account named {name!r} already exists")
    operator = await get_operator(session)
    account = new_account(sealer, operator.id, name, spec=clean_spec)
    public_key = account.public_key
    session.add(account)
    try:
        await session.flush()
    except IntegrityError:
        # Lost a race with a create of the same name (the check above passed for both).
        raise ConflictError(f"an account named {name!r} already exists") from None
    signing_key = await add_plain_signing_key(session, sealer, account)
    await resign_account(session, sealer, settings, account, force=True, now=now)
    record(
        session,
        actor,
        "account.create",
        target=public_key,
        details={"name": name, "spec": clean_spec, "signing_key": signing_key.public_key},
        account=public_key,
    )
    return account


async def resign_account(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account: Account,
    *,
    force: bool = False,
    now: int | None = None,
) -> bool:
    """Re-sign ``account`` from what is stored; True when a new JWT was stored and queued.

    A no-op (False) when the claims equal the stored JWT's apart from iat/jti/exp, unless
    ``force`` or the stored JWT is within the re-sign window of its ``exp``. Accounts
    managed elsewhere (uploaded with ``nsc push``) are never re-signed here: their claims
    are not ours to rebuild.
    """
    if not is_managed_here(account):
        return False
    await lock_account(session, account)
    when = _now(now)
    ttl = settings.accounts.jwt_ttl_seconds
    operator = await session.get_one(Operator, account.operator_id)
    signer = await active_signing_key(session, operator)
    try:
        claims = await build_account_claims(session, account, ttl_seconds=ttl, now=when)
    except JWTError as exc:
        raise ValidationError(f"account {account.name!r} cannot be signed: {exc}") from None
    due = force or is_due_for_resign(account, ttl_seconds=ttl, now=when)
    if not due and _same_claims(account.jwt, claims, issuer=signer.public_key, iat=when):
        return False
    seed = sealer.open(signer.seed_sealed)
    token = encode(claims, seed, iat=next_iat(account, when))
    budget = settings.accounts.jwt_size_budget_bytes
    if len(token) > budget:
        # Too big for nats-server: drop dead revocations, fold the oldest into "*" and sign
        # again (local import: the policy layer builds on this module, not the reverse).
        from resolver.policy.revocations import fit_budget

        async def again() -> str:
            fresh = await build_account_claims(session, account, ttl_seconds=ttl, now=when)
            return encode(fresh, seed, iat=next_iat(account, when))

        token = await fit_budget(session, account, token, again, budget=budget, now=when)
    await _store_and_push(session, account, token)
    return True


def _same_claims(stored: str | None, claims: dict[str, Any], *, issuer: str, iat: int) -> bool:
    if stored is None:
        return False
    try:
        old = decode(stored, expected_type="account").claims
    except JWTError:
        return False  # an unreadable stored JWT is replaced, never kept
    new = prepare_claims(claims, issuer=issuer, iat=iat)
    return _stable(old) == _stable(new)


def _stable(claims: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in claims.items() if key not in VOLATILE_CLAIMS}


async def _store_and_push(session: AsyncSession, account: Account, token: str) -> None:
    store_account_jwt(account, token)
    enqueue_push(session, account.public_key, account.jwt or token, account.jti or "")
    await note_jwt_changed(session, account.public_key)


async def issue_workload_creds(
    session: AsyncSession,
    sealer: Sealer,
    account: Account,
    *,
    name: str,
    ttl_seconds: int,
    actor: Actor,
    now: int | None = None,
) -> tuple[str, IssuedUserKey]:
    """Creds (JWT + a new user seed) for a workload of ``account``, valid ``ttl_seconds``.

    The user is signed by the account's plain signing key with ``issuer_account`` set (the
    operator's strict signing key usage requires it) and always carries ``iat`` (a user
    without one counts as revoked). The key and its expiry are recorded so it can be
    revoked. The returned text holds a seed: write it to a private file, never log it.
    """
    if not is_managed_here(account):
        raise ConflictError(
            f"account {account.name!r} is managed elsewhere (nsc): issue its users there"
        )
    if not isinstance(name, str) or not _WORKLOAD_RE.match(name):
        raise ValidationError(
            "workload name must be 1-256 characters: letters, digits, spaces or ._@:/-"
        )
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise ValidationError("ttl must be a whole number of seconds")
    if not MIN_CREDS_TTL <= ttl_seconds <= MAX_CREDS_TTL:
        raise ValidationError(
            f"ttl must be between {MIN_CREDS_TTL} seconds and {MAX_CREDS_TTL // 86_400} days"
        )
    when = _now(now)
    signer = await plain_signing_key(session, account)
    user_public, user_seed = new_keypair("user")
    claims = user_claims(
        name, user_public, issuer_account=account.public_key, exp=when + ttl_seconds
    )
    token, payload = encode_with_payload(claims, sealer.open(signer.seed_sealed), iat=when)
    issued = record_issued_key(
        session, account, payload, name=name, signing_key=signer.public_key, user_id=None
    )
    record(
        session,
        actor,
        "account.user.issue",
        target=account.public_key,
        details={"user_key": user_public, "name": name, "expires_at": issued.expires_at},
        user=name,
        account=account.public_key,
    )
    return format_creds(token, user_seed), issued


def issued_key_row(
    account_id: int,
    payload: Mapping[str, Any],
    *,
    name: str,
    signing_key: str,
    user_id: str | None,
) -> dict[str, Any]:
    """The ``issued_user_keys`` row of a user JWT handed out (``payload``: its claims, from
    ``encode_with_payload``): what a later revocation must cover, and until when."""
    return {
        "public_key": payload["sub"],
        "account_id": account_id,
        "user_id": user_id,
        "name": name,
        "signing_key": signing_key,
        "jti": payload["jti"],
        "issued_at": payload["iat"],
        "expires_at": payload.get("exp"),
    }


def record_issued_key(
    session: AsyncSession,
    account: Account,
    payload: Mapping[str, Any],
    *,
    name: str,
    signing_key: str,
    user_id: str | None,
) -> IssuedUserKey:
    """Record a user JWT handed out (see ``issued_key_row``).

    Added, not flushed: it goes in with the transaction's other writes (one flush, at
    the commit or before the next query); flush first if you need its ``id``.
    """
    row = issued_key_row(account.id, payload, name=name, signing_key=signing_key, user_id=user_id)
    issued = IssuedUserKey(**row)
    session.add(issued)
    return issued


# Built once: the credentials hot path records its batches with these.
_INSERT_ISSUED = insert(IssuedUserKey)
# Ids in the order of the rows. On SQLite this is a statement per row (no sentinel column
# tells the rows of one multi-row INSERT apart), so only callers that need ids use it.
_INSERT_ISSUED_IDS = insert(IssuedUserKey).returning(IssuedUserKey.id, sort_by_parameter_order=True)


async def record_issued_keys(
    db: Statements, rows: list[dict[str, Any]], *, ids: bool = False
) -> list[int]:
    """Insert ``issued_key_row``s now, in one statement (an executemany, not the session's
    ORM bulk insert, which costs more than the statement); with ``ids``, their ids, in
    order (else [])."""
    if not rows:
        return []
    if ids:
        return await db.inserted_ids(_INSERT_ISSUED_IDS, rows)
    await db.execute_many(_INSERT_ISSUED, rows)
    return []


async def revoke_user_key(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account: Account,
    user_key: str,
    *,
    actor: Actor,
    at: int | None = None,
    reason: str | None = None,
) -> int:
    """Revoke ``user_key`` (or ``*``: every user) in ``account``: re-sign and queue a push.

    nats-server refuses a user JWT when ``revocations[key] >= user.iat``, so the entry is
    the current unix second (or ``at``): every JWT of that key issued up to now is dead.
    An existing entry is never moved back in time, which would revive JWTs it covered.
    Returns the entry's time.
    """
    if not is_managed_here(account):
        raise ConflictError(
            f"account {account.name!r} is managed elsewhere (nsc): revoke its users there"
        )
    if user_key != "*" and not is_public_key(user_key, "user"):
        raise ValidationError("user_key must be a user public key (U...) or '*'")
    when = _now(at)
    # Locked first: a concurrent revocation of the same key then finds this one's row
    # instead of inserting a duplicate.
    await lock_account(session, account)
    row = await session.scalar(
        select(Revocation).where(
            Revocation.account_id == account.id, Revocation.public_key == user_key
        )
    )
    if row is None:
        row = Revocation(account_id=account.id, public_key=user_key, revoked_at=when, reason=reason)
        session.add(row)
    else:
        row.revoked_at = max(row.revoked_at, when)
        row.reason = reason or row.reason
    marked = IssuedUserKey.account_id == account.id
    if user_key != "*":
        marked = marked & (IssuedUserKey.public_key == user_key)
    else:
        marked = marked & (IssuedUserKey.issued_at <= when)
    holders: set[str] = set()  # who held the key: the audit row names them
    for issued in await session.scalars(
        select(IssuedUserKey).where(marked, IssuedUserKey.revoked_at.is_(None))
    ):
        issued.revoked_at = when
        holders.add(issued.name)
    await session.flush()
    await resign_account(session, sealer, settings, account, force=True)
    record(
        session,
        actor,
        "account.revoke",
        target=account.public_key,
        details={
            "user_key": user_key,
            "revoked_at": row.revoked_at,
            "reason": reason,
            "jti": account.jti,
        },
        user=holders.pop() if user_key != "*" and len(holders) == 1 else None,
        account=account.public_key,
    )
    return row.revoked_at


async def update_account(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account: Account,
    changes: dict[str, Any],
    *,
    actor: Actor,
) -> bool:
    """Merge ``changes`` into the account's spec (a null removes a field) and re-sign.

    Returns whether a new JWT was stored (False: the claims came out the same).
    """
    if not is_managed_here(account):
        raise ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    if not isinstance(changes, dict):
        raise ValidationError("spec must be a JSON object")
    merged = dict(account.spec or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    clean = validate_spec(merged)
    if clean == (account.spec or {}):
        return False
    before = account.spec or {}
    account.spec = clean
    await session.flush()
    changed = await resign_account(session, sealer, settings, account)
    record(
        session,
        actor,
        "account.update",
        target=account.public_key,
        details={"name": account.name, "before": before, "after": clean, "jti": account.jti},
        account=account.public_key,
    )
    return changed


async def store_account_spec(
    session: AsyncSession, account: Account, spec: dict[str, Any], *, actor: Actor
) -> bool:
    """Replace the account's whole spec and audit it, without re-signing; False if the same.

    For ``policy apply``, which holds the whole spec in the file and re-signs each account
    once after all its changes (the caller must re-sign when this returns True).
    """
    if not is_managed_here(account):
        raise ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    clean = validate_spec(spec)
    before = account.spec or {}
    if clean == before:
        return False
    account.spec = clean
    await session.flush()
    record(
        session,
        actor,
        "account.update",
        target=account.public_key,
        details={"name": account.name, "before": before, "after": clean},
        account=account.public_key,
    )
    return True


async def delete_account(
    session: AsyncSession, sealer: Sealer, settings: Settings, account: Account, *, actor: Actor
) -> None:
    """Lock ``account`` out and stop serving it.

    The last JWT pushed allows zero connections, so every server drops its users at once;
    a server that never loaded it gets a 404 from then on. Its bindings go; the row stays
    (audit, issued keys) under a freed name, so the name can be used again.
    """
    from resolver.db.models import Binding  # local: bindings belong to the policy feature

    if account.is_system:
        raise ConflictError("the system account cannot be deleted")
    if not is_managed_here(account):
        raise ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    name = account.name
    spec = dict(account.spec or {})
    spec["limits"] = {**spec.get("limits", {}), "conn": 0, "leaf": 0}
    account.spec = spec
    await session.flush()
    await resign_account(session, sealer, settings, account, force=True)
    # Nobody can connect any more, so the members of its groups need no revocation.
    bindings = list(await session.scalars(select(Binding).where(Binding.account_id == account.id)))
    for binding in bindings:
        await session.delete(binding)
    account.deleted_at = utcnow()
    # The suffix (never a valid account name: "~") frees the name; the name part is cut,
    # never the suffix, so a 200-character name is freed too.
    suffix = f"~deleted~{account.id}"
    account.name = name[: 200 - len(suffix)] + suffix
    await session.flush()
    record(
        session,
        actor,
        "account.delete",
        target=account.public_key,
        details={"name": name, "jti": account.jti, "bindings": [b.id for b in bindings]},
        account=account.public_key,
    )
