"""The revocation list's lifecycle: prune entries nothing can match, compact an oversized JWT.

nats-server refuses a user JWT when ``revocations[key] >= iat`` (or ``revocations["*"] >=
iat``), so an entry only matters while some JWT it matches is still unexpired. Only this
service signs the users of the accounts it manages, and every user JWT it signs is recorded
(``IssuedUserKey``, with ``iat`` and ``exp``), so that table is the full record:

- an entry whose every matching recorded JWT has expired is dropped;
- an entry matching no recorded JWT (a key revoked by hand, say) is kept until it is older
  than the longest credential lifetime (``MAX_CREDS_TTL``), after which nothing it could
  match can still be valid.

Every entry costs about 93 bytes of the encoded account JWT and nats-server refuses JWTs
over 1 MiB, so a re-sign that would exceed the size budget compacts: dead entries go first;
if that is not enough, the oldest entries are folded into one ``"*"`` entry at the newest
time among them (every JWT they revoked stays revoked) and the live, unrevoked JWTs the
``"*"`` cuts as collateral are named, without secrets, in an audit row and a WARNING log
so that operators re-issue them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import MAX_CREDS_TTL
from resolver.audit.service import SYSTEM, Actor, record
from resolver.db.models import Account, IssuedUserKey, Revocation

log = logging.getLogger(__name__)

#: Seconds an expired JWT is still treated as live: nats-servers' clocks may lag ours.
CLOCK_SKEW = 300
#: Compaction aims this far under the budget, so the next few revocations fit without it.
COMPACT_TARGET = 0.9
#: Audit rows name at most this many collateral credentials (the count is always complete).
AUDIT_REISSUE = 2_000
#: The WARNING log names at most this many.
LOG_REISSUE = 20
#: Base64 of the JSON ``"U...":1234567890,`` of one entry: what dropping it saves.
_B64 = 4 / 3

WILDCARD = "*"


def entry_bytes(public_key: str, revoked_at: int) -> int:
    """Encoded bytes one revocation entry adds to the account JWT (base64 of its JSON)."""
    return math.ceil((len(public_key) + len(str(revoked_at)) + 4) * _B64)


def _match(extra: list[Any]) -> Any:
    """A recorded JWT that the current ``Revocation`` row refuses (correlated)."""
    key = IssuedUserKey
    common = [
        key.account_id == Revocation.account_id,
        key.issued_at <= Revocation.revoked_at,
        *extra,
    ]
    return or_(
        and_(
            Revocation.public_key != WILDCARD,
            exists().where(*common, key.public_key == Revocation.public_key),
        ),
        and_(Revocation.public_key == WILDCARD, exists().where(*common)),
    )


def prunable(now: int) -> Any:
    """SQL condition on ``Revocation``: no JWT it matches can still be valid at ``now``."""
    live = or_(IssuedUserKey.expires_at.is_(None), IssuedUserKey.expires_at >= now - CLOCK_SKEW)
    return and_(
        ~_match([live]),
        or_(_match([]), Revocation.revoked_at < now - MAX_CREDS_TTL - CLOCK_SKEW),
    )


async def prune_account(session: AsyncSession, account_id: int, now: int) -> list[str]:
    """Delete the account's prunable entries (caller holds the account lock); their keys."""
    rows = list(
        await session.execute(
            select(Revocation.id, Revocation.public_key)
            .where(Revocation.account_id == account_id, prunable(now))
            .order_by(Revocation.public_key)
        )
    )
    ids = [row_id for row_id, _ in rows]
    for start in range(0, len(ids), 5_000):
        await session.execute(
            delete(Revocation)
            .where(Revocation.id.in_(ids[start : start + 5_000]))
            .execution_options(synchronize_session=False)
        )
    return [key for _, key in rows]


async def accounts_with_prunable(session: AsyncSession, now: int) -> list[int]:
    """Ids of live accounts managed here that hold at least one prunable entry."""
    rows = await session.scalars(
        select(Revocation.account_id)
        .join(Account, Account.id == Revocation.account_id)
        .where(Account.deleted_at.is_(None), Account.seed_sealed.is_not(None), prunable(now))
        .distinct()
        .order_by(Revocation.account_id)
    )
    return list(rows)


