"""Grants from memberships and bindings, and scoped keys per role set, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import nacl.utils
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resolver.accounts.operator import create_operator
from resolver.accounts.signing import account_signing_keys
from resolver.db.engine import create_sessionmaker
from resolver.db.models import Account, Binding, Group, GroupMember, Role, User, utcnow
from resolver.natsjwt import new_keypair
from resolver.policy.access import members_reaching, role_sets, user_grants
from resolver.policy.roles import compile_template, parse_role
from resolver.policy.scoped_keys import refresh_templates, scoped_key_for
from resolver.sealing import Sealer

READER = {"subscribe": ["orders.>"]}
WRITER = {"publish": ["orders.>"]}


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(nacl.utils.random(32))


async def _world(session: AsyncSession, sealer: Sealer) -> dict[str, object]:
    operator = await create_operator(
        session, sealer, name="op", account_server_url="http://x/jwt/v1", account_jwt_ttl=3600
    )
    account = Account(
        operator_id=operator.id, name="ORDERS", public_key=new_keypair("account")[0], spec={}
    )
    reader = Role(name="reader", spec=READER)
    writer = Role(name="writer", spec=WRITER)
    alice = User(user_name="alice", user_name_key="alice", active=True)
    bob = User(user_name="bob", user_name_key="bob", active=True)
    g1 = Group(display_name="Readers", display_name_key="readers")
    g2 = Group(display_name="Writers", display_name_key="writers")
    session.add_all([account, reader, writer, alice, bob, g1, g2])
    await session.flush()
    session.add_all(
        [
            GroupMember(group_id=g1.id, user_id=alice.id),
            GroupMember(group_id=g2.id, user_id=alice.id),
            GroupMember(group_id=g1.id, user_id=bob.id),
            # By SCIM id, and by displayName (case-folded key), as a policy file would.
            Binding(account_id=account.id, role_id=reader.id, group_id=g1.id),
            Binding(account_id=account.id, role_id=writer.id, group_name_key="writers"),
        ]
    )
    await session.flush()
    return {"account": account, "alice": alice, "bob": bob, "g1": g1, "writer": writer}


async def test_grants_follow_memberships_and_bindings(engine: AsyncEngine, sealer: Sealer) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        w = await _world(session, sealer)
        account, alice, bob = w["account"], w["alice"], w["bob"]
        grants = await user_grants(session, alice.id)
        assert {(g.role, g.group_name) for g in grants} == {
            ("reader", "Readers"),
            ("writer", "Writers"),
        }
        assert role_sets(grants) == {account.id: frozenset({"reader", "writer"})}
        assert role_sets(await user_grants(session, bob.id)) == {account.id: frozenset({"reader"})}
        assert await members_reaching(session, account.id, [alice.id, bob.id]) == {
            alice.id,
            bob.id,
        }

        # Bob leaves Readers: he reaches the account no more; Alice still does via Writers.
        await session.delete(await session.get(GroupMember, (w["g1"].id, bob.id)))
        await session.delete(await session.get(GroupMember, (w["g1"].id, alice.id)))
        await session.flush()
        assert await members_reaching(session, account.id, [alice.id, bob.id]) == {alice.id}

        # A time-boxed binding that has ended grants nothing.
        for binding in (await session.execute(Binding.__table__.select())).all():
            if binding.group_name_key == "writers":
                row = await session.get(Binding, binding.id)
                row.ends_at = utcnow() - timedelta(seconds=1)
        await session.flush()
        assert await user_grants(session, alice.id) == []
        assert await members_reaching(session, account.id, [alice.id]) == set()


async def test_inactive_users_hold_nothing(engine: AsyncEngine, sealer: Sealer) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        w = await _world(session, sealer)
        w["alice"].active = False
        await session.flush()
        assert await user_grants(session, w["alice"].id) == []
        assert await members_reaching(session, w["account"].id, [w["alice"].id]) == set()


async def test_scoped_key_per_role_set(engine: AsyncEngine, sealer: Sealer) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        w = await _world(session, sealer)
        account = w["account"]
        key, created = await scoped_key_for(session, sealer, account, ["writer", "reader"])
        assert created and key.role_set == "reader,writer"
        expected = compile_template([parse_role("reader", READER), parse_role("writer", WRITER)])
        assert key.template == expected
        again, created = await scoped_key_for(session, sealer, account, {"reader", "writer"})
        assert again.id == key.id and not created
        only_reader, created = await scoped_key_for(session, sealer, account, ["reader"])
        assert created and only_reader.id != key.id

        # Editing a role recompiles the keys of every set containing it, and only those.
        assert await refresh_templates(session, "writer") == set()
        w["writer"].spec = {"publish": ["orders.eu.>"]}
        await session.flush()
        assert await refresh_templates(session, "writer") == {account.id}
        assert key.template["pub"] == {"allow": ["orders.eu.>"]}
        assert only_reader.template == compile_template([parse_role("reader", READER)])

        # Deleting a role retires the keys whose set contained it.
        await session.delete(w["writer"])
        await session.flush()
        assert await refresh_templates(session) == {account.id}
        assert key.retired_at is not None and only_reader.retired_at is None
        # ... and a retired key leaves the account JWT's signing keys.
        listed = await account_signing_keys(session, account)
        scoped = [k["key"] for k in listed if isinstance(k, dict)]
        assert scoped == [only_reader.public_key]
