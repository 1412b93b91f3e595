"""Signing key rotation runs: on demand (``nats-iam-resolver rotate``) and on a schedule.

The service steps are in ``resolver.accounts.rotation``; this module owns the transactions:
one for the operator key's promotion, then accounts re-signed ``BATCH`` per transaction, so
a rotation over thousands of accounts never holds the database for long, and a crash half
way is finished by the next run (``accounts_to_resign`` finds what is left).

Every check (``[jobs] rotation_check_seconds``) also finishes an operator rotation left
half done and retires superseded account keys whose users' JWTs have all expired, whether
or not scheduled rotation is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import rotation
from resolver.accounts.service import get_account, list_accounts, resign_account
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, Actor
from resolver.config import Settings
from resolver.db.models import utcnow
from resolver.errors import ConflictError, NotFoundError
from resolver.http.pushing import wake_pusher
from resolver.jobs.scheduler import add_job
from resolver.push.connection import PushUnavailableError
from resolver.push.probe import ServerProbe
from resolver.push.state import PUSH_CONNECTION
from resolver.sealing import Sealer

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
#: Accounts re-signed per transaction.
BATCH = 50

DEPLOY_HINT = (
    "deploy the new operator JWT (`nats-iam-resolver nats-config`, or GET /jwt/v1/operator) "
    "to every nats-server and reload it before the next operator key rotation"
)


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


@dataclass
class OperatorRotationReport:
    #: rotated | prepared | refused | dry-run
    status: str
    active_key: str = ""
    next_key: str = ""
    retired_key: str | None = None
    accounts_resigned: int = 0
    message: str = ""
    #: Accounts uploaded with nsc still signed by a retired key (keep it listed).
    foreign_accounts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "active_key": self.active_key,
            "next_key": self.next_key,
            "retired_key": self.retired_key,
            "accounts_resigned": self.accounts_resigned,
            "foreign_accounts": self.foreign_accounts,
        }


async def untrusting_servers(probe: ServerProbe | None, key: str) -> list[str] | None:
    """Servers whose configured operator JWT does not list ``key``; None when nobody could
    be asked (no connection, or no server answered)."""
    if probe is None:
        return None
    try:
        trusted = await probe.trusted_signing_keys()
    except PushUnavailableError:
        return None
    if not trusted:
        return None
    return sorted(server for server, keys in trusted.items() if key not in keys)


async def rotate_operator(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    actor: Actor,
    probe: ServerProbe | None,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> OperatorRotationReport:
    """Rotate the operator signing key, safely for the servers running now.

    With no next key yet (an installation older than rotation), only adds one: promoting a
    key the servers do not know would make them refuse every account signed with it. The
    promotion is refused while a server that answers does not trust the next key (its
    operator JWT was not redeployed since the last rotation), and when no server can be
    asked, unless ``force``.
    """
    async with sessions() as session:
        keys = await rotation.operator_keys(session)
    if keys is None:
        if dry_run:
            return OperatorRotationReport(
                "dry-run", message="would add a next signing key (none is listed yet)"
            )
        async with sessions() as session, session.begin():
            added = await rotation.prepare_next_operator_key(session, sealer, settings, actor=actor)
            keys = await rotation.operator_keys(session)
        assert keys is not None
        message = (
            f"the operator JWT listed no next signing key: added {added}. Nothing is signed "
            f"with it yet; {DEPLOY_HINT.replace('next operator key rotation', 'rotation')}, "
            "then run `nats-iam-resolver rotate --operator` again"
        )
        log.warning("%s", message)
        return OperatorRotationReport(
            "prepared", active_key=keys.active, next_key=keys.next, message=message
        )

    untrusting = await untrusting_servers(probe, keys.next)
    if not force and untrusting is None:
        return OperatorRotationReport(
            "refused",
            active_key=keys.active,
            next_key=keys.next,
            message=(
                "cannot ask the nats-servers whether they trust the next signing key "
                f"{keys.next} (no NATS connection, or no server answered); pass --force if "
                "every server runs the current operator JWT"
            ),
        )
    if not force and untrusting:
        return OperatorRotationReport(
            "refused",
            active_key=keys.active,
            next_key=keys.next,
            message=(
                f"{', '.join(untrusting)} do(es) not trust the next signing key {keys.next} "
                f"yet: {DEPLOY_HINT.replace(' before the next operator key rotation', '')}, "
                "then rotate"
            ),
        )
    if dry_run:
        async with sessions() as session:
            count = len(await rotation.accounts_to_resign(session))
        return OperatorRotationReport(
            "dry-run",
            active_key=keys.next,
            next_key="(new)",
            retired_key=keys.active,
            accounts_resigned=count + 1,
            message=f"would promote {keys.next}, retire {keys.active} and re-sign the accounts",
        )

    async with sessions() as session, session.begin():
        promoted = await rotation.promote_next_operator_key(session, sealer, settings, actor=actor)
    _say(progress, f"promoted operator signing key {promoted.active}; re-signing accounts")
    report = OperatorRotationReport(
        "rotated",
        active_key=promoted.active,
        next_key=promoted.next,
        retired_key=promoted.retired,
    )
    await finish_operator_rotation(sessions, sealer, settings, report, progress=progress)
    report.message = (
        f"accounts are now signed by {promoted.active}, which servers running the previous "
        f"operator JWT already trust; the operator JWT now pre-publishes {promoted.next}: "
        + DEPLOY_HINT
    )
    log.warning("operator signing key rotated: %s", report.message)
    return report


async def finish_operator_rotation(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    report: OperatorRotationReport | None = None,
    *,
    progress: Progress | None = None,
) -> int:
    """Re-sign every account held here not signed by the active key yet, then drop retired
    keys no account uses from the operator JWT; the number of accounts re-signed."""
    async with sessions() as session:
        left = await rotation.accounts_to_resign(session)
    done = 0
    for start in range(0, len(left), BATCH):
        async with sessions() as session, session.begin():
            for account_id in left[start : start + BATCH]:
                try:
                    account = await rotation.account_by_id(session, account_id)
                except NotFoundError:  # deleted meanwhile
                    continue
                done += await resign_account(session, sealer, settings, account, force=True)
        _say(progress, f"  re-signed {min(start + BATCH, len(left))}/{len(left)} account(s)")
    async with sessions() as session, session.begin():
        await rotation.refresh_operator_jwt(session, sealer, settings)
        foreign = await rotation.foreign_accounts_on_retired_keys(session)
    if foreign:
        log.warning(
            "accounts uploaded with nsc are still signed by a retired operator key, which "
            "stays listed until they are re-signed: %s",
            ", ".join(foreign),
        )
    if report is not None:
        report.accounts_resigned = done
        report.foreign_accounts = foreign
    return done


# ------------------------------------------------------------------------------ accounts


@dataclass
class AccountRotationReport:
    rotated: list[rotation.RotatedKeys] = field(default_factory=list)
    #: Account name → why it was left alone.
    skipped: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0
    revoke_old: bool = False
    dry_run: bool = False
    #: dry run: account name → how many keys would be replaced.
    planned: dict[str, int] = field(default_factory=dict)

    @property
    def keys(self) -> int:
        return sum(len(r.replaced) for r in self.rotated)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts_rotated": len(self.rotated),
            "keys_replaced": self.keys,
            "keys_retired": sum(len(r.retired) for r in self.rotated),
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "revoke_old": self.revoke_old,
        }

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"dry run: would rotate {sum(self.planned.values())} key(s) in "
                f"{len(self.planned)} account(s); {len(self.skipped)} skipped"
            )
        retired = sum(len(r.retired) for r in self.rotated)
        return (
            f"rotated {self.keys} signing key(s) in {len(self.rotated)} account(s)"
            + (f", {retired} old key(s) revoked" if self.revoke_old else "")
            + f"; {self.unchanged} unchanged, {len(self.skipped)} skipped"
        )


async def rotate_accounts(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    actor: Actor,
    names: list[str] | None = None,
    revoke_old: bool = False,
    older_than: datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> AccountRotationReport:
    """Rotate the signing keys of the named accounts (default: every account rotated here).

    A named account that is unknown or not rotated here (``rotation_exclusion``) is an error
    before anything changes; unnamed ones of those kinds are skipped and reported.
    """
    report = AccountRotationReport(revoke_old=revoke_old, dry_run=dry_run)
    async with sessions() as session:
        if names:
            targets = []
            for name in names:
                account = await get_account(session, name)
                reason = await rotation.rotation_exclusion(session, account)
                if reason is not None:
                    raise ConflictError(f"account {account.name!r} is not rotated: {reason}")
                targets.append(account.id)
        else:
            # A scheduled run looks only at accounts with a key old enough.
            due = (
                None
                if older_than is None
                else set(await rotation.accounts_due(session, older_than=older_than))
            )
            targets = []
            for account in await list_accounts(session):
                if due is not None and account.id not in due:
                    continue
                reason = await rotation.rotation_exclusion(session, account)
                if reason is None:
                    targets.append(account.id)
                elif older_than is None:  # a schedule would say so at every check
                    report.skipped[account.name] = reason
        if dry_run:
            for account_id in targets:
                account = await rotation.account_by_id(session, account_id)
                due = await rotation.keys_due(session, account, older_than=older_than)
                if due:
                    report.planned[account.name] = len(due)
            return report
    _say(progress, f"rotating the signing keys of {len(targets)} account(s)")
    when = utcnow()
    for start in range(0, len(targets), BATCH):
        async with sessions() as session, session.begin():
            for account_id in targets[start : start + BATCH]:
                try:
                    account = await rotation.account_by_id(session, account_id)
                except NotFoundError:  # deleted meanwhile
                    continue
                done = await rotation.rotate_account_keys(
                    session,
                    sealer,
                    settings,
                    account,
                    actor=actor,
                    revoke_old=revoke_old,
                    older_than=older_than,
                    now=when,
                )
                if done is None:
                    report.unchanged += 1
                else:
                    report.rotated.append(done)
        _say(progress, f"  {min(start + BATCH, len(targets))}/{len(targets)} account(s)")
    if report.rotated:
        log.info("%s", report.summary())
    return report


async def retire_drained(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    now: int | None = None,
) -> dict[str, list[str]]:
    """Retire superseded keys whose users' JWTs have all expired; account key → keys."""
    when = int(time.time()) if now is None else now
    async with sessions() as session:
        ids = await rotation.accounts_with_superseded_keys(session)
    retired: dict[str, list[str]] = {}
    for account_id in ids:
        async with sessions() as session, session.begin():
            try:
                account = await rotation.account_by_id(session, account_id)
            except NotFoundError:
                continue
            keys = await rotation.retire_drained_keys(
                session, sealer, settings, account, actor=SYSTEM, now=when
            )
            if keys:
                retired[account.public_key] = keys
    if retired:
        log.info(
            "retired %d rotated signing key(s) whose users' JWTs all expired, in %d account(s)",
            sum(len(k) for k in retired.values()),
            len(retired),
        )
    return retired