@dataclass
class Compaction:
    """What one compaction did, for the caller's log and tests."""

    pruned: int = 0
    folded: int = 0
    wildcard_at: int | None = None
    reissue: list[dict[str, Any]] = field(default_factory=list)


async def _redundant_under_wildcard(session: AsyncSession, account_id: int) -> list[int]:
    """Entries an existing ``"*"`` already covers (revoked at or before it): pure waste."""
    star = await session.scalar(
        select(Revocation.revoked_at).where(
            Revocation.account_id == account_id, Revocation.public_key == WILDCARD
        )
    )
    if star is None:
        return []
    return list(
        await session.scalars(
            select(Revocation.id).where(
                Revocation.account_id == account_id,
                Revocation.public_key != WILDCARD,
                Revocation.revoked_at <= star,
            )
        )
    )


async def _delete_ids(session: AsyncSession, ids: list[int]) -> None:
    for start in range(0, len(ids), 5_000):
        await session.execute(
            delete(Revocation)
            .where(Revocation.id.in_(ids[start : start + 5_000]))
            .execution_options(synchronize_session=False)
        )


async def compact(
    session: AsyncSession,
    account: Account,
    *,
    size: int,
    budget: int,
    now: int,
    actor: Actor = SYSTEM,
) -> Compaction:
    """Shrink ``account``'s revocations so its JWT (``size`` bytes now) fits ``budget``.

    The caller holds the account lock and re-signs afterwards. First what costs nothing
    (entries that can match no live JWT, entries an existing ``"*"`` covers), then the
    fewest oldest entries folded into ``"*"`` at T, the newest time among them: a JWT
    they refused has ``iat`` <= its entry's time <= T, so ``"*"`` still refuses it. Live
    JWTs issued at or before T that nothing had revoked are cut too: they are marked
    revoked and listed (audit row + WARNING log) for re-issue.
    """
    done = Compaction()
    excess = size - int(budget * COMPACT_TARGET)
    pruned = await prune_account(session, account.id, now)
    redundant = await _redundant_under_wildcard(session, account.id)
    await _delete_ids(session, redundant)
    done.pruned = len(pruned) + len(redundant)
    # Rough for the redundant ones (their times are not loaded); the caller re-measures.
    excess -= sum(entry_bytes(key, now) for key in pruned) + len(redundant) * entry_bytes(
        "U" * 56, now
    )
    if excess > 0:
        await _fold(session, account, excess, now, done)
    if done.pruned or done.folded:
        _report(session, account, size=size, budget=budget, actor=actor, done=done)
    return done


