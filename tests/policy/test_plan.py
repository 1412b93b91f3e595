from __future__ import annotations

from datetime import UTC, datetime

import nacl.utils
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.accounts.operator import create_operator
from resolver.db.engine import create_sessionmaker
from resolver.db.models import Account, AccountSigningKey, Binding, Role
from resolver.natsjwt import new_keypair
from resolver.policy.document import parse_policy
from resolver.policy.plan import export_policy, plan_policy
from resolver.sealing import Sealer

POLICY = """
accounts:
  ORDERS: {description: Orders}
  BILLING: {}
roles:
  reader: {subscribe: ["orders.>"]}
  writer: {publish: ["orders.>"]}
bindings:
  - {group: NATS Readers, account: ORDERS, role: reader}
  - {group: NATS Writers, account: ORDERS, role: writer, until: "2030-01-01T00:00:00Z"}
"""


async def test_plan_against_stored_state(engine: AsyncEngine) -> None:
    sealer = Sealer(nacl.utils.random(32))
    async with create_sessionmaker(engine)() as session, session.begin():
        operator = await create_operator(
            session, sealer, name="op", account_server_url="http://x/jwt/v1", account_jwt_ttl=3600
        )
        orders = Account(
            operator_id=operator.id,
            name="ORDERS",
            public_key=new_keypair("account")[0],
            seed_sealed=sealer.seal(b"x"),
            spec={"description": "Old"},
        )
        legacy = Account(
            operator_id=operator.id,
            name="LEGACY",
            public_key=new_keypair("account")[0],
            seed_sealed=sealer.seal(b"x"),
            spec={},
        )
        reader = Role(name="reader", spec={"subscribe": ["orders.>"]})
        writer = Role(name="writer", spec={"publish": ["orders.eu.>"]})
        gone = Role(name="gone", spec={})
        session.add_all([orders, legacy, reader, writer, gone])
        await session.flush()
        session.add_all(
            [
                Binding(
                    account_id=orders.id,
                    role_id=reader.id,
                    group_name="NATS readers",
                    group_name_key="nats readers",
                ),
                Binding(
                    account_id=orders.id, role_id=gone.id, group_name="Old", group_name_key="old"
                ),
                AccountSigningKey(
                    account_id=legacy.id,
                    public_key=new_keypair("account")[0],
                    seed_sealed=b"x",
                    role_set="gone,reader",
                    template={},
                ),
            ]
        )
        await session.flush()

        plan = await plan_policy(session, parse_policy(POLICY))
        lines = [str(c) for c in plan.changes]
        assert lines == [
            "+ account BILLING",
            "~ account ORDERS: description",
            "~ role writer",
            "- role gone",
            "+ binding group 'NATS Writers' -> ORDERS/writer",
            "- binding group 'Old' -> ORDERS/gone",
        ]
        # The reader binding matched although the file spells the group with capitals.
        assert plan.resign == {"BILLING", "ORDERS", "LEGACY"}
        assert "LEGACY" not in plan.render().split("re-sign")[0]  # not removed without prune
        pruned = await plan_policy(session, parse_policy(POLICY), prune_accounts=True)
        assert "- account LEGACY: locks every user out" in [str(c) for c in pruned.changes]

        # Exporting the stored state and planning it back is a no-op.
        exported = await export_policy(session)
        again = await plan_policy(session, parse_policy(exported.to_yaml()))
        assert again.empty, again.render()
        assert "No changes" in again.render()
        assert exported.bindings[0].until is None
        assert datetime(2030, 1, 1, tzinfo=UTC) == parse_policy(POLICY).bindings[1].until
