"""A person's credentials from the service (issue_person_creds), on SQLite and PostgreSQL.

The admin API and CLI around it are tested in test_policy_api.py and test_cli_policy.py;
here: which key signs, what the user JWT says, how long it lives, what is recorded, and what
is refused without recording anything.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import create_account, get_account
from resolver.config import Settings
from resolver.db.models import (
    AccountSigningKey,
    AuditEntry,
    Binding,
    Group,
    GroupMember,
    IssuedUserKey,
    PushOutbox,
    Role,
    User,
    utcnow,
)
from resolver.errors import ConflictError, NotFoundError, ValidationError
from resolver.natsjwt import decode, new_keypair, parse_creds
from resolver.policy.user_creds import PersonCreds, issue_person_creds
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
WRITER = {"publish": ["orders.>"], "subscribe": ["orders.>"], "max_ttl": "2h"}
READER = {"subscribe": ["orders.>", "audit.>"], "max_ttl": "8h"}
FLEETING = {"subscribe": ["ticks.>"], "max_ttl": "30s"}


@pytest.fixture
async def world(sessions: Sessions, sealer: Sealer, settings: Settings, operator: Any) -> None:
    """Account ORDERS; eng (alice, bob, dave inactive) → writer, audit (alice) → reader,
    ticks (erin) → fleeting, a lapsed binding for frank, carol in no group."""
    async with sessions() as session, session.begin():
        account = await create_account(session, sealer, settings, name="ORDERS", actor=ADMIN)
        roles = {
            name: Role(name=name, spec=spec)
            for name, spec in (("writer", WRITER), ("reader", READER), ("fleeting", FLEETING))
        }
        users = {
            name: User(user_name=name, user_name_key=name.casefold(), active=name != "dave")
            for name in ("Alice", "bob", "carol", "dave", "erin", "frank")
        }
        groups = {
            name: Group(display_name=name, display_name_key=name)
            for name in ("eng", "audit", "ticks", "guests")
        }
        session.add_all([*roles.values(), *users.values(), *groups.values()])
        await session.flush()
        members = [
            ("eng", "Alice"),
            ("eng", "bob"),
            ("eng", "dave"),
            ("audit", "Alice"),
            ("ticks", "erin"),
            ("guests", "frank"),
        ]
        session.add_all(GroupMember(group_id=groups[g].id, user_id=users[u].id) for g, u in members)
        session.add_all(
            [
                Binding(
                    account_id=account.id, role_id=roles["writer"].id, group_id=groups["eng"].id
                ),
                Binding(account_id=account.id, role_id=roles["reader"].id, group_name_key="audit"),
                Binding(
                    account_id=account.id, role_id=roles["fleeting"].id, group_id=groups["ticks"].id
                ),
                Binding(
                    account_id=account.id,
                    role_id=roles["writer"].id,
                    group_id=groups["guests"].id,
                    ends_at=utcnow() - timedelta(minutes=1),
                ),
            ]
        )


async def issue(
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    user: str,
    ttl: int | None = None,
    public_key: str | None = None,
    now: int | None = None,
) -> PersonCreds:
    async with sessions() as session, session.begin():
        account = await get_account(session, "ORDERS")
        return await issue_person_creds(
            session,
            sealer,
            settings,
            account,
            user,
            ttl_seconds=ttl,
            actor=ADMIN,
            public_key=public_key,
            now=now,
        )


async def account_state(sessions: Sessions) -> tuple[dict[str, Any], int]:
    """The stored account JWT's claims and the number of outbox rows for the account."""
    async with sessions() as session:
        account = await get_account(session, "ORDERS")
        rows = await session.scalar(
            select(func.count()).where(PushOutbox.account_key == account.public_key)
        )
        return decode(account.jwt or "", expected_type="account").claims, int(rows or 0)


async def counts(sessions: Sessions) -> tuple[int, int]:
    """Issued keys and ``policy.user.issue`` audit rows."""
    async with sessions() as session:
        issued = await session.scalar(select(func.count()).select_from(IssuedUserKey))
        audited = await session.scalar(
            select(func.count()).where(AuditEntry.action == "policy.user.issue")
        )
        return int(issued or 0), int(audited or 0)


