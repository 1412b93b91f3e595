"""Command line for accounts, roles, bindings and policy files (issue #5).

Imported by ``resolver.cli`` to register its commands on the ``cli`` group and the
``account`` group. Every command that changes something runs in one transaction; domain
errors become one line on stderr (``ResolverGroup``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from resolver.cli import (
    account,
    cli,
    cli_actor,
    cli_session,
    config_option,
    load_spec_file,
    run,
    sealer_of,
    settings_from,
)
from resolver.errors import ValidationError


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {what} {path}: {exc}") from None


def _mapping_file(path: Path, what: str) -> dict[str, Any]:
    body = load_spec_file(path)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValidationError(f"{what} {path} must hold a mapping (YAML or a JSON object)")
    return body


# ---------------------------------------------------------------------------- accounts


@account.command("update")
@config_option
@click.argument("name")
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="JSON or YAML object of spec fields to merge (a null removes a field).",
)
def account_update(config: Path | None, name: str, spec_file: Path) -> None:
    """Merge spec fields into account NAME and re-sign its JWT if the claims change."""
    from resolver.accounts.service import get_account, update_account

    settings = settings_from(config)
    changes = _mapping_file(spec_file, "spec file")
    sealer = sealer_of(settings)

    async def go() -> tuple[bool, str | None]:
        async with cli_session(settings) as session, session.begin():
            target = await get_account(session, name)
            changed = await update_account(
                session, sealer, settings, target, changes, actor=cli_actor()
            )
            return changed, target.jti

    changed, jti = run(go())
    if changed:
        click.echo(f"updated account {name} (account JWT {jti}, pushed after commit)")
    else:
        click.echo(f"account {name}: nothing changed")


@account.command("delete")
@config_option
@click.argument("name")
@click.option("--yes", is_flag=True, help="Confirm: every user of the account is locked out.")
def account_delete(config: Path | None, name: str, yes: bool) -> None:
    """Delete account NAME: its last JWT allows no connection, then it is no longer served."""
    from resolver.accounts.service import delete_account, get_account

    if not yes:
        raise click.UsageError(
            f"deleting account {name!r} locks every user of it out: pass --yes to confirm"
        )
    settings = settings_from(config)
    sealer = sealer_of(settings)

    async def go() -> str:
        async with cli_session(settings) as session, session.begin():
            target = await get_account(session, name)
            public_key = target.public_key
            await delete_account(session, sealer, settings, target, actor=cli_actor())
            return public_key

    click.echo(f"deleted account {name} {run(go())}")


# ------------------------------------------------------------------------------- roles


@cli.group()
def role() -> None:
    """Roles: permission templates (subjects, limits, JetStream) granted by bindings."""


def _role_file_option(func: Any) -> Any:
    return click.option(
        "--file",
        "role_file",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        required=True,
        help="YAML or JSON role body: publish, subscribe, responses, limits, jetstream...",
    )(func)


@role.command("create")
@config_option
@click.argument("name")
@_role_file_option
def role_create(config: Path | None, name: str, role_file: Path) -> None:
    """Create role NAME from a file."""
    from resolver.policy.manage import create_role

    settings = settings_from(config)
    body = _mapping_file(role_file, "role file")

    async def go() -> None:
        async with cli_session(settings) as session, session.begin():
            await create_role(session, name, body, actor=cli_actor())

    run(go())
    click.echo(f"created role {name}")


@role.command("update")
@config_option
@click.argument("name")
@_role_file_option
def role_update(config: Path | None, name: str, role_file: Path) -> None:
    """Replace role NAME; the accounts using it are re-signed once each (and pushed)."""
    from resolver.policy.manage import replace_role

    settings = settings_from(config)
    body = _mapping_file(role_file, "role file")
    sealer = sealer_of(settings)

    async def go() -> int:
        async with cli_session(settings) as session, session.begin():
            _, resigned = await replace_role(
                session, sealer, settings, name, body, actor=cli_actor()
            )
            return len(resigned)

    resigned = run(go())
    click.echo(f"updated role {name} ({resigned} account JWT(s) re-signed)")


@role.command("list")
@config_option
def role_list(config: Path | None) -> None:
    """List roles: name and description."""
    from resolver.policy.manage import list_roles

    settings = settings_from(config)

    async def go() -> None:
        async with cli_session(settings) as session:
            for row in await list_roles(session):
                click.echo(f"{row.name}\t{row.description or ''}")

    run(go())


@role.command("show")
@config_option
@click.argument("name")
def role_show(config: Path | None, name: str) -> None:
    """Print role NAME as YAML (what ``role update --file`` takes)."""
    import yaml

    from resolver.policy.manage import get_role, role_spec

    settings = settings_from(config)

    async def go() -> dict[str, Any]:
        async with cli_session(settings) as session:
            return role_spec(await get_role(session, name)).to_dict()

    click.echo(yaml.safe_dump(run(go()), sort_keys=False, allow_unicode=True), nl=False)


@role.command("delete")
@config_option
@click.argument("name")
def role_delete(config: Path | None, name: str) -> None:
    """Delete role NAME (refused while a binding uses it)."""
    from resolver.policy.manage import delete_role

    settings = settings_from(config)
    sealer = sealer_of(settings)

    async def go() -> int:
        async with cli_session(settings) as session, session.begin():
            # The scoped keys serving the role are retired: those accounts are re-signed.
            return len(await delete_role(session, sealer, settings, name, actor=cli_actor()))

    resigned = run(go())
    click.echo(f"deleted role {name} ({resigned} account JWT(s) re-signed)")


# ---------------------------------------------------------------------------- bindings


@cli.group()
def binding() -> None:
    """Bindings: an IdP group (or token claim) gets a role in an account."""


@binding.command("create")
@config_option
@click.option("--account", "account_name", required=True, help="Account name.")
@click.option("--role", "role_name", required=True, help="Role name.")
@click.option("--group", default=None, help="SCIM group displayName.")
@click.option("--group-id", default=None, help="SCIM group id.")
@click.option("--claim", default=None, metavar="NAME=VALUE", help="IdP token claim.")
@click.option("--until", default=None, help="End time, ISO 8601 with a zone (…Z).")
def binding_create(
    config: Path | None,
    account_name: str,
    role_name: str,
    group: str | None,
    group_id: str | None,
    claim: str | None,
    until: str | None,
) -> None:
    """Bind a group or token claim to an account with a role."""
    from resolver.policy.document import BindingSpec, parse_until
    from resolver.policy.manage import binding_json, create_binding

    if sum(x is not None for x in (group, group_id, claim)) != 1:
        raise click.UsageError("give exactly one of --group, --group-id or --claim")
    claim_pair = None
    if claim is not None:
        claim_name, sep, claim_value = claim.partition("=")
        if not sep or not claim_name.strip() or not claim_value.strip():
            raise click.UsageError("--claim takes NAME=VALUE, e.g. roles=orders.ci")
        claim_pair = (claim_name.strip(), claim_value.strip())
    spec = BindingSpec(
        account=account_name,
        role=role_name,
        group=group,
        group_id=group_id,
        claim=claim_pair,
        until=parse_until(until, "--until") if until is not None else None,
    )
    settings = settings_from(config)

    async def go() -> dict[str, Any]:
        async with cli_session(settings) as session, session.begin():
            created = await create_binding(session, spec, actor=cli_actor())
            return await binding_json(session, created)

    made = run(go())
    click.echo(f"created binding {made['id']}: {spec.selector} -> {account_name}/{role_name}")


def _binding_line(row: dict[str, Any]) -> str:
    if row["claim"] is not None:
        who = f"claim {row['claim']['name']}={row['claim']['value']}"
    elif row["group_id"] is not None:
        who = f"group-id {row['group_id']}" + (f" ({row['group']})" if row["group"] else "")
    else:
        who = f"group {row['group']}"
    until = row["ends_at"] or "-"
    return f"{row['id']}\t{row['account']}\t{row['role']}\t{who}\t{until}"


@binding.command("list")
@config_option
@click.option("--account", "account_name", default=None, help="Only this account's bindings.")
@click.option("--role", "role_name", default=None, help="Only bindings granting this role.")
@click.option("--group", default=None, help="Only this group's (SCIM id or displayName).")
def binding_list(
    config: Path | None, account_name: str | None, role_name: str | None, group: str | None
) -> None:
    """List bindings: id, account, role, who, until."""
    from resolver.policy.manage import binding_json, list_bindings

    settings = settings_from(config)

    async def go() -> None:
        async with cli_session(settings) as session:
            rows = await list_bindings(session, account=account_name, role=role_name, group=group)
            for row in rows:
                click.echo(_binding_line(await binding_json(session, row)))

    run(go())


@binding.command("update")
@config_option
@click.argument("binding_id", type=int)
@click.option("--until", default=None, help="New end time, ISO 8601 with a zone (…Z).")
@click.option("--no-end", is_flag=True, help="Remove the end time: the grant lasts.")
def binding_update(config: Path | None, binding_id: int, until: str | None, no_end: bool) -> None:
    """Move binding ID's end time; an end in the past revokes its members at once."""
    from resolver.policy.document import parse_until
    from resolver.policy.manage import get_binding, set_binding_end

    if (until is None) == (not no_end):
        raise click.UsageError("give exactly one of --until or --no-end")
    ends_at = parse_until(until, "--until") if until is not None else None
    settings = settings_from(config)
    sealer = sealer_of(settings)

    async def go() -> int:
        async with cli_session(settings) as session, session.begin():
            target = await get_binding(session, binding_id)
            resigned = await set_binding_end(
                session, sealer, settings, target, ends_at, actor=cli_actor()
            )
            return len(resigned)

    resigned = run(go())
    end = ends_at.isoformat() if ends_at is not None else "none"
    click.echo(f"binding {binding_id}: ends {end} ({resigned} account JWT(s) re-signed)")