# ------------------------------------------------------------------------------ the job


async def run(app: web.Application) -> dict[str, Any]:
    sessions, sealer, settings = app[SESSIONMAKER], app[SEALER], app[SETTINGS]
    jobs = settings.jobs
    result: dict[str, Any] = {}
    changed = False

    resumed = await finish_operator_rotation(sessions, sealer, settings)
    if resumed:
        result["operator_resumed_accounts"] = resumed
        changed = True

    if jobs.operator_key_rotation_days > 0:
        async with sessions() as session:
            since = await rotation.active_key_since(session)
            has_next = await rotation.operator_keys(session) is not None
        due = since is None or since <= utcnow() - timedelta(days=jobs.operator_key_rotation_days)
        if due or not has_next:
            connection = app.get(PUSH_CONNECTION)
            probe = (
                ServerProbe(connection, timeout=max(0.5, settings.nats.push_timeout))
                if connection is not None and connection.connected
                else None
            )
            report = await rotate_operator(sessions, sealer, settings, actor=SYSTEM, probe=probe)
            if report.status == "refused":
                log.warning("scheduled operator key rotation postponed: %s", report.message)
            result["operator"] = report.as_dict()
            changed = changed or report.status == "rotated"

    if jobs.account_key_rotation_days > 0:
        older = utcnow() - timedelta(days=jobs.account_key_rotation_days)
        async with sessions() as session:
            due_ids = await rotation.accounts_due(session, older_than=older)
        if due_ids:
            accounts = await rotate_accounts(
                sessions, sealer, settings, actor=SYSTEM, older_than=older
            )
            if accounts.rotated:
                result["accounts"] = accounts.as_dict()
                changed = True

    retired = await retire_drained(sessions, sealer, settings)
    if retired:
        result["retired_keys"] = sum(len(k) for k in retired.values())
        changed = True
    if changed:
        wake_pusher(app)
    return result


def setup(app: web.Application) -> None:
    every = app[SETTINGS].jobs.rotation_check_seconds
    # Staggered with the other hourly jobs (see resolver.jobs.reconcile).
    add_job(app, "rotate_signing_keys", run, every_seconds=every, first_run_after=min(every, 120.0))
