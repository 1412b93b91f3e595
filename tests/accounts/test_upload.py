"""``POST /jwt/v1/accounts/<A>`` as ``nsc push`` sends it."""

from __future__ import annotations

import time

from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import service
from resolver.config import Settings
from resolver.db.models import Account, AuditEntry, Operator
from resolver.natsjwt import decode, encode, new_keypair, user_claims
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, bearer, nsc_account_jwt, outbox_rows

Sessions = async_sessionmaker[AsyncSession]
JWT_HEADERS = {"Content-Type": "application/jwt"}


async def post(client: TestClient, key: str, token: str | bytes, **headers: str):  # type: ignore[no-untyped-def]
    return await client.post(
        f"/jwt/v1/accounts/{key}", data=token, headers={**JWT_HEADERS, **headers}
    )


async def test_nsc_push_of_an_account_managed_elsewhere(
    client: TestClient, sessions: Sessions, operator_signing_seed: bytes
) -> None:
    key = new_keypair("account")[0]
    now = int(time.time())
    token = nsc_account_jwt(operator_signing_seed, key, iat=now, name="team-x", exp=now + 3_600)
    resp = await post(client, key, token + "\n")  # a trailing newline, as files have
    assert resp.status == 200, await resp.text()

    async with sessions() as session:
        stored = await session.scalar(select(Account).where(Account.public_key == key))
        audit = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "account.upload")
        )
    assert stored is not None and stored.seed_sealed is None and stored.name == "team-x"
    assert stored.jwt == token and stored.issued_at == now and stored.jti == decode(token).jti
    assert stored.expires_at == now + 3_600
    assert [r.jwt for r in await outbox_rows(sessions, key)] == [token]
    assert audit is not None and audit.target == key

    # Served right away (and from then on).
    resp = await client.get(f"/jwt/v1/accounts/{key}")
    assert resp.status == 200 and await resp.text() == token

    # A newer JWT replaces it and is pushed too.
    newer = nsc_account_jwt(operator_signing_seed, key, iat=now + 1, name="team-x")
    resp = await post(client, key, newer)
    assert resp.status == 200
    resp = await client.get(f"/jwt/v1/accounts/{key}")
    assert await resp.text() == newer
    assert [r.jwt for r in await outbox_rows(sessions, key)] == [token, newer]


async def test_upload_signed_by_the_operator_identity_key_is_accepted(
    client: TestClient, operator: Operator, sealer: Sealer
) -> None:
    key = new_keypair("account")[0]
    token = nsc_account_jwt(sealer.open(operator.seed_sealed), key, iat=int(time.time()))
    resp = await post(client, key, token)
    assert resp.status == 200


async def test_upload_refuses_bad_jwts(
    client: TestClient, sessions: Sessions, operator_signing_seed: bytes
) -> None:
    key = new_keypair("account")[0]
    now = int(time.time())
    good = nsc_account_jwt(operator_signing_seed, key, iat=now)
    foreign_seed = new_keypair("operator")[1]
    user_key, _ = new_keypair("user")
    account_key, account_seed = new_keypair("account")
    cases = {
        "garbage": (key, "not a jwt"),
        "empty": (key, ""),
        "tampered": (key, good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")),
        "subject mismatch": (new_keypair("account")[0], good),
        "foreign issuer": (key, nsc_account_jwt(foreign_seed, key, iat=now)),
        "user jwt": (user_key, encode(user_claims("u", user_key), account_seed, iat=now)),
        "expired": (key, nsc_account_jwt(operator_signing_seed, key, iat=now - 10, exp=now - 5)),
    }
    for label, (path_key, body) in cases.items():
        resp = await post(client, path_key, body)
        assert resp.status == 400, label
        assert resp.content_type == "text/plain", label
    assert (await client.post(f"/jwt/v1/accounts/{account_key[:-1]}X", data=good)).status == 400
    async with sessions() as session:
        assert await session.scalar(select(Account).where(Account.public_key == key)) is None
    assert await outbox_rows(sessions, key) == []


async def test_replay_of_an_older_or_same_jwt_is_refused(
    client: TestClient, sessions: Sessions, operator_signing_seed: bytes
) -> None:
    key = new_keypair("account")[0]
    now = int(time.time())
    older = nsc_account_jwt(operator_signing_seed, key, iat=now - 60, name="x")
    current = nsc_account_jwt(
        operator_signing_seed, key, iat=now, name="x", revocations={new_keypair("user")[0]: now}
    )
    same_second = nsc_account_jwt(operator_signing_seed, key, iat=now, name="x")
    assert (await post(client, key, current)).status == 200
    for replay in (older, same_second, current):
        resp = await post(client, key, replay)
        assert resp.status == 409
        assert "newer" in await resp.text()
    resp = await client.get(f"/jwt/v1/accounts/{key}")
    assert await resp.text() == current
    assert len(await outbox_rows(sessions, key)) == 1


async def test_accounts_held_here_need_an_admin_token(
    client: TestClient,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    operator_signing_seed: bytes,
    tokens: dict[str, str],
) -> None:
    async with sessions() as session, session.begin():
        account = await service.create_account(session, sealer, settings, name="HELD", actor=ADMIN)
    key = account.public_key
    token = nsc_account_jwt(
        operator_signing_seed, key, iat=account.issued_at + 1, name="HELD", limits={"conn": 1}
    )
    resp = await post(client, key, token)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    for scope in ("scim", "admin:read"):
        assert (await post(client, key, token, **bearer(tokens[scope]))).status == 403
    assert (await post(client, key, token, Authorization="Bearer nir_bogus")).status == 401
    assert len(await outbox_rows(sessions, key)) == 1

    resp = await post(client, key, token, **bearer(tokens["admin"]))
    assert resp.status == 200
    async with sessions() as session:
        stored = await session.get_one(Account, account.id)
    # Stored as uploaded; the keys stay ours.
    assert stored.jwt == token and stored.seed_sealed is not None
    assert [r.jwt for r in await outbox_rows(sessions, key)][-1] == token
    assert (await client.get(f"/jwt/v1/accounts/{key}")).headers["ETag"] == f'"{stored.jti}"'


async def test_system_account_is_held_too(
    client: TestClient, operator: Operator, operator_signing_seed: bytes
) -> None:
    key = operator.system_account_key
    token = nsc_account_jwt(operator_signing_seed, key, iat=int(time.time()) + 5, name="SYS")
    assert (await post(client, key, token)).status == 401
