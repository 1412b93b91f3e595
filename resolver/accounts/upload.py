"""``nsc push``: storing an account JWT signed elsewhere, with the checks that make it safe.

Every account JWT is public (anyone may GET it), so a replayed older JWT would silently
undo revocations: an upload must be strictly newer (``iat``) than what is stored. The JWT's
signature is the credential for accounts managed elsewhere; an account whose keys this
service holds is changed through its own API, so uploading one needs an admin token (the
caller checks ``AccountUpload.needs_admin`` before ``apply_upload``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.changes import note_jwt_changed
from resolver.accounts.operator import get_operator, operator_signing_keys
from resolver.accounts.service import is_managed_here, lock_account
from resolver.accounts.signing import store_account_jwt
from resolver.audit.service import Actor, record
from resolver.db.models import Account, Operator
from resolver.errors import ConflictError, ValidationError
from resolver.natsjwt import DecodedJWT, JWTError, decode
from resolver.push.outbox import enqueue_push

MAX_NAME = 200


@dataclass(frozen=True)
class AccountUpload:
    """A checked upload: a valid account JWT from a trusted issuer for the path's key."""

    decoded: DecodedJWT
    operator: Operator
    existing: Account | None

    @property
    def needs_admin(self) -> bool:
        return self.existing is not None and is_managed_here(self.existing)


async def prepare_upload(
    session: AsyncSession, body: bytes, account_key: str, *, now: int | None = None
) -> AccountUpload:
    """Decode and check an uploaded JWT; ``ValidationError`` says what is wrong with it."""
    try:
        decoded = decode(body, expected_type="account")
    except JWTError as exc:
        raise ValidationError(f"bad JWT in request: {exc}") from None
    if decoded.subject != account_key:
        raise ValidationError("JWT subject does not match the account key in the path")
    operator = await get_operator(session)
    trusted = {operator.public_key, *await operator_signing_keys(session, operator)}
    if decoded.issuer not in trusted:
        raise ValidationError("JWT issuer is not the operator or one of its signing keys")
    if decoded.is_expired(now):
        raise ValidationError("JWT has expired")
    existing = await session.scalar(select(Account).where(Account.public_key == account_key))
    if existing is not None:
        # Locked until commit, so two uploads cannot both pass the iat check against the
        # same stored JWT.
        await lock_account(session, existing)
    return AccountUpload(decoded=decoded, operator=operator, existing=existing)


async def apply_upload(session: AsyncSession, upload: AccountUpload, *, actor: Actor) -> Account:
    """Store the uploaded JWT and queue its push; ``ConflictError`` unless it is newer."""
    decoded, account = upload.decoded, upload.existing
    if account is not None:
        if account.deleted_at is not None:
            raise ConflictError("this account was deleted; it cannot be uploaded again")
        if decoded.iat <= (account.issued_at or 0):
            raise ConflictError(
                f"JWT is not newer than the stored one (iat {decoded.iat} <= "
                f"{account.issued_at}); replaying an older JWT could undo revocations"
            )
    else:
        account = Account(
            operator_id=upload.operator.id,
            name=await _free_name(session, decoded),
            public_key=decoded.subject,
            seed_sealed=None,
            is_system=False,
            spec={},
        )
        session.add(account)
    store_account_jwt(account, decoded.token)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError("the account was uploaded concurrently; retry") from None
    enqueue_push(session, account.public_key, decoded.token, decoded.jti)
    await note_jwt_changed(session, account.public_key)
    record(
        session,
        actor,
        "account.upload",
        target=account.public_key,
        details={
            "jti": decoded.jti,
            "iat": decoded.iat,
            "issuer": decoded.issuer,
            "managed_here": is_managed_here(account),
        },
        account=account.public_key,
    )
    return account


async def _free_name(session: AsyncSession, decoded: DecodedJWT) -> str:
    # Names are unique; a name already used by another account falls back to the key,
    # which is unique by construction.
    name = (decoded.name or "").strip()[:MAX_NAME] or decoded.subject
    taken = await session.scalar(select(Account.id).where(Account.name == name))
    return decoded.subject if taken is not None else name
