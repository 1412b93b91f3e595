"""Bearer tokens: a SCIM token only reaches /scim, an admin token never does."""

from __future__ import annotations

import pytest

from tests.scim.conftest import ERROR, Scim


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer nir_wrong",
        "Basic dXNlcjpwYXNz",
        "Bearer nir_AAAAAAAAAAAAAAAA_" + "x" * 43,
    ],
)
async def test_missing_or_wrong_token_is_401_with_www_authenticate(
    scim: Scim, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/scim/v2/Users", "/scim/v2/ServiceProviderConfig", "/scim/v2/Groups/x"):
        resp = await scim.http.get(path, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert resp.content_type == "application/scim+json"
        body = await resp.json(content_type=None)
        assert body["schemas"] == [ERROR] and body["status"] == "401"


async def test_admin_token_cannot_call_scim(scim: Scim) -> None:
    reply = await scim.get("/Users", token=scim.admin_token)
    assert reply.status == 403 and reply.body["status"] == "403"
    reply = await scim.post("/Users", {"userName": "x"}, token=scim.admin_token)
    assert reply.status == 403
    assert (await scim.get("/Users")).body["totalResults"] == 0


async def test_scim_token_cannot_call_admin(scim: Scim) -> None:
    scim_auth = {"Authorization": f"Bearer {scim.token}"}
    for path in ("/admin/_probe", "/admin/v1/accounts"):
        resp = await scim.http.get(path, headers=scim_auth)
        assert resp.status == 403, path
    ok = await scim.http.get(
        "/admin/_probe", headers={"Authorization": f"Bearer {scim.admin_token}"}
    )
    assert ok.status == 200


async def test_tokens_never_appear_in_responses_or_audit(scim: Scim) -> None:
    user = await scim.user("who@example.com")
    reply = await scim.get(f"/Users/{user['id']}")
    assert scim.token not in str(reply.body) and scim.token not in str(dict(reply.headers))
    (entry,) = await scim.audit("scim.user.create")
    assert entry.actor == "okta-scim"
    secret = scim.token.split("_", 2)[2]  # the secret itself may contain "_"
    assert secret and secret not in str(entry.details)
