"""The account, role, binding and policy commands, and ``user-creds --user``, through the CLI."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from resolver.cli import cli, cli_session, settings_from
from resolver.db.models import Account, Group, GroupMember, PushOutbox, User
from resolver.natsjwt import decode, parse_creds

EXAMPLE = Path(__file__).resolve().parents[1] / "conf" / "policy.example.yaml"


@pytest.fixture
def config(tmp_path: Path) -> str:
    data_dir = tmp_path / "data"
    invoke("init", "--data-dir", str(data_dir))
    return str(data_dir / "resolver.toml")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str, code: int = 1) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def query(config: str, fn: Any) -> Any:
    """Run ``fn(session)`` against the data directory's database, committing."""

    async def go() -> Any:
        async with cli_session(settings_from(Path(config))) as session, session.begin():
            return await fn(session)

    return asyncio.run(go())


def state(config: str) -> tuple[Any, ...]:
    async def fn(session: Any) -> tuple[Any, ...]:
        jtis = dict((await session.execute(select(Account.name, Account.jti))).all())
        pushes = await session.scalar(select(func.count()).select_from(PushOutbox))
        return jtis, pushes

    return query(config, fn)


def add_member(config: str, user_name: str, group_name: str | None, *, active: bool = True) -> str:
    async def fn(session: Any) -> str:
        user = User(user_name=user_name, user_name_key=user_name.casefold(), active=active)
        session.add(user)
        await session.flush()
        if group_name is not None:
            group = await session.scalar(
                select(Group).where(Group.display_name_key == group_name.casefold())
            )
            if group is None:
                group = Group(display_name=group_name, display_name_key=group_name.casefold())
                session.add(group)
                await session.flush()
            session.add(GroupMember(group_id=group.id, user_id=user.id))
        return user.id

    return query(config, fn)


def test_policy_apply_dry_run_then_apply_then_nothing(config: str, tmp_path: Path) -> None:
    before = state(config)
    out = invoke("policy", "apply", str(EXAMPLE), "--config", config, "--dry-run")
    assert "+ account ORDERS" in out and "+ role orders-writer" in out
    assert "7 to create, 0 to change, 0 to remove" in out
    assert state(config) == before
    assert "ORDERS" not in invoke("account", "list", "--config", config)

    out = invoke("policy", "apply", str(EXAMPLE), "--config", config)
    assert "+ account ORDERS" in out
    assert "creating account ORDERS" in out and "creating role orders-reader" in out
    assert "applied: changes 7" in out and "committed" in out
    assert "ORDERS" in invoke("account", "list", "--config", config)
    applied = state(config)

    out = invoke("policy", "apply", str(EXAMPLE), "--config", config)
    assert out.strip() == "No changes: the stored state matches the policy file."
    assert state(config) == applied

    exported = tmp_path / "exported.yaml"
    assert "wrote" in invoke("policy", "export", "--config", config, "-o", str(exported))
    assert "orders-writer" in exported.read_text()
    assert invoke("policy", "export", "--config", config) == exported.read_text()
    out = invoke("policy", "apply", str(exported), "--config", config, "--dry-run")
    assert out.startswith("No changes")

    # Pruning: an account absent from the file goes only with --prune-accounts.
    invoke("account", "create", "LEGACY", "--config", config)
    assert "No changes" in invoke("policy", "apply", str(EXAMPLE), "--config", config)
    out = invoke("policy", "apply", str(EXAMPLE), "--config", config, "--prune-accounts")
    assert "- account LEGACY" in out and "removing account LEGACY" in out
    assert "LEGACY" not in invoke("account", "list", "--config", config)


def test_bad_policy_file_is_one_line_and_changes_nothing(config: str, tmp_path: Path) -> None:
    before = state(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("role: orders-reader\n", "role: readers\n", 1))
    out = fails("policy", "apply", str(bad), "--config", config)
    assert out.strip() == "error: bindings[1].role: 'readers' is not declared under roles"
    bad.write_text("accounts: [\n")
    out = fails("policy", "apply", str(bad), "--config", config)
    assert out.startswith("error: the policy file is not valid YAML")
    assert state(config) == before


