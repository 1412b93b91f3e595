"""``GET /admin/v1/audit`` and what the changes behind it write, on SQLite and PostgreSQL.

A history is made the way an IdP and an operator make one (HTTP only): SCIM users and a
group, an account, a role, a binding, a person's and a workload's credentials, a
deactivation (which revokes), a revocation by hand. Then: every row names the person and
the account it is about, the filters find exactly those rows, pages walk everything once,
bad parameters are 400s that say why, and no secret is in any row.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from resolver.db.models import AuditEntry
from resolver.natsjwt import parse_creds
from tests.admin.api import Api, Sessions, state

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
WRITER = {"name": "writer", "publish": ["orders.>"], "subscribe": ["orders.>"]}


@pytest.fixture
def api(client: TestClient, tokens: dict[str, str]) -> Api:
    return Api(client, tokens)


@pytest.fixture
async def history(api: Api) -> dict[str, Any]:
    orders = await api.ok("POST", "/admin/v1/accounts", {"name": "ORDERS"})
    other = await api.ok("POST", "/admin/v1/accounts", {"name": "OTHER"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    alice = await api.user("alice")
    bob = await api.user("bob")
    eng = await api.group("eng", [alice])
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "eng"}
    )
    person = await api.creds("alice", "ORDERS")  # made here: the answer holds her seed
    workload = await api.ok(
        "POST", "/admin/v1/accounts/ORDERS/users", {"name": "batch", "ttl": "1h"}
    )
    await api.ok(
        "POST",
        "/admin/v1/accounts/ORDERS/revocations",
        {"user_key": workload["user_key"], "reason": "rotated"},
    )
    await api.ok(
        "PATCH",
        f"/scim/v2/Groups/{eng}",
        {
            "schemas": [PATCH_OP],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": bob}]}],
        },
        token="scim",
    )
    await api.ok(
        "PATCH",
        f"/scim/v2/Users/{alice}",
        {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": False}}]},
        token="scim",
    )
    await api.ok("PATCH", "/admin/v1/accounts/OTHER", {"spec": {"description": "x"}})
    return {
        "orders": orders["public_key"],
        "other": other["public_key"],
        "alice": alice,
        "bob": bob,
        "eng": eng,
        "person": person,
        "workload": workload,
    }


async def rows(sessions: Sessions) -> list[AuditEntry]:
    async with sessions() as session:
        return list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


async def get(api: Api, params: dict[str, str] | str, token: str | None = "admin:read") -> Any:
    query = params if isinstance(params, str) else urlencode(params)
    return await api.call("GET", f"/admin/v1/audit?{query}", token=token)


async def entries(api: Api, **params: str) -> list[dict[str, Any]]:
    status, body = await get(api, params)
    assert status == 200, body
    return body["entries"]


async def test_every_change_names_its_person_and_account(
    api: Api, sessions: Sessions, history: dict[str, Any]
) -> None:
    orders, other = history["orders"], history["other"]
    found = {(e.action, e.user_name, e.account_key) for e in await rows(sessions)}
    expected = {
        ("account.create", None, orders),
        ("account.create", None, other),
        ("policy.role.create", None, None),
        ("scim.user.create", "alice", None),
        ("scim.user.create", "bob", None),
        ("scim.group.create", None, None),
        # One member changed: the row names them.
        ("scim.group.members", "alice", None),
        ("scim.group.members", "bob", None),
        ("policy.binding.create", None, orders),
        ("policy.user.issue", "alice", orders),
        ("account.user.issue", "batch", orders),
        ("account.revoke", "batch", orders),
        ("scim.user.patch", "alice", None),
        ("scim.user.deactivate", "alice", None),
        # The deprovision: her key revoked in ORDERS, under the SCIM token's name.
        ("policy.revoke", "alice", orders),
        ("account.update", None, other),
    }
    assert expected <= found, expected - found
    by_action = {e.action: e for e in await rows(sessions)}
    assert by_action["policy.revoke"].actor == "t-scim"
    assert by_action["policy.revoke"].details["names"] == ["alice"]
    assert by_action["policy.user.issue"].actor == "t-admin"
    assert by_action["scim.user.deactivate"].details["userName"] == "alice"


async def test_no_row_holds_a_secret(
    api: Api, sessions: Sessions, tokens: dict[str, str], history: dict[str, Any]
) -> None:
    person_seed = parse_creds(history["person"]["creds"])[1].decode()
    workload_seed = parse_creds(history["workload"]["creds"])[1].decode()
    assert person_seed.startswith("SU") and workload_seed.startswith("SU")
    everything = json.dumps([[e.actor, e.target, e.details] for e in await rows(sessions)])
    body = json.dumps(await entries(api, limit="1000"))
    for secret in (person_seed, workload_seed, *tokens.values()):
        assert secret not in everything and secret not in body


async def test_filters_find_exactly_their_rows(
    api: Api, sessions: Sessions, history: dict[str, Any]
) -> None:
    everything = await entries(api, limit="1000")
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True), "newest first"
    assert len(everything) == len(await rows(sessions))
    assert list(everything[0]) == [
        "id",
        "at",
        "actor",
        "action",
        "target",
        "user",
        "account",
        "request_id",
        "source",
        "details",
    ]
    first = everything[-1]
    assert first["at"].endswith("+00:00") and first["request_id"] and first["source"]

    def where(**match: Any) -> list[int]:
        return [e["id"] for e in everything if all(e[k] == v for k, v in match.items())]

    alice = await entries(api, user="alice")
    assert [e["id"] for e in alice] == where(user="alice") and len(alice) >= 6
    assert {e["action"] for e in alice} >= {"policy.user.issue", "policy.revoke"}
    # An account by name or by public key: the same rows.
    by_name = await entries(api, account="ORDERS")
    assert [e["id"] for e in by_name] == where(account=history["orders"])
    assert await entries(api, account=history["orders"]) == by_name
    both = await entries(api, user="alice", account="ORDERS")
    assert [e["id"] for e in both] == where(user="alice", account=history["orders"])
    assert {e["action"] for e in both} == {"policy.user.issue", "policy.revoke"}
    # Actions: exact, or a prefix.
    assert [e["id"] for e in await entries(api, action="scim.user.patch")] == where(
        action="scim.user.patch"
    )
    prefixed = await entries(api, action="scim.user.*")
    assert {e["action"] for e in prefixed} == {
        "scim.user.create",
        "scim.user.patch",
        "scim.user.deactivate",
    }
    assert await entries(api, action="scim.user*") == prefixed
    assert await entries(api, action="scim.user") == []  # exact means exact
    # "_" and "%" are not wildcards in a prefix.
    assert await entries(api, action="scim_user.*") == []
    assert [e["id"] for e in await entries(api, actor="t-scim")] == where(actor="t-scim")
    assert [e["id"] for e in await entries(api, target=history["alice"])] == where(
        target=history["alice"]
    )
    # Time: since inclusive, until exclusive.
    middle = everything[len(everything) // 2]
    since = await entries(api, since=middle["at"], limit="1000")
    assert middle["id"] in [e["id"] for e in since]
    assert all(e["at"] >= middle["at"] for e in since)
    until = await entries(api, until=middle["at"], limit="1000")
    assert middle["id"] not in [e["id"] for e in until]
    assert all(e["at"] < middle["at"] for e in until)
    assert len(since) + len(until) == len(everything)
    assert await entries(api, since="2999-01-01") == []
    assert len(await entries(api, until="2999-01-01T00:00:00+02:00", limit="1000")) == len(
        everything
    )


async def test_pages_walk_everything_once_by_cursor(
    api: Api, history: dict[str, Any], tokens: dict[str, str]
) -> None:
    everything = await entries(api, limit="1000")
    seen: list[int] = []
    url = "/admin/v1/audit?limit=3"
    pages = 0
    while url:
        status, body = await api.call("GET", url, token="admin:read")
        assert status == 200, body
        assert len(body["entries"]) <= 3
        seen += [e["id"] for e in body["entries"]]
        if body["next"] is not None:
            assert body["next"] == body["entries"][-1]["id"]
            assert f"before={body['next']}" in body["next_url"]
        url = body["next_url"]
        pages += 1
    assert seen == [e["id"] for e in everything]
    assert pages == -(-len(everything) // 3)
    # The filters ride along in next_url.
    status, body = await get(api, {"user": "alice", "limit": "1"})
    assert status == 200 and "user=alice" in body["next_url"]
    status, second = await api.call("GET", body["next_url"], token="admin:read")
    assert [e["user"] for e in second["entries"]] == ["alice"]
    assert second["entries"][0]["id"] < body["entries"][0]["id"]
    # A page written after the first read does not shift the next one.
    status, page = await get(api, {"limit": "2"})
    await api.user("carol")
    status, after = await api.call("GET", page["next_url"], token="admin:read")
    assert [e["id"] for e in after["entries"]] == [e["id"] for e in everything[2:4]]


# One test walks every case: each parametrized case paid a whole app and history set-up.
BAD_PARAMETERS = [
    ("since=yesterday", "RFC 3339"),
    ("since=2026-11-26T10:00:00", "time zone"),
    ("since=2026-02-30", "valid date"),
    ("since=2026-11-02&until=2026-11-01", "later than since"),
    ("limit=0", "1 to 1000"),
    ("limit=1001", "1 to 1000"),
    ("limit=ten", "1 to 1000"),
    ("before=abc", "row id"),
    ("before=-1", "row id"),
    ("acount=ORDERS", "unknown query parameter"),
    ("user=alice&user=bob", "more than once"),
    ("action=scim.*.create", "prefix"),
    ("action=a%20b", "prefix"),
    ("user=", "empty"),
    ("actor=" + "x" * 300, "256"),
    ("account=NOPE", "no account is named 'NOPE'"),
]


async def test_bad_parameters_are_400s_that_say_why(
    api: Api, sessions: Sessions, history: dict[str, Any]
) -> None:
    before = await state(sessions)
    for query, fragment in BAD_PARAMETERS:
        status, body = await get(api, query)
        assert status == 400 and fragment in body["message"], (query, body)
        assert body["error"] == "invalid_request", query
    assert await state(sessions) == before


async def test_scopes(api: Api, history: dict[str, Any]) -> None:
    assert (await get(api, {}, token=None))[0] == 401
    assert (await get(api, {}, token="scim"))[0] == 403
    assert (await get(api, {}, token="admin"))[0] == 200
    status, body = await get(api, {})
    assert status == 200 and 0 < len(body["entries"]) <= 100


async def test_a_deleted_account_is_found_by_its_former_name(
    api: Api, sessions: Sessions, history: dict[str, Any]
) -> None:
    await api.ok("DELETE", "/admin/v1/accounts/OTHER")
    found = await entries(api, account="OTHER")
    assert {e["action"] for e in found} == {"account.create", "account.update", "account.delete"}
    assert {e["account"] for e in found} == {history["other"]}
    # A new account under the old name: both histories.
    again = await api.ok("POST", "/admin/v1/accounts", {"name": "OTHER"})
    found = await entries(api, account="OTHER")
    assert {e["account"] for e in found} == {history["other"], again["public_key"]}
    assert [e["account"] for e in await entries(api, account=again["public_key"])] == [
        again["public_key"]
    ]


async def test_time_filter_matches_stored_times(
    api: Api, sessions: Sessions, history: dict[str, Any]
) -> None:
    """``at`` compared in SQL as the database stores it (SQLite: text) and as given with an
    offset: the same instant written two ways selects the same rows."""
    everything = await entries(api, limit="1000")
    pivot = everything[3]
    async with sessions() as session:
        at = await session.scalar(select(AuditEntry.at).where(AuditEntry.id == pivot["id"]))
    assert at is not None
    shifted = (at + timedelta(hours=2)).isoformat().replace("+00:00", "+02:00")
    zulu = at.isoformat().replace("+00:00", "Z")
    assert await entries(api, since=shifted, limit="1000") == await entries(
        api, since=zulu, limit="1000"
    )
