"""The ``/jwt/v1`` GET routes as nats-server, nsc and people use them."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import service
from resolver.appkeys import JWT_CACHE
from resolver.config import Settings
from resolver.db.models import Account, Operator
from resolver.logs import configure_logging
from resolver.natsjwt import decode, new_keypair
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, outbox_rows

Sessions = async_sessionmaker[AsyncSession]
MAX_AGE = re.compile(r"max-age=(\d+)")


async def create(
    sessions: Sessions, sealer: Sealer, settings: Settings, *, now: int | None = None
) -> Account:
    async with sessions() as session, session.begin():
        return await service.create_account(
            session, sealer, settings, name="ACME", actor=ADMIN, now=now
        )


async def test_base_url_answers_200_empty_uncached(client: TestClient) -> None:
    for path in ("/jwt/v1/accounts/", "/jwt/v1/accounts"):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.read() == b""
        assert resp.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"


async def test_account_jwt_with_etag_and_cache_control(
    client: TestClient, sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    account = await create(sessions, sealer, settings)
    before = int(time.time())
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}")
    after = int(time.time())
    assert resp.status == 200
    assert resp.content_type == "application/jwt"
    assert (await resp.text()) == account.jwt
    assert resp.headers["ETag"] == f'"{account.jti}"'
    max_age = int(MAX_AGE.search(resp.headers["Cache-Control"]).group(1))
    # Fresh until the JWT expires, and no longer.
    assert account.expires_at - after <= max_age <= account.expires_at - before

    resp = await client.get(
        f"/jwt/v1/accounts/{account.public_key}", headers={"If-None-Match": f'"{account.jti}"'}
    )
    assert resp.status == 304
    assert await resp.read() == b""
    assert resp.headers["ETag"] == f'"{account.jti}"'
    resp = await client.get(
        f"/jwt/v1/accounts/{account.public_key}", headers={"If-None-Match": '"something-else"'}
    )
    assert resp.status == 200 and (await resp.text()) == account.jwt


async def test_cached_answer_matches_the_first_one_and_is_logged(
    client: TestClient,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The second GET is served by the fast path from the cache: same answer, same log line."""
    account = await create(sessions, sealer, settings)
    path = f"/jwt/v1/accounts/{account.public_key}"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO", "json")
        answers = [await client.get(path, headers={"X-Request-ID": f"get-{i}"}) for i in (1, 2)]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert client.app[JWT_CACHE].get(account.public_key) is not None
    first, second = answers
    assert (await first.read()) == (await second.read()) == account.jwt.encode()
    for name in ("Content-Type", "ETag", "Cache-Control"):
        assert first.headers[name] == second.headers[name]
    assert [a.headers["X-Request-ID"] for a in answers] == ["get-1", "get-2"]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    logged = {e["request_id"]: e for e in lines if e.get("path") == path}
    assert logged["get-1"]["status"] == logged["get-2"]["status"] == 200


async def test_expired_account_has_no_negative_max_age_and_fails_check(
    client: TestClient, sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    long_ago = int(time.time()) - 3 * settings.accounts.jwt_ttl_seconds
    account = await create(sessions, sealer, settings, now=long_ago)
    assert account.expires_at < time.time()
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}")
    assert resp.status == 200  # served: nats-server decides what an expired JWT means
    assert "max-age=0" in resp.headers["Cache-Control"]
    assert "-" not in resp.headers["Cache-Control"].split("max-age=")[1].split(",")[0]
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}?check=true")
    assert resp.status == 404
    assert resp.content_type == "text/plain"
    assert "expired" in await resp.text()


async def test_check_passes_for_a_live_account(
    client: TestClient, sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    account = await create(sessions, sealer, settings)
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}?check=true")
    assert resp.status == 200 and (await resp.text()) == account.jwt


async def test_text_and_decode_views(
    client: TestClient, sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    account = await create(sessions, sealer, settings)
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}?text=true")
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert (await resp.text()) == account.jwt

    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}?decode=true")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert '"alg": "ed25519-nkey"' in text
    assert f'"sub": "{account.public_key}"' in text
    assert re.search(rf'"iat": {account.issued_at} \(\d{{4}}-\d\d-\d\d ', text)
    assert re.search(rf'"exp": {account.expires_at} \(', text)
    assert text.rstrip().endswith(account.jwt.split(".")[2])


async def test_notify_queues_one_repush(
    client: TestClient, sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    account = await create(sessions, sealer, settings)
    # The create's own push is still pending: a notify adds nothing while it is.
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}?notify=true")
    assert resp.status == 200 and (await resp.text()) == account.jwt
    assert len(await outbox_rows(sessions, account.public_key)) == 1
    async with sessions() as session, session.begin():
        for row in await outbox_rows(sessions, account.public_key):
            merged = await session.merge(row)
            merged.status = "done"
    resp = await client.get(f"/jwt/v1/accounts/{account.public_key}?notify=true")
    assert resp.status == 200
    await client.get(f"/jwt/v1/accounts/{account.public_key}?notify=true")
    rows = await outbox_rows(sessions, account.public_key)
    assert [(r.status, r.jti, r.jwt) for r in rows] == [
        ("done", account.jti, account.jwt),
        ("pending", account.jti, account.jwt),
    ]


def _broken_checksum(key: str) -> str:
    # Another last character always breaks the CRC16 (it encodes checksum bits only).
    return key[:-1] + ("B" if key.endswith("A") else "A")


async def test_malformed_and_unknown_keys(client: TestClient) -> None:
    for bad in (
        "nope",
        "U" + "A" * 55,
        new_keypair("user")[0],
        _broken_checksum(new_keypair("account")[0]),
    ):
        resp = await client.get(f"/jwt/v1/accounts/{bad}")
        assert resp.status == 400, bad
        assert resp.content_type == "text/plain"
    unknown = new_keypair("account")[0]
    resp = await client.get(f"/jwt/v1/accounts/{unknown}")
    assert resp.status == 404
    assert resp.content_type == "text/plain"
    assert unknown in await resp.text()


async def test_operator_on_v1_and_v2(client: TestClient, operator: Operator) -> None:
    for path in ("/jwt/v1/operator", "/jwt/v2/operator"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "application/jwt"
        token = decode(await resp.text(), expected_type="operator")
        assert token.subject == operator.public_key


async def test_help(client: TestClient) -> None:
    resp = await client.get("/jwt/v1/help")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    for route in ("/jwt/v1/accounts/<", "POST /jwt/v1/accounts", "/jwt/v1/pack", "notify"):
        assert route in text


async def test_pack(
    client: TestClient, sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    resp = await client.get("/jwt/v1/pack")
    assert resp.status == 200
    lines = (await resp.text()).splitlines()
    pairs = dict(line.split("|", 1) for line in lines)
    assert pairs[account.public_key] == account.jwt
    assert operator.system_account_key in pairs and len(pairs) == 2
    for key, token in pairs.items():
        assert decode(token).subject == key

    resp = await client.get("/jwt/v1/pack?max=1")
    assert len((await resp.text()).splitlines()) == 1
    for bad in ("x", "-1", "1000000"):
        resp = await client.get(f"/jwt/v1/pack?max={bad}")
        assert resp.status == 400, bad
