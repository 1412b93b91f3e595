"""Bad input is a 4xx SCIM error, stores nothing, and is never a 500."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from resolver.config import ServerSettings, Settings
from tests.scim.conftest import GROUP, USER, Client, Scim, _make_tokens, build_app, patch


async def _nothing_stored(scim: Scim) -> None:
    assert (await scim.get("/Users")).body["totalResults"] == 0
    assert (await scim.get("/Groups")).body["totalResults"] == 0


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "scim_type"),
    [
        (b'{"userName": ', "application/scim+json", 400, "invalidSyntax"),
        (b"\xff\xfe", "application/json", 400, "invalidSyntax"),
        (b'{"userName": NaN}', "application/json", 400, "invalidSyntax"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "invalidSyntax"),
        (b'"just a string"', "application/json", 400, "invalidSyntax"),
        (b'{"userName": "x"}', "text/plain", 415, None),
        (b'{"userName": "x"}', "application/x-www-form-urlencoded", 415, None),
        (b'{"userName": "x"}', "application/json; charset=latin-1", 415, None),
        (b'{"userName": "a\\u0000b"}', "application/json", 400, "invalidValue"),
        (b'{"userName": "\\ud800"}', "application/json", 400, "invalidValue"),
        (b'{"schemas": ["urn:nope"], "userName": "x"}', "application/json", 400, "invalidSyntax"),
        (b'{"schemas": "urn:x", "userName": "x"}', "application/json", 400, "invalidSyntax"),
        (b'{"schemas": ["' + USER.encode() + b'"]}', "application/json", 400, "invalidValue"),
        (b'{"userName": "' + b"x" * 300 + b'"}', "application/json", 400, "invalidValue"),
        (b'{"userName": "x", "active": "maybe"}', "application/json", 400, "invalidValue"),
    ],
)
async def test_bad_user_bodies(
    scim: Scim, raw: bytes, content_type: str, status: int, scim_type: str | None
) -> None:
    reply = await scim.call("POST", "/Users", raw=raw, headers={"Content-Type": content_type})
    assert reply.status == status, reply.body
    assert reply.scim_type == scim_type
    await _nothing_stored(scim)


async def test_bad_group_bodies_and_patches(scim: Scim) -> None:
    for body in (
        {"schemas": [GROUP]},
        {"schemas": [GROUP], "displayName": ""},
        {"schemas": [GROUP], "displayName": "G", "members": [{"display": "no value"}]},
        {"schemas": [GROUP], "displayName": "G", "members": "nope"},
    ):
        reply = await scim.post("/Groups", body)
        assert reply.status == 400, (body, reply.body)
    await _nothing_stored(scim)
    group = await scim.group("G")
    for body, scim_type in (
        ({"Operations": []}, "invalidSyntax"),
        (patch(), "invalidSyntax"),
        (patch({"op": "explode", "path": "displayName"}), "invalidSyntax"),
        (patch({"op": "remove"}), "noTarget"),
        (patch({"op": "replace", "path": "displayName["}), "invalidPath"),
        (patch({"op": "replace", "path": "displayName", "value": ""}), "invalidValue"),
        (patch({"op": "remove", "path": 'members[display eq "x"]'}), "invalidFilter"),
    ):
        reply = await scim.patch(f"/Groups/{group['id']}", body)
        assert reply.status == 400 and reply.scim_type == scim_type, (body, reply.body)
    after = await scim.get(f"/Groups/{group['id']}")
    assert after.body["meta"]["version"] == 'W/"1"' and after.body["displayName"] == "G"


async def test_unknown_routes_and_methods_are_scim_errors(scim: Scim) -> None:
    assert (await scim.get("/Nope")).status == 404
    assert (await scim.get("/Users/not-a-uuid")).status == 404
    assert (await scim.get("/Users/%00")).status == 404
    assert (await scim.call("PATCH", "/Users", {})).status == 405
    assert (await scim.call("DELETE", "/Groups")).status == 405


async def test_bad_query_parameters(scim: Scim) -> None:
    for query, scim_type in (
        ("filter=userName%20eq", "invalidFilter"),
        ("filter=password%20eq%20%22x%22", "invalidFilter"),
        ("filter=userName%20eq%20%22a%00b%22", "invalidFilter"),
        ("startIndex=first", "invalidValue"),
        ("count=1.5", "invalidValue"),
    ):
        reply = await scim.get(f"/Users?{query}")
        assert reply.status == 400 and reply.scim_type == scim_type, (query, reply.body)


@pytest.fixture
async def small(settings: Settings, engine: Any, aiohttp_client: Client) -> Scim:
    limited = replace(settings, server=ServerSettings(max_body_bytes=2048))
    tokens = await _make_tokens(engine)
    http: TestClient = await aiohttp_client(build_app(limited))
    return Scim(http, tokens["scim"], engine, tokens["admin"], tokens)


async def test_oversized_body_is_413_in_scim_format(small: Scim) -> None:
    body = {"schemas": [USER], "userName": "big", "title": "x" * 5000}
    reply = await small.post("/Users", body)
    assert reply.status == 413 and reply.body["status"] == "413"
    assert (await small.get("/Users")).body["totalResults"] == 0


async def test_invalid_utf8_in_the_url_is_never_a_500(scim: Scim) -> None:
    for query in ("%ED%A0%80", "%FF%FE", "%C0%AF"):
        for resource in ("Users", "Groups"):
            reply = await scim.get(f"/{resource}?filter=userName%20eq%20%22{query}%22")
            assert reply.status in (200, 400), (query, reply.body)
        assert (await scim.get(f"/Users?attributes={query}")).status in (200, 400)
        assert (await scim.get(f"/Users/{query}")).status == 404
