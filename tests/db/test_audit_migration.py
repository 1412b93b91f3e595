"""Migration 0010 fills ``user_name``/``account_key`` of audit rows written before it."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from resolver.config import Settings
from resolver.db import migrate
from resolver.db.engine import create_engine
from resolver.natsjwt import new_keypair

OLD_LOG = sa.table(
    "audit_log",
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("target", sa.String),
    sa.column("details", sa.JSON),
)


async def test_rows_from_before_the_columns_are_filled(settings: Settings) -> None:
    account = new_keypair("account")[0]
    old = [
        ("alice", "credentials.issue", account, {"via": "token"}),
        ("okta", "scim.user.create", "u-1", {"userName": "Bob"}),
        ("okta", "scim.user.patch", "u-1", {"userName": "Bob"}),
        ("admin", "policy.user.issue", account, {"user": "carol"}),
        ("admin", "account.user.issue", account, {"name": "batch"}),
        ("admin", "account.update", account, {"name": "ORDERS"}),
        ("okta", "scim.group.create", "g-1", {"displayName": "eng"}),
        ("admin", "policy.role.create", "writer", {}),
        # Not a key: left alone.
        ("admin", "account.create", "not-a-key", {}),
    ]
    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, "0009")
        async with engine.begin() as conn:
            await conn.execute(
                OLD_LOG.insert(),
                [
                    {
                        "at": datetime(2026, 1, 1, tzinfo=UTC),
                        "actor": actor,
                        "action": action,
                        "target": target,
                        "details": details,
                    }
                    for actor, action, target, details in old
                ],
            )
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text("SELECT action, user_name, account_key FROM audit_log ORDER BY id")
                )
            ).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [
        ("credentials.issue", "alice", account),
        ("scim.user.create", "Bob", None),
        ("scim.user.patch", "Bob", None),
        ("policy.user.issue", "carol", account),
        ("account.user.issue", "batch", account),
        ("account.update", None, account),
        ("scim.group.create", None, None),
        ("policy.role.create", None, None),
        ("account.create", None, None),
    ]
