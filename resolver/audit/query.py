"""Reading the audit log: filters, keyset pages, and the JSON shape of a row.

Shared by ``GET /admin/v1/audit`` and ``nats-iam-resolver audit export``. No aiohttp here,
and nothing is written. Pages are keyset pages on ``id`` (``before``/``after`` a row id),
never ``OFFSET``: page 10,000 costs what page 1 costs, and rows written while someone pages
cannot shift or repeat what they see.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.db.models import Account, AuditEntry
from resolver.errors import ValidationError
from resolver.natsjwt import is_public_key

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Query parameters ``GET /admin/v1/audit`` takes (anything else is a 400: a typo such as
#: ``?acount=`` must not silently return everything).
FILTER_FIELDS = ("since", "until", "actor", "user", "account", "action", "target")
PAGE_FIELDS = ("limit", "before")
#: Longest value a text filter may have (the columns hold at most 256 characters).
MAX_FILTER_LENGTH = 256
_ACTION_RE = re.compile(r"^[A-Za-z0-9_.-]+(\.\*|\*)?$")


@dataclass(frozen=True)
class AuditFilter:
    """Which rows: every field given must match (``None`` matches anything).

    ``since`` is inclusive, ``until`` exclusive. ``account`` is a public key or a name;
    ``action`` is exact, or a prefix when it ends in ``*`` (``scim.user.*``).
    """

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    user: str | None = None
    account: str | None = None
    action: str | None = None
    target: str | None = None

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters (for the ``next`` link)."""
        params: dict[str, str] = {}
        for name in FILTER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                params[name] = value.isoformat() if isinstance(value, datetime) else value
        return params