async def test_the_user_jwt_is_signed_by_the_scoped_key_of_the_role_set(
    world: None,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
) -> None:
    before, pushes_before = await account_state(sessions)
    now = int(time.time())
    alice = await issue(sessions, sealer, settings, "alice", now=now)  # userName, any case

    assert alice.roles == ("reader", "writer") and alice.groups == ("audit", "eng")
    assert alice.new_signing_key is True
    token = decode(alice.jwt, expected_type="user")
    claims = token.claims
    assert claims["name"] == "Alice"  # the human identity, as the IdP spells it
    assert claims["sub"] == alice.issued.public_key
    assert claims["iss"] == alice.issued.signing_key != before["sub"]
    nats = claims["nats"]
    assert nats["issuer_account"] == before["sub"]
    assert sorted(nats["tags"]) == ["group:audit", "group:eng"]
    # The scoped key's template applies: the user carries no permissions or limits.
    assert nats["pub"] == {} and nats["sub"] == {}
    assert not {"subs", "data", "payload", "allowed_connection_types"} & set(nats)
    # No ttl asked: 1 h, below the stricter role's 2 h.
    assert token.iat == now and token.exp == now + 3600

    # The new key is in the account JWT (re-signed in the same transaction) and pushed.
    after, pushes_after = await account_state(sessions)
    scoped = [k for k in after["nats"]["signing_keys"] if isinstance(k, dict)]
    assert [(k["key"], k["kind"], k["role"]) for k in scoped] == [
        (alice.issued.signing_key, "user_scope", "reader,writer")
    ]
    assert sorted(scoped[0]["template"]["sub"]["allow"]) == ["_INBOX.>", "audit.>", "orders.>"]
    assert pushes_after == pushes_before + 1

    # The creds text holds the JWT and a seed of the key the JWT names.
    assert alice.creds is not None
    jwt, seed = parse_creds(alice.creds)
    assert jwt == alice.jwt and seed.startswith(b"SU")

    # Recorded for revocation, and audited without the seed.
    async with sessions() as session:
        row = await session.scalar(select(IssuedUserKey))
        assert row is not None
        assert (row.public_key, row.user_id is not None, row.name) == (
            claims["sub"],
            True,
            "Alice",
        )
        assert (row.signing_key, row.jti, row.issued_at, row.expires_at) == (
            claims["iss"],
            claims["jti"],
            now,
            now + 3600,
        )
        entry = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "policy.user.issue")
        )
        assert entry is not None and entry.actor == ADMIN.name
        assert entry.details["roles"] == ["reader", "writer"]
        assert seed.decode() not in str(entry.details)

    # The same role set again: the same key, no re-sign, no push.
    again = await issue(sessions, sealer, settings, "ALICE", ttl=600)
    assert again.issued.signing_key == alice.issued.signing_key
    assert again.new_signing_key is False
    assert await account_state(sessions) == (after, pushes_after)

    # Another role set in the same account: another key.
    bob = await issue(sessions, sealer, settings, "bob")
    assert bob.roles == ("writer",) and bob.new_signing_key is True
    assert bob.issued.signing_key not in (alice.issued.signing_key, before["sub"])
    assert await counts(sessions) == (3, 3)


async def test_lifetimes(
    world: None,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
) -> None:
    def life(issued: PersonCreds) -> int:
        token = decode(issued.jwt, expected_type="user")
        assert token.exp is not None and token.exp == issued.issued.expires_at
        return token.exp - token.iat

    assert life(await issue(sessions, sealer, settings, "bob", ttl=600)) == 600
    # Asked for a day, the role allows 2 h: the role wins.
    assert life(await issue(sessions, sealer, settings, "bob", ttl=86_400)) == 7_200
    # alice holds writer (2 h) and reader (8 h): the strictest cap applies to the set.
    assert life(await issue(sessions, sealer, settings, "alice", ttl=86_400)) == 7_200
    # A role capped below the minimum a caller may ask for still issues, at its cap.
    assert life(await issue(sessions, sealer, settings, "erin")) == 30
    assert life(await issue(sessions, sealer, settings, "erin", ttl=3_600)) == 30
    with pytest.raises(ValidationError, match="at least 60"):
        await issue(sessions, sealer, settings, "bob", ttl=59)
    with pytest.raises(ValidationError, match="whole number"):
        await issue(sessions, sealer, settings, "bob", ttl=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user", "error", "message"),
    [
        ("dave", ConflictError, "user 'dave' is inactive"),
        ("carol", ConflictError, "user 'carol' has no binding to account 'ORDERS'"),
        # frank's only binding has ended: like not being in the group.
        ("frank", ConflictError, "user 'frank' has no binding to account 'ORDERS'"),
        ("nobody", NotFoundError, "no user 'nobody'"),
    ],
)
async def test_refusals_record_nothing(
    world: None,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    user: str,
    error: type[Exception],
    message: str,
) -> None:
    before = await account_state(sessions)
    with pytest.raises(error, match=message):
        await issue(sessions, sealer, settings, user)
    assert await counts(sessions) == (0, 0)
    assert await account_state(sessions) == before
    async with sessions() as session:
        scoped = select(func.count()).where(AccountSigningKey.role_set.is_not(None))
        assert await session.scalar(scoped) == 0