@binding.command("delete")
@config_option
@click.argument("binding_id", type=int)
def binding_delete(config: Path | None, binding_id: int) -> None:
    """Delete binding ID; members who lose the account by it are revoked."""
    from resolver.policy.manage import get_binding, remove_binding

    settings = settings_from(config)
    sealer = sealer_of(settings)

    async def go() -> int:
        async with cli_session(settings) as session, session.begin():
            target = await get_binding(session, binding_id)
            return len(await remove_binding(session, sealer, settings, target, actor=cli_actor()))

    resigned = run(go())
    click.echo(f"deleted binding {binding_id} ({resigned} account JWT(s) re-signed)")


# ------------------------------------------------------------------------------ policy


@cli.group()
def policy() -> None:
    """Policy as code: accounts, roles and bindings from one YAML file."""


@policy.command("apply")
@config_option
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option(
    "--prune-accounts",
    is_flag=True,
    help="Also delete accounts absent from the file (locks their users out).",
)
def policy_apply(config: Path | None, file: Path, dry_run: bool, prune_accounts: bool) -> None:
    """Make the stored accounts, roles and bindings match FILE, in one transaction."""
    from resolver.policy.apply import apply_policy
    from resolver.policy.document import parse_policy
    from resolver.policy.plan import plan_policy

    settings = settings_from(config)
    doc = parse_policy(_read_text(file, "policy file"))

    async def plan_only() -> str:
        async with cli_session(settings) as session:
            try:
                return (await plan_policy(session, doc, prune_accounts=prune_accounts)).render()
            finally:
                await session.rollback()

    if dry_run:
        click.echo(run(plan_only()))
        return

    sealer = sealer_of(settings)

    async def go() -> bool:
        async with cli_session(settings) as session, session.begin():
            plan = await plan_policy(session, doc, prune_accounts=prune_accounts)
            click.echo(plan.render())
            if plan.empty:
                return False
            await apply_policy(
                session,
                sealer,
                settings,
                doc,
                actor=cli_actor(),
                prune_accounts=prune_accounts,
                progress=click.echo,
            )
            return True

    if run(go()):
        click.echo("committed; a running service pushes the changed account JWTs")