def test_account_role_and_binding_commands(config: str, tmp_path: Path) -> None:
    invoke("account", "create", "ORDERS", "--config", config)
    spec = tmp_path / "spec.yaml"
    spec.write_text("description: Orders\nlimits: {conn: 10}\n")
    assert "updated account ORDERS" in invoke(
        "account", "update", "ORDERS", "--spec", str(spec), "--config", config
    )
    assert "nothing changed" in invoke(
        "account", "update", "ORDERS", "--spec", str(spec), "--config", config
    )

    role_file = tmp_path / "role.yaml"
    role_file.write_text('description: Reads orders\nsubscribe: ["orders.>"]\n')
    assert "created role reader" in invoke(
        "role", "create", "reader", "--file", str(role_file), "--config", config
    )
    assert "already exists" in fails(
        "role", "create", "reader", "--file", str(role_file), "--config", config
    )
    assert invoke("role", "list", "--config", config) == "reader\tReads orders\n"
    shown = invoke("role", "show", "reader", "--config", config)
    assert "description: Reads orders" in shown and "orders.>" in shown
    role_file.write_text('subscribe: ["orders.eu.>"]\n')
    assert "updated role reader (0 account JWT(s) re-signed)" in invoke(
        "role", "update", "reader", "--file", str(role_file), "--config", config
    )
    assert "orders.eu.>" in invoke("role", "show", "reader", "--config", config)

    group_id = query(config, lambda s: _group(s, "Readers"))
    out = invoke(
        "binding", "create", "--account", "ORDERS", "--role", "reader", "--group", "Readers",
        "--config", config,
    )  # fmt: skip
    assert out.startswith("created binding 1: group 'Readers' -> ORDERS/reader")
    invoke(
        "binding", "create", "--account", "ORDERS", "--role", "reader", "--group-id", group_id,
        "--until", "2099-01-01T00:00:00Z", "--config", config,
    )  # fmt: skip
    invoke(
        "binding", "create", "--account", "ORDERS", "--role", "reader",
        "--claim", "roles=orders.ci", "--config", config,
    )  # fmt: skip
    assert "give exactly one of" in fails(
        "binding", "create", "--account", "ORDERS", "--role", "reader", "--config", config,
        code=2,
    )  # fmt: skip
    assert "time zone" in fails(
        "binding", "create", "--account", "ORDERS", "--role", "reader", "--group", "X",
        "--until", "2099-01-01T00:00:00", "--config", config,
    )  # fmt: skip
    listing = invoke("binding", "list", "--account", "ORDERS", "--config", config)
    assert listing.splitlines() == [
        "1\tORDERS\treader\tgroup Readers\t-",
        f"2\tORDERS\treader\tgroup-id {group_id} (Readers)\t2099-01-01T00:00:00+00:00",
        "3\tORDERS\treader\tclaim roles=orders.ci\t-",
    ]
    assert "used by binding(s) 1, 2, 3" in fails("role", "delete", "reader", "--config", config)
    for binding_id in ("1", "2", "3"):
        assert f"deleted binding {binding_id}" in invoke(
            "binding", "delete", binding_id, "--config", config
        )
    assert "no binding 1" in fails("binding", "delete", "1", "--config", config)
    assert invoke("binding", "list", "--config", config) == ""
    assert "deleted role reader" in invoke("role", "delete", "reader", "--config", config)
    assert "no role named 'reader'" in fails("role", "show", "reader", "--config", config)

    assert "--yes" in fails("account", "delete", "ORDERS", "--config", config, code=2)
    assert "ORDERS" in invoke("account", "list", "--config", config)
    assert "deleted account ORDERS" in invoke(
        "account", "delete", "ORDERS", "--yes", "--config", config
    )
    assert "ORDERS" not in invoke("account", "list", "--config", config)


async def _group(session: Any, name: str) -> str:
    group = Group(display_name=name, display_name_key=name.casefold())
    session.add(group)
    await session.flush()
    return group.id


