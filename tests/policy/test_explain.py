"""Explain: the verdict and the sentence an operator reads, on SQLite and PostgreSQL.

Whether the verdicts match what nats-server does is checked in tests/e2e/test_roles_live.py
(and decide itself in test_roles_against_nats.py); here: which group, binding, role and rule
the answer names, in words, and that bad questions are refused before anything is looked up.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import create_account
from resolver.config import Settings
from resolver.db.models import Binding, Group, GroupMember, Role, User
from resolver.errors import NotFoundError, ValidationError
from resolver.policy.explain import explain
from resolver.sealing import Sealer
from tests.accounts.conftest import (  # noqa: F401  (fixtures)
    ADMIN,
    bearer,
    client,
    operator,
    sealer,
    sessions,
    tokens,
)

Sessions = async_sessionmaker[AsyncSession]
WRITER = {
    "publish": {
        "allow": ["orders.>", "app.{{name()}}.>", "team.{{tag(group)}}.>"],
        "deny": ["orders.admin.>"],
    },
    "subscribe": {"allow": ["orders.>"], "deny": ["orders.secret"]},
    "jetstream": [{"kv": "config", "access": "read"}],
}
AUDITOR = {"subscribe": ["audit.>"]}


@pytest.fixture
async def ids(
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    operator: Any,
) -> dict[str, int]:
    """ORDERS; eng and ops (alice) → orders-writer, auditors (alice, bob) → auditor,
    dave (inactive) in eng, carol in no group. The binding ids by group."""
    async with sessions() as session, session.begin():
        account = await create_account(session, sealer, settings, name="ORDERS", actor=ADMIN)
        await create_account(session, sealer, settings, name="BILLING", actor=ADMIN)
        writer = Role(name="orders-writer", spec=WRITER)
        auditor = Role(name="auditor", spec=AUDITOR)
        users = {
            name: User(user_name=name, user_name_key=name, active=name != "dave")
            for name in ("alice", "bob", "carol", "dave")
        }
        groups = {
            name: Group(display_name=name, display_name_key=name.lower())
            for name in ("eng", "ops", "Auditors")
        }
        session.add_all([writer, auditor, *users.values(), *groups.values()])
        await session.flush()
        members = [("eng", "alice"), ("ops", "alice"), ("Auditors", "alice")]
        members += [("Auditors", "bob"), ("eng", "dave")]
        session.add_all(GroupMember(group_id=groups[g].id, user_id=users[u].id) for g, u in members)
        bindings = {
            "eng": Binding(account_id=account.id, role_id=writer.id, group_id=groups["eng"].id),
            "ops": Binding(account_id=account.id, role_id=writer.id, group_id=groups["ops"].id),
            # By displayName, the way a policy file may name it.
            "Auditors": Binding(
                account_id=account.id, role_id=auditor.id, group_name_key="auditors"
            ),
        }
        session.add_all(bindings.values())
        await session.flush()
        return {group: binding.id for group, binding in bindings.items()}


async def ask(sessions: Sessions, user: str, subject: str, op: str = "pub") -> dict[str, Any]:
    async with sessions() as session:
        return await explain(session, user, "ORDERS", subject, op)


async def test_allowed_names_the_group_binding_role_and_rule(
    ids: dict[str, int],
    sessions: Sessions,
) -> None:
    eng, ops = ids["eng"], ids["ops"]
    via = f"group 'eng' (binding {eng}) and group 'ops' (binding {ops})"
    answer = await ask(sessions, "alice", "orders.eu.new")
    assert answer["allowed"] is True
    assert answer["explanation"] == (
        f"alice may publish to orders.eu.new: {via} gives role 'orders-writer', "
        "whose publish allow 'orders.>' matches"
    )
    assert answer["rule"] == {"role": "orders-writer", "kind": "allow", "pattern": "orders.>"}
    assert answer["roles"] == ["auditor", "orders-writer"]
    assert {(g["group"], g["binding_id"], g["role"]) for g in answer["grants"]} == {
        ("eng", eng, "orders-writer"),
        ("ops", ops, "orders-writer"),
        ("Auditors", ids["Auditors"], "auditor"),
    }

    # Templates are expanded for this user, and the sentence shows what they became.
    mine = await ask(sessions, "alice", "app.alice.jobs")
    assert mine["allowed"] is True
    assert "allow 'app.{{name()}}.>' (for alice: 'app.alice.>') matches" in mine["explanation"]
    team = await ask(sessions, "alice", "team.eng.x")
    assert team["allowed"] is True and "(for alice: 'team.eng.>')" in team["explanation"]
    assert (await ask(sessions, "alice", "team.auditors.x"))["allowed"] is True

    # JetStream grants compile to publish allows; the sentence says where one came from.
    direct = "$JS.API.DIRECT.GET.KV_config.$KV.config.color"
    kv = await ask(sessions, "alice", direct)
    assert kv["allowed"] is True and "(from its JetStream grants) matches" in kv["explanation"]
    assert kv["rule"]["pattern"] == "$JS.API.DIRECT.GET.KV_config.>"

    # Replies: whoever may publish may receive them on the inbox.
    inbox = await ask(sessions, "alice", "_INBOX.abc.def", "sub")
    assert inbox["allowed"] is True
    assert inbox["explanation"] == (
        "alice may subscribe to _INBOX.abc.def: whoever may publish may receive replies on "
        f"'_INBOX.>', and role 'orders-writer' lets alice publish (via {via})"
    )

    # A role from a group bound by displayName.
    audit = await ask(sessions, "bob", "audit.logins", "sub")
    assert audit["explanation"] == (
        f"bob may subscribe to audit.logins: group 'Auditors' (binding {ids['Auditors']}) "
        "gives role 'auditor', whose subscribe allow 'audit.>' matches"
    )


async def test_denied_says_why(ids: dict[str, int], sessions: Sessions) -> None:
    eng, ops = ids["eng"], ids["ops"]
    denied = await ask(sessions, "alice", "orders.admin.reset")
    assert denied["allowed"] is False
    assert denied["explanation"] == (
        "alice may not publish to orders.admin.reset: denied by the publish deny "
        f"'orders.admin.>' of role 'orders-writer', which group 'eng' (binding {eng}) and "
        f"group 'ops' (binding {ops}) gives (a deny wins over every allow)"
    )
    assert denied["rule"] == {"role": "orders-writer", "kind": "deny", "pattern": "orders.admin.>"}
    secret = await ask(sessions, "alice", "orders.secret", "sub")
    assert secret["allowed"] is False and secret["rule"]["kind"] == "deny"

    # Someone else's template subject and a subject nobody allows.
    for subject in ("app.bob.jobs", "billing.x", "$KV.config.color"):
        answer = await ask(sessions, "alice", subject)
        assert answer["allowed"] is False, subject
        assert answer["rule"] == {"role": None, "kind": "default", "pattern": None}
        assert answer["explanation"] == (
            f"alice may not publish to {subject}: denied, no role allows it "
            "(roles held: 'auditor', 'orders-writer')"
        )

    # bob's only role lets him subscribe, never publish: not even replies are his to send.
    bob = await ask(sessions, "bob", "audit.logins")
    assert bob["explanation"] == (
        "bob may not publish to audit.logins: denied, none of their roles ('auditor') "
        "lets them publish to anything"
    )
    assert (await ask(sessions, "bob", "_INBOX.x", "sub"))["allowed"] is False

    dave = await ask(sessions, "dave", "orders.eu.new")
    assert dave["allowed"] is False and dave["grants"] == [] and dave["rule"] is None
    assert dave["explanation"] == (
        "dave may not publish to orders.eu.new: denied, dave is inactive in the identity provider"
    )
    carol = await ask(sessions, "carol", "orders.eu.new", "sub")
    assert carol["explanation"] == (
        "carol may not subscribe to orders.eu.new: denied, carol has no binding to account "
        "ORDERS (none of their groups is bound to it)"
    )
    async with sessions() as session:
        elsewhere = await explain(session, "alice", "BILLING", "orders.eu.new", "pub")
    assert (
        elsewhere["allowed"] is False
        and "no binding to account BILLING" in elsewhere["explanation"]
    )


@pytest.mark.parametrize(
    ("user", "account", "subject", "op", "error", "message"),
    [
        # Bad questions are refused whatever the user's state (dave is inactive).
        ("dave", "ORDERS", "orders.x", "put", ValidationError, "op must be pub or sub"),
        ("carol", "ORDERS", "orders.*", "pub", ValidationError, "literal subject"),
        ("alice", "ORDERS", "orders.>", "sub", ValidationError, "literal subject"),
        ("alice", "ORDERS", "orders..x", "pub", ValidationError, "empty token"),
        ("alice", "ORDERS", "orders x", "pub", ValidationError, "whitespace"),
        ("alice", "ORDERS", "", "pub", ValidationError, "non-empty"),
        ("nobody", "ORDERS", "orders.x", "pub", NotFoundError, "no user 'nobody'"),
        ("alice", "NOPE", "orders.x", "pub", NotFoundError, "NOPE"),
    ],
)
async def test_bad_questions(
    ids: dict[str, int],
    sessions: Sessions,
    user: str,
    account: str,
    subject: str,
    op: str,
    error: type[Exception],
    message: str,
) -> None:
    async with sessions() as session:
        with pytest.raises(error, match=message):
            await explain(session, user, account, subject, op)


async def test_the_explain_endpoint(
    ids: dict[str, int],
    client: TestClient,
    tokens: dict[str, str],
) -> None:
    async def get(params: dict[str, str], token: str | None = "admin:read") -> tuple[int, Any]:
        headers = bearer(tokens[token]) if token else {}
        resp = await client.get("/admin/v1/explain", params=params, headers=headers)
        return resp.status, await resp.json()

    question = {"user": "alice", "account": "ORDERS", "subject": "orders.eu.new", "op": "pub"}
    status, body = await get(question)
    assert status == 200 and body["allowed"] is True and body["user"] == "alice"
    assert (await get(question, "admin"))[0] == 200
    assert (await get(question, None))[0] == 401
    assert (await get(question, "scim"))[0] == 403

    status, body = await get({**question, "user": "dave", "op": "put"})
    assert status == 400 and "op must be pub or sub" in body["message"]
    status, body = await get({**question, "subject": "orders.*"})
    assert status == 400 and "literal" in body["message"]
    status, body = await get({"user": "alice", "account": "ORDERS"})
    assert status == 400 and "subject, op" in body["message"]
    assert (await get({**question, "user": "nobody"}))[0] == 404
    assert (await get({**question, "account": "NOPE"}))[0] == 404
