"""``POST /v1/credentials`` and ``GET /v1/credentials/creds`` through the real app, on SQLite
and PostgreSQL, with tokens from local IdP stand-ins: who gets what, for how long, what is
recorded, and what is refused (changing nothing but the audit log)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.db.models import (
    Account,
    AccountSigningKey,
    AuditEntry,
    Binding,
    IssuedUserKey,
    Revocation,
)
from resolver.natsjwt import decode, new_keypair, parse_creds, public_key_of
from tests.credentials.conftest import ALB_HEADER, ALB_SIGNER, PROXY_HEADER, World
from tests.support.idp import IdpStandIn

Sessions = async_sessionmaker[AsyncSession]
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(client: TestClient, token: str | None, body: Any, **headers: str) -> Any:
    sent = {**(auth(token) if token else {}), **headers}
    response = await client.post("/v1/credentials", json=body, headers=sent)
    return response.status, await response.json(), response.headers


async def account_of(sessions: Sessions, name: str) -> Account:
    async with sessions() as session:
        account = await session.scalar(select(Account).where(Account.name == name))
        assert account is not None
        return account


async def audit(sessions: Sessions, action: str) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        )
        return list(rows)


async def issued_count(sessions: Sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(IssuedUserKey)) or 0)


async def test_a_person_trades_an_idp_token_for_a_short_lived_user_jwt(
    client: TestClient, sessions: Sessions, world: World, idp: IdpStandIn
) -> None:
    public, _seed = new_keypair("user")
    token = idp.token("00u-alice", email="Alice@Example.com", ttl=600)
    status, body, headers = await post(client, token, {"public_key": public})
    assert status == 201, body
    assert headers["Cache-Control"] == "no-store"
    orders = await account_of(sessions, "ORDERS")
    claims = decode(body["jwt"], expected_type="user").claims
    nats = claims["nats"]
    assert claims["sub"] == public and claims["name"] == "alice"
    assert nats["issuer_account"] == orders.public_key
    assert nats["tags"] == ["group:eng"]
    # Signed by the writer role's scoped key, carrying no permissions of its own.
    async with sessions() as session:
        scoped = await session.scalar(
            select(AccountSigningKey).where(AccountSigningKey.public_key == claims["iss"])
        )
    assert scoped is not None and scoped.role_set == "writer"
    assert "pub" not in nats or nats["pub"] == {}
    # exp = min(default 1 h, writer's 2 h, token's 600 s + the IdP's 300 s grace).
    assert abs(claims["exp"] - (time.time() + 900)) < 10
    assert body["roles"] == ["writer"] and body["groups"] == ["eng"]
    assert body["expires_at"] == claims["exp"] and body["account"] == "ORDERS"
    # Recorded for revocation and pruning, and audited under the human identity.
    async with sessions() as session:
        issued = await session.scalar(
            select(IssuedUserKey).where(IssuedUserKey.public_key == public)
        )
    assert issued is not None and issued.user_id == world.users["alice"]
    assert issued.expires_at == claims["exp"]
    [entry] = await audit(sessions, "credentials.issue")
    assert entry.actor == "alice" and entry.target == orders.public_key
    assert (entry.user_name, entry.account_key) == ("alice", orders.public_key)
    assert entry.details["via"] == "token" and entry.details["idp"] == "corp"
    assert entry.details["user_key"] == public and token not in str(entry.details)


async def test_lifetime_is_the_shortest_of_asked_role_and_token(
    client: TestClient, world: World, idp: IdpStandIn
) -> None:
    token = idp.token("00u-alice", email="alice@example.com", ttl=6 * 3600)
    status, body, _ = await post(client, token, {"public_key": new_keypair("user")[0], "ttl": "2m"})
    assert status == 201, body
    assert abs(body["expires_at"] - (time.time() + 120)) < 10
    # Asking for more than the role allows gets the role's maximum (writer: 2 h).
    status, body, _ = await post(
        client, token, {"public_key": new_keypair("user")[0], "ttl": 86400}
    )
    assert abs(body["expires_at"] - (time.time() + 7200)) < 10


async def test_accounts_and_role_sets_are_chosen_within_what_is_held(
    client: TestClient, world: World, other_idp: IdpStandIn
) -> None:
    # The partner IdP maps preferred_username to userName.
    token = other_idp.token("p-olga", preferred_username="OLGA")
    status, body, _ = await post(client, token, {"public_key": new_keypair("user")[0]})
    assert status == 400 and "OPS, ORDERS" in body["message"]
    status, body, _ = await post(
        client, token, {"public_key": new_keypair("user")[0], "account": "OPS"}
    )
    assert status == 201 and body["roles"] == ["reader"] and body["name"] == "olga"
    status, body, _ = await post(
        client, token, {"public_key": new_keypair("user")[0], "account": "OPS", "roles": ["writer"]}
    )
    assert status == 403 and "does not hold writer" in body["message"]
    status, body, _ = await post(
        client, token, {"public_key": new_keypair("user")[0], "account": "NOPE"}
    )
    assert status == 403 and "no binding to account 'NOPE'" in body["message"]


@pytest.mark.parametrize(
    ("email", "reason", "user"),
    [
        # A known person is named by their userName (the token carried their e-mail).
        ("Dave@example.com", "inactive", "dave"),
        ("carol@example.com", "no binding to any account", "carol"),
        ("mallory@example.com", "no SCIM user", "mallory@example.com"),
    ],
)
async def test_inactive_unbound_and_unknown_people_are_refused(
    client: TestClient,
    sessions: Sessions,
    world: World,
    idp: IdpStandIn,
    email: str,
    reason: str,
    user: str,
) -> None:
    token = idp.token("00u-x", email=email)
    wanted = {"public_key": new_keypair("user")[0], "account": "ORDERS"}
    status, body, _ = await post(client, token, wanted)
    assert status == 403 and reason in body["message"], body
    assert await issued_count(sessions) == 0
    [entry] = await audit(sessions, "credentials.refuse")
    assert reason in entry.details["reason"] and entry.details["idp"] == "corp"
    orders = await account_of(sessions, "ORDERS")
    assert (entry.user_name, entry.account_key) == (user, orders.public_key)


async def test_a_workload_reaches_an_account_by_a_token_claim_and_never_outlives_the_token(
    client: TestClient, sessions: Sessions, world: World, idp: IdpStandIn
) -> None:
    token = idp.token("svc-deploy", roles=["ci-deployer", "other"], ttl=600)
    public = new_keypair("user")[0]
    status, body, _ = await post(client, token, {"public_key": public, "ttl": "1h"})
    assert status == 201, body
    assert body["name"] == "corp:svc-deploy" and body["roles"] == ["deployer"]
    assert body["groups"] == ["ci-deployer"]
    token_exp = decode_unverified_exp(token)
    assert body["expires_at"] == token_exp, "no grace for claim-based access"
    # The same workload renews with the same key; another workload may not take it.
    again = idp.token("svc-deploy", roles=["ci-deployer"])
    status, _, _ = await post(client, again, {"public_key": public})
    assert status == 201
    other = idp.token("svc-other", roles=["ci-deployer"])
    status, body, _ = await post(client, other, {"public_key": public})
    assert status == 409 and "someone else" in body["message"]
    # A token whose claims match no binding gets nothing.
    status, body, _ = await post(client, idp.token("svc-x", roles=["nope"]), {"public_key": public})
    assert status == 403 and "no binding matches" in body["message"]


async def test_claim_access_of_a_person_ends_with_the_token(
    client: TestClient, world: World, idp: IdpStandIn
) -> None:
    token = idp.token("00u-alice", email="alice@example.com", roles=["ci-deployer"], ttl=600)
    status, body, _ = await post(client, token, {"public_key": new_keypair("user")[0]})
    assert status == 201, body
    assert body["roles"] == ["deployer", "writer"]
    assert body["expires_at"] == decode_unverified_exp(token)
    # Asking for the SCIM-granted role alone keeps the IdP's grace.
    status, body, _ = await post(
        client, token, {"public_key": new_keypair("user")[0], "roles": ["writer"]}
    )
    assert body["expires_at"] == decode_unverified_exp(token) + 300


async def test_creds_file_carries_a_generated_seed_that_is_never_stored(
    client: TestClient, sessions: Sessions, world: World, idp: IdpStandIn
) -> None:
    token = idp.token("00u-alice", email="alice@example.com")
    response = await client.get("/v1/credentials/creds", params={"ttl": "10m"}, headers=auth(token))
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    assert 'filename="ORDERS.creds"' in response.headers["Content-Disposition"]
    user_jwt, seed = parse_creds(await response.text())
    claims = decode(user_jwt, expected_type="user").claims
    assert claims["sub"] == public_key_of(seed) and claims["name"] == "alice"
    assert abs(claims["exp"] - (time.time() + 600)) < 10
    assert int(response.headers["X-Expires-At"]) == claims["exp"]
    async with sessions() as session:
        rows = list(await session.scalars(select(IssuedUserKey)))
    assert [row.public_key for row in rows] == [claims["sub"]]
    assert seed.decode() not in str([vars(row) for row in rows])
    response = await client.get(
        "/v1/credentials/creds", params={"color": "red"}, headers=auth(token)
    )
    assert response.status == 400


async def test_missing_and_invalid_tokens_get_401_without_echoing_them(
    client: TestClient, sessions: Sessions, world: World, idp: IdpStandIn
) -> None:
    status, body, headers = await post(client, None, {"public_key": new_keypair("user")[0]})
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    expired = idp.token("00u-alice", email="alice@example.com", ttl=-3600)
    status, body, headers = await post(client, expired, {"public_key": new_keypair("user")[0]})
    assert status == 401 and "expired" in body["message"]
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert expired not in str(body)
    first, entry = await audit(sessions, "credentials.refuse")
    assert "token is required" in first.details["reason"]
    assert entry.actor == "anonymous" and "expired" in entry.details["reason"]
    assert await issued_count(sessions) == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "public_key is required"),
        ({"public_key": "not-a-key"}, "user public key"),
        ({"public_key": "SEED"}, "user public key"),
        ({"public_key": "PUB", "ttl": "soon"}, "duration"),
        ({"public_key": "PUB", "ttl": 5}, "at least 60"),
        ({"public_key": "PUB", "roles": "writer,"}, None),
        ({"public_key": "PUB", "roles": [1]}, "list of role names"),
        ({"public_key": "PUB", "colour": "red"}, "unknown fields"),
    ],
)
async def test_bad_requests_get_400_and_change_nothing(
    client: TestClient,
    sessions: Sessions,
    world: World,
    idp: IdpStandIn,
    body: dict[str, Any],
    message: str | None,
) -> None:
    public, seed = new_keypair("user")
    fill = {"PUB": public, "SEED": seed.decode()}
    body = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    token = idp.token("00u-alice", email="alice@example.com")
    status, answer, _ = await post(client, token, body)
    if message is None:  # "writer," is fine: a comma list with an empty tail
        assert status == 201, answer
        return
    assert status == 400 and message in answer["message"], answer
    assert seed.decode() not in str(answer)
    assert await issued_count(sessions) == 0


async def test_a_front_proxys_signed_assertion_replaces_the_bearer_token(
    client: TestClient, world: World, alb: IdpStandIn
) -> None:
    assertion = alb.token(
        "alb-1",
        algorithm="ES256",
        audience=None,
        email="alice@example.com",
        headers={"signer": ALB_SIGNER},
    )
    status, body, _ = await post(
        client, None, {"public_key": new_keypair("user")[0]}, **{ALB_HEADER: assertion}
    )
    assert status == 201 and body["name"] == "alice", body
    forged = alb.token("alb-1", algorithm="ES256", audience=None, email="alice@example.com")
    status, body, _ = await post(
        client, None, {"public_key": new_keypair("user")[0]}, **{ALB_HEADER: forged}
    )
    assert status == 401 and "signer" in body["message"]


async def test_a_plain_identity_header_from_a_trusted_proxy(
    client: TestClient, sessions: Sessions, world: World
) -> None:
    # The test client connects from 127.0.0.1, which the settings trust.
    status, body, _ = await post(
        client, None, {"public_key": new_keypair("user")[0]}, **{PROXY_HEADER: "alice"}
    )
    assert status == 201 and body["name"] == "alice", body
    # No token expiry to follow: the default lifetime (1 h) under the role's 2 h.
    assert abs(body["expires_at"] - (time.time() + 3600)) < 10
    [entry] = await audit(sessions, "credentials.issue")
    assert entry.details["via"] == "proxy" and entry.source == "127.0.0.1"


async def test_deactivating_the_person_revokes_what_was_issued(
    client: TestClient, sessions: Sessions, world: World, idp: IdpStandIn, tokens: dict[str, str]
) -> None:
    token = idp.token("00u-alice", email="alice@example.com")
    public = new_keypair("user")[0]
    status, body, _ = await post(client, token, {"public_key": public})
    assert status == 201
    response = await client.patch(
        f"/scim/v2/Users/{world.users['alice']}",
        json={"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": False}}]},
        headers=auth(tokens["scim"]),
    )
    assert response.status == 200, await response.text()
    async with sessions() as session:
        revoked = await session.scalar(select(Revocation).where(Revocation.public_key == public))
    assert revoked is not None
    status, body, _ = await post(client, token, {"public_key": new_keypair("user")[0]})
    assert status == 403 and "inactive" in body["message"]


def decode_unverified_exp(token: str) -> int:
    import jwt

    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def claim_binding_id(sessions: Sessions) -> int:
    async with sessions() as session:
        found = await session.scalar(select(Binding.id).where(Binding.claim_name == "roles"))
        assert found is not None
        return found


async def revoked(sessions: Sessions, public: str) -> bool:
    async with sessions() as session:
        return (
            await session.scalar(select(Revocation.id).where(Revocation.public_key == public))
        ) is not None


@pytest.mark.parametrize("how", ["delete", "end"])
async def test_ending_a_claim_binding_revokes_the_workloads_it_granted(
    client: TestClient,
    sessions: Sessions,
    world: World,
    idp: IdpStandIn,
    tokens: dict[str, str],
    how: str,
) -> None:
    workload = new_keypair("user")[0]
    person = new_keypair("user")[0]
    status, _, _ = await post(
        client, idp.token("svc-1", roles=["ci-deployer"]), {"public_key": workload}
    )
    assert status == 201
    # alice's writer access comes from SCIM: a claim binding going away leaves it alone.
    status, _, _ = await post(
        client, idp.token("00u-alice", email="alice@example.com"), {"public_key": person}
    )
    assert status == 201
    binding = await claim_binding_id(sessions)
    admin = auth(tokens["admin"])
    if how == "delete":
        response = await client.delete(f"/admin/v1/bindings/{binding}", headers=admin)
    else:
        response = await client.patch(
            f"/admin/v1/bindings/{binding}",
            json={"ends_at": "2020-01-01T00:00:00Z"},
            headers=admin,
        )
    assert response.status in (200, 204), await response.text()
    assert await revoked(sessions, workload)
    assert not await revoked(sessions, person)
    # And the token no longer gets anything.
    status, body, _ = await post(
        client, idp.token("svc-1", roles=["ci-deployer"]), {"public_key": new_keypair("user")[0]}
    )
    assert status == 403 and "no binding matches" in body["message"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_issued_and_refused_credentials_are_counted(
    client: TestClient, world: World, idp: IdpStandIn
) -> None:
    issued = ("nir_credentials_issued_total", {"via": "token"})
    forbidden = ("nir_credentials_refused_total", {"via": "token", "reason": "forbidden"})
    invalid = ("nir_credentials_refused_total", {"via": "token", "reason": "invalid_token"})
    before = [sample(name, **labels) for name, labels in (issued, forbidden, invalid)]
    token = idp.token("00u-alice", email="alice@example.com")
    for _ in range(2):
        status, body, _ = await post(client, token, {"public_key": new_keypair("user")[0]})
        assert status == 201, body
    carol = idp.token("00u-carol", email="carol@example.com")  # in no group
    assert (await post(client, carol, {"public_key": new_keypair("user")[0]}))[0] == 403
    assert (await post(client, token + "x", {"public_key": new_keypair("user")[0]}))[0] == 401
    after = [sample(name, **labels) for name, labels in (issued, forbidden, invalid)]
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 1, 1]