def test_user_creds_for_a_person(config: str, tmp_path: Path) -> None:
    invoke("policy", "apply", str(EXAMPLE), "--config", config)
    add_member(config, "alice", "NATS Orders Writers")
    add_member(config, "nobody", None)
    add_member(config, "gone", "NATS Orders Writers", active=False)
    out_file = tmp_path / "alice.creds"

    out = fails("user-creds", "--account", "ORDERS", "--user", "nobody", "--config", config)
    assert out.strip() == (
        "error: user 'nobody' has no binding to account 'ORDERS': "
        "none of their groups is bound to it"
    )
    assert "inactive" in fails(
        "user-creds", "--account", "ORDERS", "--user", "gone", "--config", config
    )
    assert "exactly one of --name" in fails(
        "user-creds", "--account", "ORDERS", "--user", "alice", "--name", "x", "--config", config,
        code=2,
    )  # fmt: skip
    assert "exactly one of --name" in fails(
        "user-creds", "--account", "ORDERS", "--config", config, code=2
    )

    jti_before = state(config)[0]["ORDERS"]
    out = invoke(
        "user-creds", "--account", "ORDERS", "--user", "alice", "--ttl", "30m",
        "--out", str(out_file), "--config", config,
    )  # fmt: skip
    assert f"wrote {out_file} (account ORDERS, user alice" in out
    assert "roles orders-writer" in out
    assert "note: a new scoped signing key was created" in out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    user_jwt, _ = parse_creds(out_file.read_text())
    claims = decode(user_jwt).claims
    assert claims["name"] == "alice" and claims["exp"] - claims["iat"] == 1800
    assert state(config)[0]["ORDERS"] != jti_before

    assert "exists" in fails(
        "user-creds", "--account", "ORDERS", "--user", "alice", "--out", str(out_file),
        "--config", config,
    )  # fmt: skip
    out = invoke(
        "user-creds", "--account", "ORDERS", "--user", "alice", "--out", str(out_file),
        "--force", "--config", config,
    )  # fmt: skip
    assert "note:" not in out  # the scoped key exists now

    # The workload branch still works (and still defaults to a 1 h lifetime).
    workload = tmp_path / "ci.creds"
    invoke(
        "user-creds", "--account", "ORDERS", "--name", "ci", "--out", str(workload),
        "--config", config,
    )  # fmt: skip
    claims = decode(parse_creds(workload.read_text())[0]).claims
    assert claims["exp"] - claims["iat"] == 3600


def test_binding_update_and_list_filters(config: str, tmp_path: Path) -> None:
    invoke("policy", "apply", str(EXAMPLE), "--config", config)
    add_member(config, "alice", "NATS Orders Readers")
    creds = tmp_path / "alice.creds"
    invoke(
        "user-creds", "--account", "ORDERS", "--user", "alice", "--out", str(creds),
        "--config", config,
    )  # fmt: skip
    user_key = decode(parse_creds(creds.read_text())[0]).subject
    listing = invoke("binding", "list", "--role", "orders-reader", "--config", config)
    rows = [line.split("\t") for line in listing.splitlines()]
    assert [row[3] for row in rows] == ["group NATS Orders Readers", "group Contractors"]
    only = invoke("binding", "list", "--group", "nats orders readers", "--config", config)
    assert len(only.splitlines()) == 1
    binding_id = only.split("\t")[0]
    assert "no role named" in fails("binding", "list", "--role", "nope", "--config", config)

    assert "exactly one of --until or --no-end" in fails(
        "binding", "update", binding_id, "--config", config, code=2
    )
    out = invoke(
        "binding", "update", binding_id, "--until", "2099-01-01T00:00:00Z", "--config", config
    )
    assert out.strip() == (
        f"binding {binding_id}: ends 2099-01-01T00:00:00+00:00 (0 account JWT(s) re-signed)"
    )
    # An end in the past is a removal from the group: alice's key is revoked at once.
    out = invoke(
        "binding", "update", binding_id, "--until", "2020-01-01T00:00:00Z", "--config", config
    )
    assert out.strip().endswith("(1 account JWT(s) re-signed)")

    async def revoked(session: Any) -> Any:
        orders = await session.scalar(select(Account).where(Account.name == "ORDERS"))
        return decode(orders.jwt).claims["nats"].get("revocations", {})

    assert user_key in query(config, revoked)
    out = invoke("binding", "update", binding_id, "--no-end", "--config", config)
    assert out.startswith(f"binding {binding_id}: ends none")
    # Back to what the file says (no end): the file and the store agree again.
    out = invoke("policy", "apply", str(EXAMPLE), "--config", config, "--dry-run")
    assert out.startswith("No changes")


@pytest.mark.parametrize(
    "command",
    [
        ["account", "update"],
        ["account", "delete"],
        ["role", "create"],
        ["role", "list"],
        ["binding", "create"],
        ["binding", "list"],
        ["binding", "update"],
        ["policy", "apply"],
        ["policy", "export"],
    ],
)
def test_every_new_command_has_help(command: list[str]) -> None:
    out = invoke(*command, "--help")
    assert "Usage:" in out and "--config" in out
