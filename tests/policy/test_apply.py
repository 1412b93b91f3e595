"""``apply_policy``: a policy file applied in one transaction, idempotent, revoking on removal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import create_account, get_account
from resolver.audit.service import Actor
from resolver.config import Settings
from resolver.db.models import (
    Account,
    AccountSigningKey,
    AuditEntry,
    Binding,
    Group,
    GroupMember,
    IssuedUserKey,
    PushOutbox,
    Revocation,
    Role,
    User,
)
from resolver.errors import ConflictError, NotFoundError, ValidationError
from resolver.natsjwt import decode
from resolver.policy.apply import apply_policy
from resolver.policy.document import parse_policy
from resolver.policy.plan import PolicyPlan, export_policy, plan_policy
from resolver.policy.user_creds import issue_person_creds
from resolver.sealing import Sealer
from tests.accounts.conftest import operator, sealer, sessions  # noqa: F401  (fixtures)

ADMIN = Actor("test-admin")
EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "policy.example.yaml"

POLICY = """
accounts:
  ORDERS: {description: Orders}
roles:
  reader: {subscribe: ["orders.>"]}
  writer: {publish: ["orders.>"]}
bindings:
  - {group: Readers, account: ORDERS, role: reader}
  - {group: Writers, account: ORDERS, role: writer}
"""


@pytest.fixture
def apply(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings, operator: Any
) -> Any:
    async def go(text: str, *, prune_accounts: bool = False) -> tuple[PolicyPlan, list[str]]:
        lines: list[str] = []
        async with sessions() as session, session.begin():
            plan = await apply_policy(
                session,
                sealer,
                settings,
                parse_policy(text),
                actor=ADMIN,
                prune_accounts=prune_accounts,
                progress=lines.append,
            )
        return plan, lines

    return go


async def snapshot(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """What an apply that changes nothing must leave exactly as it was."""
    async with sessions() as session:
        return {
            "outbox": await session.scalar(select(func.count()).select_from(PushOutbox)),
            "jti": dict((await session.execute(select(Account.name, Account.jti))).all()),
            "roles": dict((await session.execute(select(Role.name, Role.spec))).all()),
            "bindings": (
                await session.execute(
                    select(Binding.id, Binding.group_name, Binding.ends_at).order_by(Binding.id)
                )
            ).all(),
            "audit": await session.scalar(select(func.count()).select_from(AuditEntry)),
            "revocations": await session.scalar(select(func.count()).select_from(Revocation)),
        }


async def outbox_count(sessions: async_sessionmaker[AsyncSession], account: str) -> int:
    async with sessions() as session:
        key = await session.scalar(select(Account.public_key).where(Account.name == account))
        return int(
            await session.scalar(
                select(func.count()).select_from(PushOutbox).where(PushOutbox.account_key == key)
            )
            or 0
        )


async def add_member(
    sessions: async_sessionmaker[AsyncSession], user_name: str, group_name: str
) -> str:
    """A SCIM user in a SCIM group (both created when missing); the user's id."""
    async with sessions() as session, session.begin():
        user = await session.scalar(select(User).where(User.user_name_key == user_name.casefold()))
        if user is None:
            user = User(user_name=user_name, user_name_key=user_name.casefold(), active=True)
            session.add(user)
        group = await session.scalar(
            select(Group).where(Group.display_name_key == group_name.casefold())
        )
        if group is None:
            group = Group(display_name=group_name, display_name_key=group_name.casefold())
            session.add(group)
        await session.flush()
        session.add(GroupMember(group_id=group.id, user_id=user.id))
        return user.id


async def issue(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account: str,
    user: str,
) -> Any:
    async with sessions() as session, session.begin():
        target = await get_account(session, account)
        return await issue_person_creds(
            session, sealer, settings, target, user, ttl_seconds=600, actor=ADMIN
        )


