"""``/admin/v1/accounts``: auth scopes, bodies, creation, workload creds, revocations."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.db.models import Account, IssuedUserKey, Operator
from resolver.natsjwt import decode, new_keypair, parse_creds
from tests.accounts.conftest import bearer, outbox_rows

Sessions = async_sessionmaker[AsyncSession]


async def create(client: TestClient, token: str, **body: object) -> dict:  # type: ignore[type-arg]
    resp = await client.post("/admin/v1/accounts", json=body, headers=bearer(token))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_scopes(client: TestClient, tokens: dict[str, str]) -> None:
    resp = await client.get("/admin/v1/accounts")
    assert resp.status == 401 and (await resp.json())["error"] == "unauthenticated"
    assert (await client.get("/admin/v1/accounts", headers=bearer(tokens["scim"]))).status == 403
    assert (
        await client.get("/admin/v1/accounts", headers=bearer(tokens["admin:read"]))
    ).status == 200
    # Read-only tokens cannot write.
    for path in (
        "/admin/v1/accounts",
        "/admin/v1/accounts/SYS/users",
        "/admin/v1/accounts/SYS/revocations",
    ):
        resp = await client.post(path, json={"name": "x"}, headers=bearer(tokens["admin:read"]))
        assert resp.status == 403, path
        resp = await client.post(path, json={"name": "x"})
        assert resp.status == 401, path


async def test_create_list_and_show(
    client: TestClient, tokens: dict[str, str], sessions: Sessions, operator: Operator
) -> None:
    body = await create(
        client, tokens["admin"], name="ACME", spec={"limits": {"conn": 3}, "tags": ["Prod"]}
    )
    key = body["public_key"]
    assert body["name"] == "ACME" and body["managed_here"] is True
    assert body["spec"] == {"limits": {"conn": 3}, "tags": ["Prod"]}
    assert "seed" not in str(body).lower()
    token = decode(await (await client.get(f"/jwt/v1/accounts/{key}")).text())
    assert token.jti == body["jti"] and token.nats["limits"]["conn"] == 3
    assert token.nats["tags"] == ["prod"]
    assert len(await outbox_rows(sessions, key)) == 1

    resp = await client.get("/admin/v1/accounts", headers=bearer(tokens["admin:read"]))
    names = [a["name"] for a in (await resp.json())["accounts"]]
    assert names == ["ACME", "SYS"]
    for ref in ("ACME", key):
        resp = await client.get(f"/admin/v1/accounts/{ref}", headers=bearer(tokens["admin:read"]))
        assert resp.status == 200 and (await resp.json())["public_key"] == key
    resp = await client.get("/admin/v1/accounts/nope", headers=bearer(tokens["admin:read"]))
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"

    resp = await client.post(
        "/admin/v1/accounts", json={"name": "ACME"}, headers=bearer(tokens["admin"])
    )
    assert resp.status == 409


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "body is required"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"name": 5}', "'name'"),
        (b'{"spec": {}}', "'name'"),
        (b'{"name": "A", "extra": 1}', "unknown fields"),
        (b'{"name": "A", "spec": {"limits": {"conn": "lots"}}}', "spec.limits.conn"),
        (b'{"name": "A", "spec": {"limits": {"nope": 1}}}', "unknown account limit"),
        (b'{"name": "bad/name"}', "account name"),
    ],
)
async def test_create_refuses_bad_bodies(
    client: TestClient, tokens: dict[str, str], body: bytes, fragment: str
) -> None:
    resp = await client.post(
        "/admin/v1/accounts",
        data=body,
        headers={**bearer(tokens["admin"]), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    payload = await resp.json()
    assert payload["error"] == "invalid_request" and fragment in payload["message"]


async def test_workload_creds_and_revocation(
    client: TestClient, tokens: dict[str, str], sessions: Sessions
) -> None:
    account = await create(client, tokens["admin"], name="ACME")
    before = int(time.time())
    resp = await client.post(
        "/admin/v1/accounts/ACME/users",
        json={"name": "worker-1", "ttl": "1h"},
        headers=bearer(tokens["admin"]),
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    user_jwt, _seed = parse_creds(body["creds"])
    user = decode(user_jwt, expected_type="user")
    assert user.subject == body["user_key"] and user.issuer_account == account["public_key"]
    assert body["expires_at"] == user.exp and before + 3_600 <= user.exp <= int(time.time()) + 3_600
    served = decode(await (await client.get(f"/jwt/v1/accounts/{account['public_key']}")).text())
    assert user.issuer in served.nats["signing_keys"]

    resp = await client.post(
        "/admin/v1/accounts/ACME/revocations",
        json={"user_key": body["user_key"], "reason": "left the team"},
        headers=bearer(tokens["admin"]),
    )
    assert resp.status == 200, await resp.text()
    revoked = await resp.json()
    assert revoked["revoked_at"] >= user.iat
    served = decode(await (await client.get(f"/jwt/v1/accounts/{account['public_key']}")).text())
    assert served.jti == revoked["jti"]
    assert served.nats["revocations"] == {body["user_key"]: revoked["revoked_at"]}
    async with sessions() as session:
        issued = await session.scalar(
            select(IssuedUserKey).where(IssuedUserKey.public_key == body["user_key"])
        )
    assert issued is not None and issued.revoked_at == revoked["revoked_at"]
    assert len(await outbox_rows(sessions, account["public_key"])) == 2


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("users", {"name": "w"}, 400),
        ("users", {"name": "w", "ttl": "forever"}, 400),
        ("users", {"name": "w", "ttl": 5}, 400),
        ("users", {"ttl": "1h"}, 400),
        ("revocations", {}, 400),
        ("revocations", {"user_key": "UBAD"}, 400),
        ("revocations", {"user_key": "x", "reason": 7}, 400),
    ],
)
async def test_user_and_revocation_bodies_are_checked(
    client: TestClient,
    tokens: dict[str, str],
    path: str,
    body: dict,
    status: int,  # type: ignore[type-arg]
) -> None:
    await create(client, tokens["admin"], name="ACME")
    resp = await client.post(
        f"/admin/v1/accounts/ACME/{path}", json=body, headers=bearer(tokens["admin"])
    )
    assert resp.status == status
    assert (await resp.json())["error"] == "invalid_request"


async def test_unknown_account_is_404_and_external_is_409(
    client: TestClient,
    tokens: dict[str, str],
    sessions: Sessions,
    operator: Operator,
) -> None:
    resp = await client.post(
        "/admin/v1/accounts/nope/users",
        json={"name": "w", "ttl": 60},
        headers=bearer(tokens["admin"]),
    )
    assert resp.status == 404
    async with sessions() as session, session.begin():
        session.add(
            Account(
                operator_id=operator.id,
                name="EXT",
                public_key=new_keypair("account")[0],
                seed_sealed=None,
                spec={},
            )
        )
    resp = await client.post(
        "/admin/v1/accounts/EXT/revocations",
        json={"user_key": new_keypair("user")[0]},
        headers=bearer(tokens["admin"]),
    )
    assert resp.status == 409 and "managed elsewhere" in (await resp.json())["message"]


async def test_update_merges_top_level_fields_and_refusals_change_nothing(
    client: TestClient, tokens: dict[str, str], sessions: Sessions
) -> None:
    from tests.admin.api import Api, state

    api = Api(client, tokens)
    created = await create(
        client, tokens["admin"], name="ACME", spec={"limits": {"conn": 3}, "tags": ["a"]}
    )
    key = created["public_key"]
    changed = await api.ok("PATCH", "/admin/v1/accounts/ACME", {"spec": {"description": "Acme"}})
    # Fields not given are kept; a given field replaces the stored one whole.
    assert changed["spec"] == {"limits": {"conn": 3}, "tags": ["a"], "description": "Acme"}
    assert changed["resigned"] is True and changed["jti"] != created["jti"]
    served = decode(await (await client.get(f"/jwt/v1/accounts/{key}")).text())
    assert served.jti == changed["jti"] and served.claims["nats"]["description"] == "Acme"
    replaced = await api.ok("PATCH", f"/admin/v1/accounts/{key}", {"spec": {"limits": {"subs": 9}}})
    assert replaced["spec"]["limits"] == {"subs": 9}
    assert len(await outbox_rows(sessions, key)) == 3

    before = await state(sessions)
    for body, fragment in (
        ({}, "'spec' is required"),
        ({"spec": None}, "'spec' is required"),
        ({"spec": ["limits"]}, "'spec' is required"),
        ({"spec": {"colour": "red"}}, "colour"),
        ({"spec": {"limits": {"conn": "lots"}}}, "spec.limits.conn"),
        ({"spec": {"tags": "a"}}, "spec.tags"),
        ({"spec": {}, "name": "other"}, "unknown fields"),
    ):
        status, answer = await api.call("PATCH", "/admin/v1/accounts/ACME", body)
        assert status == 400 and fragment in answer["message"], (body, answer)
    assert (await api.call("PATCH", "/admin/v1/accounts/nope", {"spec": {}}))[0] == 404
    assert (await api.call("PATCH", "/admin/v1/accounts/ACME", {"spec": {}}, token="admin:read"))[
        0
    ] == 403
    assert await state(sessions) == before


async def test_delete_locks_out_stops_serving_and_frees_the_name(
    client: TestClient, tokens: dict[str, str], sessions: Sessions, operator: Operator
) -> None:
    from resolver.db.models import AuditEntry, Binding
    from tests.admin.api import Api, count, state

    api = Api(client, tokens)
    created = await create(client, tokens["admin"], name="ACME", spec={"limits": {"conn": 50}})
    key = created["public_key"]
    await api.ok("POST", "/admin/v1/roles", {"name": "reader", "subscribe": ["a.>"]})
    await api.ok("POST", "/admin/v1/bindings", {"account": "ACME", "role": "reader", "group": "g"})
    async with sessions() as session, session.begin():
        session.add(
            Account(
                operator_id=operator.id,
                name="EXT",
                public_key=new_keypair("account")[0],
                seed_sealed=None,
                spec={},
            )
        )

    before = await state(sessions)
    assert (await api.call("DELETE", "/admin/v1/accounts/ACME", token="admin:read"))[0] == 403
    assert (await api.call("DELETE", "/admin/v1/accounts/ACME", token=None))[0] == 401
    status, answer = await api.call("DELETE", "/admin/v1/accounts/SYS")
    assert status == 409 and "system account" in answer["message"]
    status, answer = await api.call("DELETE", "/admin/v1/accounts/EXT")
    assert status == 409 and "managed elsewhere" in answer["message"]
    assert (await api.call("DELETE", "/admin/v1/accounts/nope"))[0] == 404
    assert await state(sessions) == before

    status, answer = await api.call("DELETE", f"/admin/v1/accounts/{key}")
    assert status == 204 and answer is None
    # The last JWT pushed lets nobody connect, so live users are dropped at once...
    last = (await outbox_rows(sessions, key))[-1]
    locked = decode(last.jwt, expected_type="account").claims["nats"]["limits"]
    assert locked.get("conn", 0) == 0 and locked.get("leaf", 0) == 0
    # ... and after it the account is gone: not served, not listed, not found.
    assert (await client.get(f"/jwt/v1/accounts/{key}")).status == 404
    listed = await api.ok("GET", "/admin/v1/accounts", token="admin:read")
    assert [a["name"] for a in listed["accounts"]] == ["EXT", "SYS"]
    for method, body in (("GET", None), ("PATCH", {"spec": {}}), ("DELETE", None)):
        assert (await api.call(method, "/admin/v1/accounts/ACME", body))[0] == 404, method
        assert (await api.call(method, f"/admin/v1/accounts/{key}", body))[0] == 404, method
    assert await count(sessions, Binding) == 0
    async with sessions() as session:
        audit = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "account.delete")
        )
    assert audit is not None and audit.target == key and audit.details["name"] == "ACME"
    assert len(audit.details["bindings"]) == 1

    # The name can be used again, by a new account with new keys.
    reborn = await create(client, tokens["admin"], name="ACME")
    assert reborn["public_key"] != key and reborn["spec"] == {}
    served = decode(await (await client.get(f"/jwt/v1/accounts/{reborn['public_key']}")).text())
    assert served.claims["nats"]["limits"]["conn"] == -1


async def test_a_deleted_name_of_full_length_is_freed(
    client: TestClient, tokens: dict[str, str]
) -> None:
    from tests.admin.api import Api

    api = Api(client, tokens)
    name = "N" * 200
    first = await create(client, tokens["admin"], name=name)
    assert (await api.call("DELETE", f"/admin/v1/accounts/{name}"))[0] == 204
    second = await create(client, tokens["admin"], name=name)
    assert second["public_key"] != first["public_key"]
    listed = await api.ok("GET", "/admin/v1/accounts", token="admin:read")
    assert [a["name"] for a in listed["accounts"]] == [name, "SYS"]
