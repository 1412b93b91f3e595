"""``nats-iam-resolver rotate`` and ``reconcile`` through the CLI (NATS off: nothing to ask)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from resolver.db.models import AuditEntry, Operator
from resolver.natsjwt import decode
from tests.test_cli_policy import fails, invoke, query, state

SEED_SHAPED = re.compile(r"\bS[A-Z][A-Z2-7]{56}\b")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RESOLVER_NATS_ENABLED", "false")
    data_dir = tmp_path / "data"
    invoke("init", "--data-dir", str(data_dir))
    path = str(data_dir / "resolver.toml")
    invoke("account", "create", "ORDERS", "--config", path)
    return path


def operator_keys(config: str) -> list[str]:
    async def fn(session: Any) -> list[str]:
        token = await session.scalar(select(Operator.jwt))
        return list(decode(token).claims["nats"]["signing_keys"])

    return query(config, fn)


def test_rotate_accounts_dry_run_then_for_real(config: str) -> None:
    assert "say what to rotate" in fails("rotate", "--config", config, code=2)
    assert "--revoke-old applies" in fails("rotate", "--operator", "--revoke-old", code=2)
    before = state(config)
    out = invoke("rotate", "--accounts", "--dry-run", "--config", config)
    assert "would rotate 1 key(s) of account ORDERS" in out
    assert "skipped SYS" in out and "dry run" in out
    assert state(config) == before

    out = invoke("rotate", "--accounts", "--config", config)
    assert "rotating the signing keys of 1 account(s)" in out and "1/1 account(s)" in out
    assert "rotated 1 signing key(s) in 1 account(s)" in out
    jtis, pushes = state(config)
    assert jtis["ORDERS"] != before[0]["ORDERS"] and pushes == before[1] + 1

    assert "no account 'NOPE'" in fails("rotate", "--account", "NOPE", "--config", config)
    assert "not rotated: the system account" in fails(
        "rotate", "--account", "SYS", "--config", config
    )
    assert state(config) == (jtis, pushes)


def test_rotate_operator_needs_the_servers_word_or_force(config: str) -> None:
    active, upcoming = operator_keys(config)
    out = fails("rotate", "--operator", "--config", config)
    assert "cannot ask the nats-servers" in out and "--force" in out
    assert operator_keys(config) == [active, upcoming]

    out = invoke("rotate", "--operator", "--force", "--config", config)
    assert f"active signing key {upcoming} (was {active})" in out
    assert "2 account JWT(s) re-signed" in out
    assert "before the next operator key rotation" in out
    promoted, new_next = operator_keys(config)
    assert promoted == upcoming and new_next not in (active, upcoming)
    # `nats-config` prints the operator JWT to deploy: it lists the new keys.
    conf = invoke("nats-config", "--config", config)
    token = re.search(r"^operator: (\S+)$", conf, re.M)
    assert token is not None
    assert decode(token.group(1)).claims["nats"]["signing_keys"] == [upcoming, new_next]

    async def rows(session: Any) -> list[AuditEntry]:
        return list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action.like("operator.signing_key.%"))
            )
        )

    [audit] = query(config, rows)
    assert audit.actor == "admin" and not SEED_SHAPED.search(str(audit.details))


def test_reconcile_without_nats_requeues_every_account(config: str) -> None:
    _, pushes = state(config)
    out = invoke("reconcile", "--config", config)
    assert "NATS not reachable" in out
    assert "reconciled 2 account(s)" in out and "servers not asked" in out
    # ORDERS' row from `account create` is still pending (no service ran): left as it is;
    # the system account (signed by `init`, never pushed) is queued.
    assert "1 re-queued for push, 1 already pending" in out
    assert state(config)[1] == pushes + 1
    assert "0 re-queued for push, 2 already pending" in invoke("reconcile", "--config", config)
    assert state(config)[1] == pushes + 1
