"""Command line: ``nats-iam-resolver COMMAND --config FILE``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Settings, load_settings
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.errors import ConfigError, ResolverError

T = TypeVar("T")


class ResolverGroup(click.Group):
    """Turns domain errors into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"error: invalid configuration: {exc}", err=True)
            ctx.exit(2)
        except ResolverError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def config_path_of(given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help=f"Config file (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG_PATH}).",
    )(func)


def settings_from(config: Path | None) -> Settings:
    return load_settings(config_path_of(config))


@contextlib.asynccontextmanager
async def cli_session(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session on a one-off engine, for commands that run outside the service."""
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@click.group(cls=ResolverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nats-iam-resolver")
def cli() -> None:
    """nats-iam-resolver: NATS accounts and credentials that follow your identity provider."""


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Directory for config, keys, database and creds (default: the config file's).",
)
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP listen address.")
@click.option("--port", default=8080, show_default=True, type=int, help="HTTP port.")
@click.option("--public-url", default="", help="URL nats-server uses to reach this service.")
@click.option("--nats-url", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--operator-name", default="nats-iam-resolver", show_default=True)
@click.option(
    "--auth-callout",
    is_flag=True,
    help="Also set up the auth callout: clients connect with an IdP token (see README).",
)
def init(
    data_dir: Path | None,
    config: Path | None,
    host: str,
    port: int,
    public_url: str,
    nats_url: str,
    operator_name: str,
    auth_callout: bool,
) -> None:
    """Create (or complete) a data directory: config, master key, database, operator, creds."""
    from resolver.bootstrap import initialize, write_config

    if config is None:
        config = (data_dir or DEFAULT_CONFIG_PATH.parent) / "resolver.toml"
    config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    wrote = write_config(
        config,
        host=host,
        port=port,
        public_url=public_url,
        nats_url=nats_url,
        auth_callout=auth_callout,
    )
    report = run(initialize(config, operator_name=operator_name, auth_callout=auth_callout))
    if wrote:
        report.created.insert(0, f"config {config}")
    for item in report.created:
        click.echo(f"created {item}")
    if not report.created:
        click.echo(f"{config}: already initialised, nothing to do")
    click.echo(f"operator        {report.operator_key}")
    click.echo(f"system account  {report.system_account_key}")
    if report.auth_callout is not None:
        callout = report.auth_callout
        click.echo(f"auth account    {callout.account_name} {callout.account_public_key}")
        click.echo(f"callout user    {callout.user_public_key}")
        click.echo(f"callout xkey    {callout.xkey_public_key}")
        click.echo(
            "clients connect with just their IdP token (nats-server 2.11.2+ has the sentinel "
            "in its config as default_sentinel); older servers: also pass the creds "
            f"{report.sentinel_creds_path}"
        )
    click.echo(f"nats-server -c {report.nats_config_path}")


@cli.command()
@config_option
def serve(config: Path | None) -> None:
    """Run the HTTP service (resolver, SCIM, admin API)."""
    from resolver.server import serve as serve_forever

    serve_forever(settings_from(config))


@cli.command()
@config_option
def migrate(config: Path | None) -> None:
    """Migrate the database schema to the newest revision."""
    from resolver.db import migrate as migrations

    settings = settings_from(config)

    async def go() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            await migrations.upgrade(engine)
            return await migrations.current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"database at revision {run(go())}")


@cli.group()
def token() -> None:
    """API bearer tokens (for the IdP's SCIM client and for admins)."""


@token.command("create")
@config_option
@click.option("--name", required=True, help="Who or what uses the token (shown in the audit log).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["scim", "admin", "admin:read", "push"]),
    help="Repeat for several scopes.",
)
@click.option("--replace", is_flag=True, help="Replace a token of the same name.")
def token_create(config: Path | None, name: str, scopes: tuple[str, ...], replace: bool) -> None:
    """Create a token and print it once; only its hash is stored."""
    from resolver.auth.tokens import create_token

    settings = settings_from(config)

    async def go() -> str:
        async with cli_session(settings) as session, session.begin():
            return await create_token(session, name, scopes, replace=replace, actor=cli_actor())

    click.echo(run(go()))


@token.command("list")
@config_option
def token_list(config: Path | None) -> None:
    """List tokens (names and scopes, never secrets)."""
    from resolver.auth.tokens import list_tokens

    settings = settings_from(config)

    async def go() -> None:
        async with cli_session(settings) as session:
            for row in await list_tokens(session):
                state = "revoked" if row.revoked_at else "active"
                click.echo(f"{row.name}\t{row.scopes}\t{state}\t{row.created_at:%Y-%m-%d}")

    run(go())


@token.command("revoke")
@config_option
@click.option("--name", required=True)
def token_revoke(config: Path | None, name: str) -> None:
    """Revoke a token by name."""
    from resolver.auth.tokens import revoke_token

    settings = settings_from(config)

    async def go() -> None:
        async with cli_session(settings) as session, session.begin():
            await revoke_token(session, name, actor=cli_actor())

    run(go())
    click.echo(f"revoked {name}")


def cli_actor() -> Any:
    """Who acts for audit purposes when an admin runs a command on the server's machine."""
    from resolver.audit.service import Actor

    return Actor("admin", source="cli")


def sealer_of(settings: Settings) -> Any:
    from resolver.sealing import Sealer, load_master_key

    return Sealer(load_master_key(settings.master_key_path))


def load_spec_file(path: Path) -> Any:
    """An account spec from a JSON or YAML file (YAML is a superset of JSON)."""
    import yaml

    from resolver.errors import ValidationError

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValidationError(f"cannot read spec file {path}: {exc}") from None


@cli.group()
def account() -> None:
    """NATS accounts whose keys this service holds."""


@account.command("create")
@config_option
@click.argument("name")
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="JSON or YAML file: limits (-1 unlimited, the default), tags, exports, imports, "
    "description.",
)
def account_create(config: Path | None, name: str, spec_file: Path | None) -> None:
    """Create account NAME: new keys (sealed), a signed JWT, and a push to NATS."""
    from resolver.accounts.service import create_account

    settings = settings_from(config)
    spec = load_spec_file(spec_file) if spec_file is not None else None
    sealer = sealer_of(settings)

    async def go() -> str:
        async with cli_session(settings) as session, session.begin():
            created = await create_account(
                session, sealer, settings, name=name, spec=spec, actor=cli_actor()
            )
            return created.public_key

    click.echo(f"created account {name} {run(go())}")


@account.command("list")
@config_option
def account_list(config: Path | None) -> None:
    """List accounts: name, public key, where it is managed, JWT expiry."""
    from datetime import UTC, datetime

    from resolver.accounts.service import is_managed_here, list_accounts

    settings = settings_from(config)

    async def go() -> None:
        async with cli_session(settings) as session:
            for row in await list_accounts(session):
                where = "here" if is_managed_here(row) else "nsc"
                expires = (
                    datetime.fromtimestamp(row.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    if row.expires_at
                    else "never"
                )
                click.echo(f"{row.name}\t{row.public_key}\t{where}\t{expires}")

    run(go())


def _default_creds_path(name: str) -> Path:
    import re

    return Path(f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.creds")


@cli.command("user-creds")
@config_option
@click.option("--account", "account_ref", required=True, help="Account name or public key.")
@click.option("--name", default=None, help="Workload name (written into the user JWT).")
@click.option(
    "--user",
    "user_ref",
    default=None,
    metavar="USERNAME",
    help="A person (SCIM userName or id): creds for their roles in the account.",
)
@click.option(
    "--ttl",
    default=None,
    help="Lifetime: 3600, 30m, 1h, 7d... (default 1h; for --user capped by the roles).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Creds file to write (mode 0600). Default: ./<name or user>.creds",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def user_creds(
    config: Path | None,
    account_ref: str,
    name: str | None,
    user_ref: str | None,
    ttl: str | None,
    out: Path | None,
    force: bool,
) -> None:
    """Write a .creds file for a workload (--name) or a person (--user); the key and its
    expiry are recorded for revocation."""
    from resolver.accounts.service import get_account, issue_workload_creds
    from resolver.bootstrap import write_private
    from resolver.durations import parse_duration
    from resolver.errors import ConflictError

    if (name is None) == (user_ref is None):
        raise click.UsageError("give exactly one of --name (a workload) or --user (a person)")
    settings = settings_from(config)
    ttl_seconds = parse_duration(ttl) if ttl is not None else None
    path = out or _default_creds_path(name if name is not None else str(user_ref))
    if path.exists() and not force:
        raise ConflictError(f"{path} exists; pass --force to overwrite it")
    sealer = sealer_of(settings)

    if user_ref is not None:
        _person_creds(settings, sealer, account_ref, user_ref, ttl_seconds, path)
        return
    if ttl_seconds is None:
        ttl_seconds = parse_duration("1h")

    async def go() -> tuple[str, str, int | None]:
        async with cli_session(settings) as session, session.begin():
            target = await get_account(session, account_ref)
            creds, issued = await issue_workload_creds(
                session, sealer, target, name=name, ttl_seconds=ttl_seconds, actor=cli_actor()
            )
            # Written inside the transaction: if the file cannot be written, nothing is
            # recorded as issued.
            write_private(path, creds)
            return issued.public_key, target.name, issued.expires_at

    user_key, account_name, expires_at = run(go())
    click.echo(f"wrote {path} (account {account_name}, user {user_key}, expires {expires_at})")


def _person_creds(
    settings: Settings,
    sealer: Any,
    account_ref: str,
    user_ref: str,
    ttl_seconds: int | None,
    path: Path,
) -> None:
    """``user-creds --user``: a person's creds, signed by the scoped key of their roles."""
    from resolver.accounts.service import get_account
    from resolver.bootstrap import write_private
    from resolver.policy.user_creds import issue_person_creds

    async def go() -> Any:
        async with cli_session(settings) as session, session.begin():
            target = await get_account(session, account_ref)
            issued = await issue_person_creds(
                session,
                sealer,
                settings,
                target,
                user_ref,
                ttl_seconds=ttl_seconds,
                actor=cli_actor(),
            )
            assert issued.creds is not None  # the service generated the key
            # Written inside the transaction: if the file cannot be written, nothing is
            # recorded as issued.
            write_private(path, issued.creds)
            return issued, target.name

    issued, account_name = run(go())
    click.echo(
        f"wrote {path} (account {account_name}, user {issued.user_name}, "
        f"key {issued.issued.public_key}, roles {','.join(issued.roles)}, "
        f"expires {issued.issued.expires_at})"
    )
    if issued.new_signing_key:
        click.echo(
            "note: a new scoped signing key was created for this role set; the account JWT "
            "was re-signed and a running service pushes it within its push sweep"
        )


@cli.command("revoke")
@config_option
@click.option("--account", "account_ref", required=True, help="Account name or public key.")
@click.option("--user-key", required=True, help="User public key (U...), or '*' for all users.")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
def revoke(config: Path | None, account_ref: str, user_key: str, reason: str | None) -> None:
    """Revoke a user key: re-sign the account JWT with the revocation and push it."""
    from resolver.accounts.service import get_account, revoke_user_key

    settings = settings_from(config)
    sealer = sealer_of(settings)

    async def go() -> tuple[str, int, str | None]:
        async with cli_session(settings) as session, session.begin():
            target = await get_account(session, account_ref)
            at = await revoke_user_key(
                session, sealer, settings, target, user_key, actor=cli_actor(), reason=reason
            )
            return target.name, at, target.jti

    account_name, at, jti = run(go())
    click.echo(f"revoked {user_key} in {account_name} at {at} (account JWT {jti})")


@cli.command("nats-config")
@config_option
@click.option("--monitor-port", type=int, default=None, help="Also enable the HTTP monitor.")
def nats_config(config: Path | None, monitor_port: int | None) -> None:
    """Print the nats-server configuration for this operator."""
    from resolver.accounts.operator import get_operator
    from resolver.bootstrap import render_nats_config
    from resolver.credentials.callout_keys import default_sentinel

    settings = settings_from(config)

    async def go() -> str:
        async with cli_session(settings) as session:
            return render_nats_config(
                settings,
                await get_operator(session),
                monitor_port=monitor_port,
                default_sentinel=await default_sentinel(session, settings),
            )

    click.echo(run(go()), nl=False)


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("data"))
@config_option
def dev(data_dir: Path, config: Path | None) -> None:
    """Local stack for `make run`: init if needed, then the resolver plus a nats-server."""
    from resolver.devstack import run_dev_stack

    sys.exit(run_dev_stack(config or data_dir / "resolver.toml"))


# Imported last: these modules register their commands on the groups defined above.
from resolver import (  # noqa: E402
    cli_audit,  # noqa: F401
    cli_jobs,  # noqa: F401
    cli_policy,  # noqa: F401
    cli_rotate,  # noqa: F401
)


def main() -> None:
    cli(prog_name="nats-iam-resolver")
