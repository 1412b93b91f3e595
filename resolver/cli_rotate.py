"""Command line for signing key rotation and reconcile (issue #7).

Imported by ``resolver.cli`` to register ``rotate`` and ``reconcile`` on the ``cli`` group.
Both write account JWTs and outbox rows only; a running service pushes them. Both ask the
nats-servers (over a system-account connection of their own) what they need to know:
``rotate --operator`` whether every server trusts the key it promotes, ``reconcile`` which
JWT each server holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.cli import cli, cli_actor, config_option, run, sealer_of, settings_from
from resolver.config import Settings
from resolver.db.engine import create_engine, create_sessionmaker

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]


async def _with_sessions(settings: Settings, work: Callable[[Sessions], Awaitable[T]]) -> T:
    """Run ``work`` with a sessionmaker on a one-off engine (it opens its own transactions:
    a rotation over many accounts commits in batches)."""
    engine = create_engine(settings.database_url)
    try:
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


@cli.command("rotate")
@config_option
@click.option("--operator", "operator_key", is_flag=True, help="Rotate the operator signing key.")
@click.option("--accounts", "all_accounts", is_flag=True, help="Rotate every account's keys.")
@click.option(
    "--account",
    "names",
    multiple=True,
    metavar="NAME",
    help="Rotate this account's keys (repeat for several).",
)
@click.option(
    "--revoke-old",
    is_flag=True,
    help="Key compromised: drop the old account keys from the JWTs now (their users are "
    "disconnected) instead of when their users' JWTs expire.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Promote the operator's next key even if no server can confirm it trusts it.",
)
@click.option("--dry-run", is_flag=True, help="Say what would change and change nothing.")
def rotate(
    config: Path | None,
    operator_key: bool,
    all_accounts: bool,
    names: tuple[str, ...],
    revoke_old: bool,
    force: bool,
    dry_run: bool,
) -> None:
    """Rotate signing keys with no connection dropped (except with --revoke-old)."""
    from resolver.jobs.rotate import rotate_accounts, rotate_operator
    from resolver.push.probe import probe_for

    if not (operator_key or all_accounts or names):
        raise click.UsageError("say what to rotate: --operator, --accounts or --account NAME")
    if all_accounts and names:
        raise click.UsageError("give either --accounts or --account NAME, not both")
    if revoke_old and not (all_accounts or names):
        raise click.UsageError("--revoke-old applies to account keys: add --accounts/--account")
    settings = settings_from(config)
    sealer = sealer_of(settings)
    actor = cli_actor()

    async def work(sessions: Sessions) -> bool:
        failed = False
        if operator_key:
            async with probe_for(settings) as probe:
                report = await rotate_operator(
                    sessions,
                    sealer,
                    settings,
                    actor=actor,
                    probe=probe,
                    force=force,
                    dry_run=dry_run,
                    progress=click.echo,
                )
            if report.status == "refused":
                click.echo(f"operator: not rotated: {report.message}", err=True)
                failed = True
            elif report.status == "rotated":
                click.echo(
                    f"operator: active signing key {report.active_key} (was "
                    f"{report.retired_key}), next {report.next_key}; "
                    f"{report.accounts_resigned} account JWT(s) re-signed"
                )
                click.echo(f"operator: {report.message}")
                for name in report.foreign_accounts:
                    click.echo(
                        f"operator: account {name} (uploaded with nsc) is still signed by a "
                        "retired key: re-sign it with nsc"
                    )
            else:
                click.echo(f"operator: {report.message}")
        if all_accounts or names:
            accounts = await rotate_accounts(
                sessions,
                sealer,
                settings,
                actor=actor,
                names=list(names) or None,
                revoke_old=revoke_old,
                dry_run=dry_run,
                progress=click.echo,
            )
            for name, reason in sorted(accounts.skipped.items()):
                click.echo(f"skipped {name}: {reason}")
            for name, count in sorted(accounts.planned.items()):
                click.echo(f"would rotate {count} key(s) of account {name}")
            click.echo(accounts.summary())
        return failed

    failed = run(_with_sessions(settings, work))
    if not dry_run:
        click.echo("committed; a running service pushes the re-signed account JWTs")
    if failed:
        raise SystemExit(1)


@cli.command("reconcile")
@config_option
def reconcile(config: Path | None) -> None:
    """Push every account's current JWT again and report servers that held a stale one."""
    from resolver.jobs.reconcile import reconcile_accounts
    from resolver.push.probe import probe_for
    from resolver.push.reconcile import ReconcileReport

    settings = settings_from(config)

    async def work(sessions: Sessions) -> ReconcileReport:
        async with probe_for(settings) as probe:
            if probe is None:
                click.echo("NATS not reachable: servers are not asked, accounts only re-queued")
            return await reconcile_accounts(sessions, probe, progress=click.echo)

    report = run(_with_sessions(settings, work))
    for key, servers in sorted(report.stale.items()):
        click.echo(f"stale: account {report.names.get(key, key)} ({key}) on {', '.join(servers)}")
    for key, servers in sorted(report.errors.items()):
        click.echo(f"error: account {report.names.get(key, key)} ({key}) on {', '.join(servers)}")
    click.echo(report.summary())
    click.echo("committed; a running service pushes the re-queued account JWTs")