async def _fold(
    session: AsyncSession, account: Account, excess: int, now: int, done: Compaction
) -> None:
    rows = list(
        await session.execute(
            select(Revocation.id, Revocation.public_key, Revocation.revoked_at)
            .where(Revocation.account_id == account.id, Revocation.public_key != WILDCARD)
            .order_by(Revocation.revoked_at, Revocation.public_key)
        )
    )
    star = await session.scalar(
        select(Revocation).where(
            Revocation.account_id == account.id, Revocation.public_key == WILDCARD
        )
    )
    if not rows:
        return
    # The "*" entry costs bytes of its own unless there is one already.
    needed = excess + (0 if star is not None else entry_bytes(WILDCARD, now))
    saved = 0
    cut = 0
    for index, (_, key, at) in enumerate(rows):
        saved += entry_bytes(key, at)
        cut = index + 1
        if saved >= needed:
            break
    wildcard_at = rows[cut - 1][2]
    # Entries revoked at the same second as T are covered too: fold them as well.
    while cut < len(rows) and rows[cut][2] <= wildcard_at:
        cut += 1
    if star is not None:
        wildcard_at = max(wildcard_at, star.revoked_at)
    # Collateral: live JWTs the "*" refuses that nothing had revoked. Read before marking.
    live = or_(IssuedUserKey.expires_at.is_(None), IssuedUserKey.expires_at >= now)
    collateral = await session.execute(
        select(
            IssuedUserKey.public_key,
            IssuedUserKey.user_id,
            IssuedUserKey.name,
            IssuedUserKey.issued_at,
            IssuedUserKey.expires_at,
        )
        .where(
            IssuedUserKey.account_id == account.id,
            IssuedUserKey.revoked_at.is_(None),
            IssuedUserKey.issued_at <= wildcard_at,
            live,
        )
        .order_by(IssuedUserKey.issued_at, IssuedUserKey.public_key)
    )
    done.reissue = [
        {"user_key": key, "user": user, "name": name, "issued_at": iat, "expires_at": exp}
        for key, user, name, iat, exp in collateral
    ]
    await session.execute(
        update(IssuedUserKey)
        .where(
            IssuedUserKey.account_id == account.id,
            IssuedUserKey.revoked_at.is_(None),
            IssuedUserKey.issued_at <= wildcard_at,
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    await _delete_ids(session, [row_id for row_id, _, _ in rows[:cut]])
    if star is None:
        session.add(
            Revocation(
                account_id=account.id,
                public_key=WILDCARD,
                revoked_at=wildcard_at,
                reason="compacted: size budget",
            )
        )
    else:
        star.revoked_at = wildcard_at
        star.reason = "compacted: size budget"
    await session.flush()
    done.folded = cut
    done.wildcard_at = wildcard_at


def _report(
    session: AsyncSession,
    account: Account,
    *,
    size: int,
    budget: int,
    actor: Actor,
    done: Compaction,
) -> None:
    record(
        session,
        actor,
        "account.revocations.compact",
        target=account.public_key,
        details={
            "account": account.name,
            "size_before": size,
            "budget": budget,
            "pruned": done.pruned,
            "folded": done.folded,
            "wildcard_at": done.wildcard_at,
            "reissue_count": len(done.reissue),
            "reissue": done.reissue[:AUDIT_REISSUE],
        },
        account=account.public_key,
    )
    if done.folded:
        shown = ", ".join(
            f"{item['name']} ({item['user_key']})" for item in done.reissue[:LOG_REISSUE]
        )
        more = len(done.reissue) - LOG_REISSUE
        log.warning(
            "account %s: JWT of %d bytes over its %d-byte budget; folded %d revocation(s) into "
            '"*" at %s, which also cuts %d live credential(s) issued before then: re-issue '
            "them (audit action account.revocations.compact lists all)%s%s",
            account.name,
            size,
            budget,
            done.folded,
            done.wildcard_at,
            len(done.reissue),
            f": {shown}" if shown else "",
            f" and {more} more" if more > 0 else "",
        )
    else:
        log.info(
            "account %s: JWT of %d bytes over its %d-byte budget; dropped %d dead revocation(s)",
            account.name,
            size,
            budget,
            done.pruned,
        )


#: Rounds of compact + re-sign before giving up (the estimate is close; one is the rule).
MAX_ROUNDS = 4


async def fit_budget(
    session: AsyncSession,
    account: Account,
    token: str,
    resign: Callable[[], Awaitable[str]],
    *,
    budget: int,
    now: int,
) -> str:
    """``token`` if it fits ``budget``, else the token ``resign()`` makes after compacting.

    Called by ``accounts.service.resign_account`` under the account lock. When nothing is
    left to fold (the JWT is big for other reasons), the oversized token is returned and
    an error logged: refusing to sign would block the very revocation being written.
    """
    for _ in range(MAX_ROUNDS):
        if len(token.encode()) <= budget:
            return token
        done = await compact(session, account, size=len(token.encode()), budget=budget, now=now)
        if not done.pruned and not done.folded:
            break
        token = await resign()
    if len(token.encode()) > budget:
        log.error(
            "account %s: JWT of %d bytes stays over its %d-byte budget after compaction",
            account.name,
            len(token.encode()),
            budget,
        )
    return token


async def revocation_summary(
    session: AsyncSession, account: Account, *, budget: int
) -> dict[str, Any]:
    """Size facts for the admin API: encoded JWT bytes, entry count, budget, ``"*"`` time."""
    count = await session.scalar(
        select(func.count()).select_from(Revocation).where(Revocation.account_id == account.id)
    )
    star = await session.scalar(
        select(Revocation.revoked_at).where(
            Revocation.account_id == account.id, Revocation.public_key == WILDCARD
        )
    )
    return {
        "jwt_bytes": len((account.jwt or "").encode()),
        "budget_bytes": budget,
        "revocations": int(count or 0),
        "wildcard_at": star,
    }
