"""Deprovisioning: revoke what people lost, re-sign each account once, queue the push.

(Work in progress by helper B: signatures are final, bodies follow.)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.audit.service import Actor
from resolver.config import Settings
from resolver.sealing import Sealer


async def revoke_lost_access(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    candidates: Mapping[int, Collection[str]],
    *,
    actor: Actor,
    reason: str,
    exclude_bindings: Collection[int] = (),
    exclude_groups: Collection[str] = (),
) -> set[int]:
    """candidates: account id -> user ids that may have lost access there. Returns the ids
    of accounts re-signed (each at most once)."""
    raise NotImplementedError


async def candidates_for_binding(session: AsyncSession, binding_id: int) -> dict[int, set[str]]:
    """account id -> members of the binding's group (by id or displayName)."""
    raise NotImplementedError


async def resign_accounts(
    session: AsyncSession, sealer: Sealer, settings: Settings, account_ids: Iterable[int]
) -> set[int]:
    """Re-sign each account once (force), queue pushes; the ids re-signed."""
    raise NotImplementedError