async def test_example_applies_cleanly_and_twice_is_a_no_op(
    apply: Any, sessions: async_sessionmaker[AsyncSession]
) -> None:
    plan, lines = await apply(EXAMPLE.read_text())
    assert [str(c) for c in plan.changes][:3] == [
        "+ account ORDERS",
        "+ role orders-reader",
        "+ role orders-writer",
    ]
    assert lines[0] == "creating account ORDERS" and lines[-1].startswith("applied: changes 7")
    async with sessions() as session:
        orders = await get_account(session, "ORDERS")
        assert orders.spec["limits"]["conn"] == 500
        assert decode(orders.jwt or "").claims["nats"]["limits"]["conn"] == 500
        bindings = list(await session.scalars(select(Binding).order_by(Binding.id)))
        assert len(bindings) == 4
        assert [b.claim_value for b in bindings if b.claim_name] == ["orders.ci"]
        summary = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "policy.apply")
        )
        assert summary is not None and summary.actor == "test-admin"
        assert summary.details["accounts_created"] == 1
        assert summary.details["roles_created"] == 2
        assert summary.details["bindings_created"] == 4
        actions = set(await session.scalars(select(AuditEntry.action)))
        assert {"account.create", "policy.role.create", "policy.binding.create"} <= actions

    before = await snapshot(sessions)
    plan, lines = await apply(EXAMPLE.read_text())
    assert plan.empty and lines == []
    assert await snapshot(sessions) == before

    # What export prints applies as "no changes" too.
    async with sessions() as session:
        exported = (await export_policy(session)).to_yaml()
        again = await plan_policy(session, parse_policy(exported))
    assert again.empty, again.render()