async def test_a_callers_own_public_key(
    world: None,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
) -> None:
    own = new_keypair("user")[0]
    mine = await issue(sessions, sealer, settings, "bob", public_key=own)
    assert mine.creds is None  # no seed was made, so none is handed out
    assert decode(mine.jwt, expected_type="user").claims["sub"] == own
    # The same person may renew a JWT for their key.
    renewed = await issue(sessions, sealer, settings, "bob", public_key=own)
    assert renewed.issued.public_key == own

    # Not someone else's: revoking one would cut off the other.
    with pytest.raises(ConflictError, match="issued to someone else"):
        await issue(sessions, sealer, settings, "alice", public_key=own)
    with pytest.raises(ValidationError, match="user public key"):
        await issue(sessions, sealer, settings, "alice", public_key=new_keypair("account")[0])
    with pytest.raises(ValidationError, match="user public key"):
        await issue(sessions, sealer, settings, "alice", public_key="not-a-key")
    assert await counts(sessions) == (2, 2)


async def test_the_user_is_found_by_scim_id(
    world: None,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
) -> None:
    async with sessions() as session:
        bob_id = await session.scalar(select(User.id).where(User.user_name == "bob"))
    assert bob_id is not None
    issued = await issue(sessions, sealer, settings, bob_id)
    assert issued.user_name == "bob" and issued.issued.user_id == bob_id


async def test_the_credentials_endpoint(
    world: None,
    client: TestClient,
    tokens: dict[str, str],
    sessions: Sessions,
) -> None:
    async def post(user: str, body: Any, token: str | None = "admin") -> tuple[int, Any]:
        headers = bearer(tokens[token]) if token else {}
        resp = await client.post(f"/admin/v1/users/{user}/credentials", json=body, headers=headers)
        if resp.status == 201:
            assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()

    orders = {"account": "ORDERS"}
    assert (await post("bob", orders, None))[0] == 401
    assert (await post("bob", orders, "admin:read"))[0] == 403
    assert (await post("bob", orders, "scim"))[0] == 403
    for body, message in [
        ({}, "account"),
        ({**orders, "ttl": "soon"}, "ttl"),
        ({**orders, "ttl": 30}, "at least 60"),
        ({**orders, "public_key": "U123"}, "user public key"),
        ({**orders, "seed": "x"}, "seed"),
    ]:
        status, answer = await post("bob", body)
        assert status == 400 and message in answer["message"], (body, answer)
    assert (await post("bob", {"account": "NOPE"}))[0] == 404
    assert (await post("nobody", orders))[0] == 404
    status, answer = await post("carol", orders)
    assert status == 409 and "no binding to account 'ORDERS'" in answer["message"]
    status, answer = await post("dave", orders)
    assert status == 409 and "inactive" in answer["message"]
    assert await counts(sessions) == (0, 0)

    status, answer = await post("bob", {**orders, "ttl": "30m"})
    assert status == 201
    assert answer["user"] == "bob" and answer["roles"] == ["writer"]
    assert answer["expires_at"] - answer["issued_at"] == 1800
    assert answer["jwt"] in answer["creds"]
    # A new scoped key; NATS is off in this app, so no push was waited for.
    assert answer["new_signing_key"] is True and answer["account_pushed"] is None
    status, again = await post("bob", {**orders, "public_key": new_keypair("user")[0]})
    assert status == 201 and "creds" not in again and again["new_signing_key"] is False
    assert await counts(sessions) == (2, 2)