@policy.command("export")
@config_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File to write (default: standard output).",
)
def policy_export(config: Path | None, output: Path | None) -> None:
    """Print the stored accounts, roles and bindings as a policy file."""
    from resolver.policy.plan import export_policy

    settings = settings_from(config)

    async def go() -> str:
        async with cli_session(settings) as session:
            return (await export_policy(session)).to_yaml()

    text = run(go())
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


@account.command("import")
@config_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
def account_import(config: Path | None, paths: tuple[Path, ...]) -> None:
    """Import account JWTs signed by this operator's keys: .jwt files, directories (an nsc
    store, a full resolver's dir; *.jwt found recursively) or pack files (pubkey|jwt lines).

    Each is checked like `nsc push` and stored in its own transaction; progress and totals
    go to stderr. Exits 1 when any failed.
    """
    from resolver.accounts.bulk_import import ImportTotals, find_account_jwts, import_one
    from resolver.errors import ResolverError

    settings = settings_from(config)
    found, others = find_account_jwts(paths)
    if others:
        click.echo(f"passing over {others} JWT(s) that are not account JWTs", err=True)
    totals = ImportTotals()
    report_every = max(1, len(found) // 20)

    async def go() -> None:
        async with cli_session(settings) as session:
            for done, candidate in enumerate(found, start=1):
                try:
                    async with session.begin():
                        outcome = await import_one(session, candidate, actor=cli_actor())
                    totals.count(outcome, candidate.origin)
                except ResolverError as exc:
                    totals.count("failed", candidate.origin, str(exc))
                if done % report_every == 0 or done == len(found):
                    click.echo(f"  {done}/{len(found)} account JWTs", err=True)

    run(go())
    for origin, reason in totals.failed:
        click.echo(f"failed: {origin}: {reason}", err=True)
    click.echo(
        f"imported {totals.imported}, not newer than stored {totals.not_newer}, "
        f"failed {len(totals.failed)}"
    )
    if totals.failed:
        raise SystemExit(1)