async def test_dry_run_plan_changes_nothing(
    apply: Any, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await apply(POLICY)
    before = await snapshot(sessions)
    async with sessions() as session:
        plan = await plan_policy(session, parse_policy(EXAMPLE.read_text()), prune_accounts=True)
    assert not plan.empty
    assert "- binding group 'Readers' -> ORDERS/reader" in plan.render()
    assert await snapshot(sessions) == before


async def test_bad_file_is_refused_and_nothing_changes(
    apply: Any, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await apply(POLICY)
    before = await snapshot(sessions)
    with pytest.raises(ValidationError, match=r"bindings\[0\]\.role: 'nope' is not declared"):
        await apply(POLICY.replace("role: reader}", "role: nope}"))
    # Valid YAML that fails half-way (an unknown SCIM group id) rolls everything back.
    failing = POLICY.replace("ORDERS: {description: Orders}", "ORDERS: {description: New}")
    failing = failing.replace(
        "role: writer}", "role: writer}\n  - {group: Ops, account: ORDERS, role: ops}"
    )
    failing = failing.replace("roles:\n", "roles:\n  ops: {publish: [ops.>]}\n") + (
        "  - {group_id: 00000000-0000-0000-0000-000000000000, account: ORDERS, role: reader}\n"
    )
    with pytest.raises(NotFoundError, match="no group with id"):
        await apply(failing)
    assert await snapshot(sessions) == before


async def test_removing_a_binding_revokes_members_who_lose_access(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    await add_member(sessions, "alice", "Writers")
    bob = await add_member(sessions, "bob", "Writers")
    await add_member(sessions, "bob", "Readers")
    alice_creds = await issue(sessions, sealer, settings, "ORDERS", "alice")
    reader_creds = await issue(sessions, sealer, settings, "ORDERS", "bob")
    pushes = await outbox_count(sessions, "ORDERS")

    plan, lines = await apply(
        POLICY.replace("  - {group: Writers, account: ORDERS, role: writer}\n", "")
    )
    assert [str(c) for c in plan.changes] == ["- binding group 'Writers' -> ORDERS/writer"]
    assert "revoking the credentials of members who lost access" in lines
    async with sessions() as session:
        orders = await get_account(session, "ORDERS")
        revoked = set(
            await session.scalars(
                select(Revocation.public_key).where(Revocation.account_id == orders.id)
            )
        )
        # Alice lost the account; Bob lost the writer role his key was signed for.
        assert revoked == {alice_creds.issued.public_key, reader_creds.issued.public_key}
        claims = decode(orders.jwt or "").claims["nats"]
        assert alice_creds.issued.public_key in claims["revocations"]
        revoked_at = await session.scalar(
            select(IssuedUserKey.revoked_at).where(
                IssuedUserKey.public_key == alice_creds.issued.public_key
            )
        )
        assert revoked_at is not None
        assert await session.scalar(select(func.count()).select_from(Binding)) == 1
        assert bob in set(await session.scalars(select(GroupMember.user_id)))
    assert await outbox_count(sessions, "ORDERS") == pushes + 1  # re-signed once


async def test_role_edit_resigns_the_account_once_with_new_templates(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    await add_member(sessions, "alice", "Writers")
    await add_member(sessions, "bob", "Readers")
    alice = await issue(sessions, sealer, settings, "ORDERS", "alice")
    await issue(sessions, sealer, settings, "ORDERS", "bob")
    async with sessions() as session:
        jti = (await get_account(session, "ORDERS")).jti
    pushes = await outbox_count(sessions, "ORDERS")

    edited = POLICY.replace('publish: ["orders.>"]', 'publish: ["orders.eu.>"]').replace(
        'subscribe: ["orders.>"]', 'subscribe: ["orders.eu.>"]'
    )
    plan, lines = await apply(edited)
    assert [str(c) for c in plan.changes] == ["~ role reader", "~ role writer"]
    assert "re-signing 1 account JWT(s)" in lines
    assert await outbox_count(sessions, "ORDERS") == pushes + 1  # two roles, one re-sign
    async with sessions() as session:
        orders = await get_account(session, "ORDERS")
        assert orders.jti != jti
        key = await session.scalar(
            select(AccountSigningKey).where(
                AccountSigningKey.public_key == alice.issued.signing_key
            )
        )
        assert key is not None
        assert key.template["pub"]["allow"] == ["orders.eu.>"]
        scoped = decode(orders.jwt or "").claims["nats"]["signing_keys"]
        served = next(k for k in scoped if isinstance(k, dict) and k["key"] == key.public_key)
        assert served["template"]["pub"]["allow"] == ["orders.eu.>"]
        # A role edit changes what keys grant; it revokes nobody.
        assert await session.scalar(select(func.count()).select_from(Revocation)) == 0
        update = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "policy.role.update", AuditEntry.target == "writer"
            )
        )
        assert update is not None and update.details["after"]["publish"] == {
            "allow": ["orders.eu.>"]
        }

    before = await snapshot(sessions)
    assert (await apply(edited))[0].empty
    assert await snapshot(sessions) == before


async def test_removed_role_retires_its_key_and_until_moves(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    await add_member(sessions, "alice", "Writers")
    alice = await issue(sessions, sealer, settings, "ORDERS", "alice")
    pushes = await outbox_count(sessions, "ORDERS")
    text = (
        POLICY.replace('  writer: {publish: ["orders.>"]}\n', "")
        .replace("  - {group: Writers, account: ORDERS, role: writer}\n", "")
        .replace("role: reader}", 'role: reader, until: "2099-01-01T00:00:00Z"}')
    )
    plan, _ = await apply(text)
    assert sorted(str(c) for c in plan.changes) == [
        "- binding group 'Writers' -> ORDERS/writer",
        "- role writer",
        "~ binding group 'Readers' -> ORDERS/reader: until 2099-01-01 00:00:00+00:00",
    ]
    assert await outbox_count(sessions, "ORDERS") == pushes + 1
    async with sessions() as session:
        assert await session.scalar(select(Role.id).where(Role.name == "writer")) is None
        key = await session.scalar(
            select(AccountSigningKey).where(
                AccountSigningKey.public_key == alice.issued.signing_key
            )
        )
        assert key is not None
        assert key.retired_at is not None
        orders = await get_account(session, "ORDERS")
        claims = decode(orders.jwt or "").claims["nats"]
        assert key.public_key not in [
            k["key"] if isinstance(k, dict) else k for k in claims.get("signing_keys", [])
        ]
        assert alice.issued.public_key in claims["revocations"]
        ends = await session.scalar(select(Binding.ends_at))
        assert ends is not None and ends.year == 2099


async def test_accounts_are_pruned_only_when_asked(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    async with sessions() as session, session.begin():
        await create_account(session, sealer, settings, name="LEGACY", actor=ADMIN)
    plan, _ = await apply(POLICY.replace("description: Orders", "description: Orders v2"))
    assert [str(c) for c in plan.changes] == ["~ account ORDERS: description"]
    async with sessions() as session:
        orders = await get_account(session, "ORDERS")
        assert orders.spec == {"description": "Orders v2"}
        await get_account(session, "LEGACY")

    plan, _ = await apply(POLICY, prune_accounts=True)
    assert "- account LEGACY: locks every user out" in [str(c) for c in plan.changes]
    async with sessions() as session:
        with pytest.raises(NotFoundError):
            await get_account(session, "LEGACY")
        system = await session.scalar(select(Account).where(Account.is_system.is_(True)))
        assert system is not None and system.deleted_at is None
        summary = await session.scalar(
            select(AuditEntry)
            .where(AuditEntry.action == "policy.apply")
            .order_by(AuditEntry.id.desc())
        )
        assert summary is not None and summary.details["accounts_removed"] == 1


async def test_account_and_role_change_together_sign_the_account_once(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    await add_member(sessions, "alice", "Writers")
    alice = await issue(sessions, sealer, settings, "ORDERS", "alice")
    pushes = await outbox_count(sessions, "ORDERS")
    edited = POLICY.replace("description: Orders", "description: Orders v2").replace(
        'publish: ["orders.>"]', 'publish: ["orders.us.>"]'
    )
    plan, _ = await apply(edited)
    assert [str(c) for c in plan.changes] == ["~ account ORDERS: description", "~ role writer"]
    assert await outbox_count(sessions, "ORDERS") == pushes + 1
    async with sessions() as session:
        orders = await get_account(session, "ORDERS")
        claims = decode(orders.jwt or "").claims
        assert claims["nats"]["description"] == "Orders v2"
        served = [
            k for k in claims["nats"]["signing_keys"] if isinstance(k, dict)
            and k["key"] == alice.issued.signing_key
        ]  # fmt: skip
        assert served[0]["template"]["pub"]["allow"] == ["orders.us.>"]


async def test_files_the_apply_could_not_carry_out_are_refused_up_front(
    apply: Any, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await apply(POLICY)
    before = await snapshot(sessions)
    refusals = [
        # The system account is the service's own; a file cannot take it over.
        (POLICY.replace("accounts:\n", "accounts:\n  SYS: {}\n"), {}, "the system account"),
        # No accounts section: a binding must name an account that is already here.
        (
            "roles: {reader: {}}\nbindings:\n  - {group: G, account: NOPE, role: reader}\n",
            {},
            r"bindings\[0\]\.account: 'NOPE' is not an account",
        ),
        # Pruning against a file that declares no account would delete them all.
        ("roles: {reader: {}}\n", {"prune_accounts": True}, "declares no accounts"),
    ]
    for text, options, message in refusals:
        async with sessions() as session:
            with pytest.raises((ValidationError, ConflictError), match=message):
                await plan_policy(session, parse_policy(text), **options)
        with pytest.raises((ValidationError, ConflictError), match=message):
            await apply(text, **options)
    assert await snapshot(sessions) == before
    # A binding to an account stored here but left out of a file without accounts is fine.
    plan, _ = await apply(
        "roles: {reader: {}}\nbindings:\n  - {group: G, account: ORDERS, role: reader}\n"
    )
    assert "+ binding group 'G' -> ORDERS/reader" in [str(c) for c in plan.changes]


async def test_a_declared_binding_that_already_ended_is_kept_and_grants_nothing(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    text = POLICY.replace("role: writer}", 'role: writer, until: "2020-01-01T00:00:00Z"}')
    plan, _ = await apply(text)
    assert (
        "+ binding group 'Writers' -> ORDERS/writer: already ended 2020-01-01 00:00:00+00:00"
        in [str(c) for c in plan.changes]
    )
    await add_member(sessions, "alice", "Writers")
    with pytest.raises(ConflictError, match="no binding"):
        await issue(sessions, sealer, settings, "ORDERS", "alice")
    before = await snapshot(sessions)
    assert (await apply(text))[0].empty
    assert await snapshot(sessions) == before


async def test_ending_a_binding_and_changing_the_account_sign_it_once(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    await add_member(sessions, "alice", "Writers")
    await add_member(sessions, "bob", "Readers")
    alice = await issue(sessions, sealer, settings, "ORDERS", "alice")
    bob = await issue(sessions, sealer, settings, "ORDERS", "bob")
    pushes = await outbox_count(sessions, "ORDERS")

    text = POLICY.replace("description: Orders", "description: Orders v2").replace(
        "role: writer}", 'role: writer, until: "2020-01-01T00:00:00Z"}'
    )
    async with sessions() as session:
        planned = await plan_policy(session, parse_policy(text))
    assert planned.resign == {"ORDERS"} and planned.may_resign == {"ORDERS"}
    plan, lines = await apply(text)
    assert [str(c) for c in plan.changes] == [
        "~ account ORDERS: description",
        "~ binding group 'Writers' -> ORDERS/writer: until 2020-01-01 00:00:00+00:00",
    ]
    assert "revoking the credentials of members who lost access" in lines
    # The spec change and the revocation went out in one new account JWT.
    assert await outbox_count(sessions, "ORDERS") == pushes + 1
    async with sessions() as session:
        orders = await get_account(session, "ORDERS")
        claims = decode(orders.jwt or "").claims["nats"]
        assert claims["description"] == "Orders v2"
        assert alice.issued.public_key in claims["revocations"]
        assert bob.issued.public_key not in claims["revocations"]
        binding = await session.scalar(select(Binding).where(Binding.group_name == "Writers"))
        assert binding is not None and binding.lapsed_at is not None
    before = await snapshot(sessions)
    assert (await apply(text))[0].empty
    assert await snapshot(sessions) == before


async def test_the_plan_names_only_the_accounts_that_change(
    apply: Any, sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await apply(POLICY)
    await add_member(sessions, "alice", "Writers")
    await issue(sessions, sealer, settings, "ORDERS", "alice")
    pushes = await outbox_count(sessions, "ORDERS")
    # A description and a later end: nothing any JWT carries.
    text = POLICY.replace(
        'writer: {publish: ["orders.>"]}',
        'writer: {publish: ["orders.>"], description: Writes orders}',
    ).replace("role: writer}", 'role: writer, until: "2099-01-01T00:00:00Z"}')
    async with sessions() as session:
        planned = await plan_policy(session, parse_policy(text))
    assert len(planned.changes) == 2
    assert planned.resign == set() and planned.may_resign == set()
    assert "re-sign" not in planned.render()
    await apply(text)
    assert await outbox_count(sessions, "ORDERS") == pushes

    # A subject change reaches alice's scoped key: ORDERS is named, and re-signed once.
    edited = text.replace('publish: ["orders.>"]', 'publish: ["orders.eu.>"]')
    async with sessions() as session:
        planned = await plan_policy(session, parse_policy(edited))
    assert planned.resign == {"ORDERS"}
    assert "account JWTs to re-sign: ORDERS" in planned.render()
    await apply(edited)
    assert await outbox_count(sessions, "ORDERS") == pushes + 1