def parse_time(value: str, name: str) -> datetime:
    """An RFC 3339 time (``2026-11-26T10:00:00Z``, an offset, fractions), or a bare date
    (midnight UTC); a time without a zone is refused rather than guessed."""
    text = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"{name}: {value[:40]!r} is not a valid date") from None
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{name}: expected an RFC 3339 time like 2026-11-26T10:00:00Z, got {value[:40]!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValidationError(f"{name}: give a time zone (e.g. a trailing Z for UTC)")
    return moment.astimezone(UTC)


def _text(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValidationError(f"{name}: must not be empty")
    if len(value) > MAX_FILTER_LENGTH:
        raise ValidationError(f"{name}: at most {MAX_FILTER_LENGTH} characters")
    return value


def build_filter(
    *,
    since: str | None = None,
    until: str | None = None,
    actor: str | None = None,
    user: str | None = None,
    account: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> AuditFilter:
    """An ``AuditFilter`` from text (query parameters, command-line options), checked."""
    start = parse_time(since, "since") if since is not None else None
    end = parse_time(until, "until") if until is not None else None
    if start is not None and end is not None and end <= start:
        raise ValidationError("until must be later than since")
    wanted = _text(action, "action")
    if wanted is not None and not _ACTION_RE.match(wanted):
        raise ValidationError(
            f"action: expected a name like scim.user.create, or a prefix like scim.user.*; "
            f"got {wanted[:40]!r}"
        )
    return AuditFilter(
        since=start,
        until=end,
        actor=_text(actor, "actor"),
        user=_text(user, "user"),
        account=_text(account, "account"),
        action=wanted,
        target=_text(target, "target"),
    )


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ValidationError(f"limit: expected a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def parse_cursor(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise ValidationError(f"{name}: expected a row id (the 'next' cursor of a page)")
    return int(value)


def filter_from_params(params: Mapping[str, str]) -> tuple[AuditFilter, int, int | None]:
    """(filter, limit, before) from query parameters; unknown or repeated ones are a 400."""
    allowed = FILTER_FIELDS + PAGE_FIELDS
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValidationError(
            f"unknown query parameter(s) {unknown}; allowed: {', '.join(allowed)}"
        )
    getall = getattr(params, "getall", None)
    if getall is not None:
        repeated = sorted(k for k in set(params) if len(getall(k)) > 1)
        if repeated:
            raise ValidationError(f"query parameter(s) given more than once: {repeated}")
    found = build_filter(**{k: params[k] for k in FILTER_FIELDS if k in params})
    return found, parse_limit(params.get("limit")), parse_cursor(params.get("before"), "before")


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def account_keys(session: AsyncSession, ref: str) -> list[str]:
    """The public keys ``ref`` stands for: itself if it is an account key; else every
    account that has (or had, before it was deleted) that name. An unknown name is a 400,
    so a typo cannot pass for "nothing happened"."""
    if is_public_key(ref, "account"):
        return [ref]
    # A deleted account keeps its row under ``<name>~deleted~<id>`` (accounts.service).
    keys = list(
        await session.scalars(
            select(Account.public_key).where(
                or_(
                    Account.name == ref,
                    Account.name.like(_like_prefix(f"{ref}~deleted~"), escape="\\"),
                )
            )
        )
    )
    if not keys:
        raise ValidationError(
            f"account: no account is named {ref!r} (give its public key if it is gone)"
        )
    return keys


async def _where(session: AsyncSession, query: Select[Any], found: AuditFilter) -> Select[Any]:
    if found.since is not None:
        query = query.where(AuditEntry.at >= found.since)
    if found.until is not None:
        query = query.where(AuditEntry.at < found.until)
    if found.actor is not None:
        query = query.where(AuditEntry.actor == found.actor)
    if found.user is not None:
        query = query.where(AuditEntry.user_name == found.user)
    if found.target is not None:
        query = query.where(AuditEntry.target == found.target)
    if found.account is not None:
        keys = await account_keys(session, found.account)
        query = query.where(AuditEntry.account_key.in_(keys))
    if found.action is not None:
        if found.action.endswith("*"):
            prefix = found.action[:-1]
            query = query.where(AuditEntry.action.like(_like_prefix(prefix), escape="\\"))
        else:
            query = query.where(AuditEntry.action == found.action)
    return query


async def find_page(
    session: AsyncSession,
    found: AuditFilter,
    *,
    limit: int = DEFAULT_LIMIT,
    before: int | None = None,
    after: int | None = None,
) -> list[AuditEntry]:
    """Up to ``limit`` matching rows: newest first below ``before`` (or from the newest),
    or, with ``after``, oldest first above it."""
    query = await _where(session, select(AuditEntry), found)
    if after is not None:
        query = query.where(AuditEntry.id > after).order_by(AuditEntry.id)
    else:
        if before is not None:
            query = query.where(AuditEntry.id < before)
        query = query.order_by(AuditEntry.id.desc())
    return list(await session.scalars(query.limit(limit)))


async def count(session: AsyncSession, found: AuditFilter, *, after: int | None = None) -> int:
    """How many rows match (above id ``after``), for an export's progress line."""
    query = await _where(session, select(func.count()).select_from(AuditEntry), found)
    if after is not None:
        query = query.where(AuditEntry.id > after)
    return int(await session.scalar(query) or 0)


async def iter_entries(
    sessions: async_sessionmaker[AsyncSession],
    found: AuditFilter,
    *,
    page_size: int = MAX_LIMIT,
    after: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every matching row as ``entry_json``, oldest first, one page in memory at a time.

    Each page is read in a session of its own, so a long export holds no read transaction
    open (on SQLite that would stop WAL checkpoints). Rows written meanwhile come last;
    rows the retention job deletes meanwhile may be missed, never repeated.
    """
    cursor = after
    if found.account is not None:
        # Resolved once: an account deleted or renamed mid-export must not change the set.
        async with sessions() as session:
            keys = await account_keys(session, found.account)
        found = replace(found, account=None)
    else:
        keys = None
    while True:
        async with sessions() as session:
            query = await _where(session, select(AuditEntry), found)
            if keys is not None:
                query = query.where(AuditEntry.account_key.in_(keys))
            if cursor is not None:
                query = query.where(AuditEntry.id > cursor)
            rows = list(await session.scalars(query.order_by(AuditEntry.id).limit(page_size)))
            page = [entry_json(row) for row in rows]
        for item in page:
            yield item
        if len(rows) < page_size:
            return
        cursor = rows[-1].id


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """A row as JSON, with the same keys in the same order every time (SIEM parsers)."""
    return {
        "id": entry.id,
        "at": entry.at.isoformat(timespec="microseconds") if entry.at else None,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "user": entry.user_name,
        "account": entry.account_key,
        "request_id": entry.request_id,
        "source": entry.source,
        "details": entry.details or {},
    }
