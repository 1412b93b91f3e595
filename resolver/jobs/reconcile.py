"""Job: push every account's current JWT again and report servers that held a stale one.

A server that missed a push (disconnected, restarted from an old full-resolver directory)
otherwise keeps outdated claims until the JWT's ``exp``. See ``resolver.push.reconcile``
for what "stale" means and why the re-push goes through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.appkeys import SESSIONMAKER, SETTINGS
from resolver.http.pushing import wake_pusher
from resolver.jobs.scheduler import add_job
from resolver.metrics import RECONCILE_STALE_ACCOUNTS, RECONCILE_STALE_BY_SERVER
from resolver.push.connection import PushUnavailableError
from resolver.push.probe import HeldAccount, ServerProbe
from resolver.push.reconcile import (
    ReconcileReport,
    ReconcileTarget,
    reconcile_targets,
    requeue_current,
)
from resolver.push.state import PUSH_CONNECTION

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
#: Accounts asked at once (each question waits for every server's answer).
PROBE_CONCURRENCY = 16
#: Accounts re-queued per transaction.
BATCH = 100
#: Stale (account, server) pairs logged one by one at most; the summary counts them all.
LOGGED_STALE = 50


async def reconcile_accounts(
    sessions: async_sessionmaker[AsyncSession],
    probe: ServerProbe | None,
    *,
    progress: Progress | None = None,
) -> ReconcileReport:
    """Ask the servers what they hold (when ``probe``), then queue every account's current
    JWT for a push, ``BATCH`` accounts per transaction. The caller wakes the pusher."""

    def say(line: str) -> None:
        if progress is not None:
            progress(line)

    async with sessions() as session:
        targets = await reconcile_targets(session)
    report = ReconcileReport(accounts=len(targets), names={t.key: t.name for t in targets})
    held = await _ask_servers(probe, targets, report, say) if probe is not None else {}

    for start in range(0, len(targets), BATCH):
        chunk = targets[start : start + BATCH]
        async with sessions() as session, session.begin():
            for target in chunk:
                answers = held.get(target.key, [])
                queued, stale = await requeue_current(session, target, answers)
                report.requeued += queued
                report.pending += not queued
                if stale:
                    report.stale[target.key] = stale
                errors = sorted({a.server for a in answers if a.error is not None})
                if errors:
                    report.errors[target.key] = errors
        say(f"  re-queued {min(start + BATCH, len(targets))}/{len(targets)} account(s)")

    for pairs, (key, servers) in enumerate(sorted(report.stale.items())):
        if pairs >= LOGGED_STALE:
            break
        log.warning(
            "account %s (%s) was stale on %s; its current JWT is pushed again",
            report.names.get(key, key),
            key,
            ", ".join(servers),
        )
    RECONCILE_STALE_ACCOUNTS.set(len(report.stale))
    RECONCILE_STALE_BY_SERVER.clear()
    for server in report.servers:
        RECONCILE_STALE_BY_SERVER.labels(server).set(report.stale_by_server().get(server, 0))
    log.info("%s", report.summary())
    return report


async def _ask_servers(
    probe: ServerProbe,
    targets: list[ReconcileTarget],
    report: ReconcileReport,
    say: Progress,
) -> dict[str, list[HeldAccount]]:
    try:
        report.servers = await probe.servers()
    except PushUnavailableError as exc:
        log.warning("reconcile: cannot ask the servers (%s); re-pushing only", exc)
        return {}
    report.probed = True
    asked = [t for t in targets if not t.pending]
    if not report.servers or not asked:
        return {}
    say(f"asking {len(report.servers)} server(s) about {len(asked)} account(s)")
    held: dict[str, list[HeldAccount]] = {}
    limit = asyncio.Semaphore(PROBE_CONCURRENCY)
    done = 0
    step = max(1, len(asked) // 10)

    async def ask(target: ReconcileTarget) -> None:
        nonlocal done
        async with limit:
            try:
                held[target.key] = await probe.held_jwts(target.key, expect=len(report.servers))
            except PushUnavailableError:
                held[target.key] = []
        done += 1
        if done % step == 0 or done == len(asked):
            say(f"  asked {done}/{len(asked)} account(s)")

    await asyncio.gather(*(ask(t) for t in asked))
    return held


async def run(app: web.Application) -> dict[str, object]:
    connection = app.get(PUSH_CONNECTION)
    settings = app[SETTINGS]
    probe = (
        ServerProbe(connection, timeout=max(0.5, settings.nats.push_timeout))
        if connection is not None and connection.connected
        else None
    )
    report = await reconcile_accounts(app[SESSIONMAKER], probe)
    if report.requeued:
        wake_pusher(app)
    return report.as_dict()


def setup(app: web.Application) -> None:
    every = app[SETTINGS].jobs.reconcile_seconds
    if every > 0:
        # First runs are staggered (audit retention 90 s, rotation 120 s, issued keys 150 s,
        # this 300 s after start): every hourly job would otherwise fire 60 s after start-up
        # together with re-sign and prune, and their burst showed as tens of ms of queueing
        # in bench/credentials.py.
        add_job(app, "reconcile", run, every_seconds=every, first_run_after=min(every, 300.0))
