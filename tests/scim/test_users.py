"""/scim/v2/Users over HTTP on SQLite and PostgreSQL: CRUD, ETags, paging, filters."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.scim.conftest import ENTERPRISE, SEARCH, USER, Scim, patch


async def test_create_get_replace_delete(scim: Scim) -> None:
    created = await scim.post(
        "/Users",
        {
            "schemas": [USER, ENTERPRISE],
            "userName": "bjensen@example.com",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "BJensen@Example.com", "type": "work", "primary": True}],
            "active": True,
            ENTERPRISE: {"employeeNumber": "701984", "department": "Tour Operations"},
        },
    )
    assert created.status == 201
    user = created.body
    assert created.headers["ETag"] == 'W/"1"' == user["meta"]["version"]
    assert created.headers["Location"] == user["meta"]["location"]
    assert user["meta"]["location"].endswith(f"/scim/v2/Users/{user['id']}")
    assert user["meta"]["resourceType"] == "User"
    assert user[ENTERPRISE]["employeeNumber"] == "701984"
    assert user["schemas"] == [USER, ENTERPRISE]

    got = await scim.get(f"/Users/{user['id']}")
    assert got.status == 200 and got.body == user

    replaced = await scim.put(
        f"/Users/{user['id']}",
        {"schemas": [USER], "userName": "bjensen@example.com", "displayName": "Babs"},
    )
    assert replaced.status == 200
    assert replaced.body["displayName"] == "Babs" and "name" not in replaced.body
    assert replaced.body["meta"]["version"] == 'W/"2"'

    assert (await scim.delete(f"/Users/{user['id']}")).status == 204
    gone = await scim.get(f"/Users/{user['id']}")
    assert gone.status == 404 and gone.body["detail"]
    assert (await scim.delete(f"/Users/{user['id']}")).status == 404


async def test_user_name_is_unique_case_insensitively(scim: Scim) -> None:
    await scim.user("Alice@Example.com")
    clash = await scim.post("/Users", {"schemas": [USER], "userName": "alice@example.COM"})
    assert clash.status == 409 and clash.scim_type == "uniqueness"
    other = await scim.user("bob@example.com")
    rename = await scim.put(
        f"/Users/{other['id']}", {"schemas": [USER], "userName": "ALICE@example.com"}
    )
    assert rename.status == 409 and rename.scim_type == "uniqueness"
    assert (await scim.get(f"/Users/{other['id']}")).body["userName"] == "bob@example.com"


async def test_etags_if_match_and_if_none_match(scim: Scim) -> None:
    user = await scim.user("etag@example.com")
    path = f"/Users/{user['id']}"
    unchanged = await scim.get(path, headers={"If-None-Match": 'W/"1"'})
    assert unchanged.status == 304 and unchanged.headers["ETag"] == 'W/"1"'
    assert (await scim.get(path, headers={"If-None-Match": 'W/"7"'})).status == 200

    body = patch({"op": "replace", "path": "displayName", "value": "E"})
    stale = await scim.patch(path, body, headers={"If-Match": 'W/"9"'})
    assert stale.status == 412
    fresh = await scim.patch(path, body, headers={"If-Match": 'W/"1"'})
    assert fresh.status == 200 and fresh.headers["ETag"] == 'W/"2"'
    assert (await scim.delete(path, headers={"If-Match": 'W/"1"'})).status == 412
    assert (await scim.get(path)).body["displayName"] == "E"
    assert (await scim.delete(path, headers={"If-Match": "*"})).status == 204


async def test_pagination_is_stable_and_one_based(scim: Scim) -> None:
    ids = {(await scim.user(f"user{i:02d}@example.com"))["id"] for i in range(7)}
    seen: list[str] = []
    for start in (1, 4, 7):
        page = await scim.get(f"/Users?startIndex={start}&count=3")
        assert page.status == 200
        assert page.body["totalResults"] == 7 and page.body["startIndex"] == start
        assert page.body["itemsPerPage"] == len(page.body["Resources"])
        seen += [r["id"] for r in page.body["Resources"]]
    assert len(seen) == 7 and set(seen) == ids
    again = await scim.get("/Users?startIndex=1&count=100")
    assert [r["id"] for r in again.body["Resources"]] == seen
    only_total = await scim.get("/Users?count=0")
    assert only_total.body["totalResults"] == 7 and only_total.body["Resources"] == []
    beyond = await scim.get(f"/Users?startIndex={10**30}&count=-5")
    assert beyond.status == 200 and beyond.body["Resources"] == []
    bad = await scim.get("/Users?count=lots")
    assert bad.status == 400 and bad.scim_type == "invalidValue"


async def test_attributes_and_excluded_attributes(scim: Scim) -> None:
    user = await scim.user(
        "proj@example.com", displayName="P", name={"givenName": "G", "familyName": "F"}
    )
    only = await scim.get(f"/Users/{user['id']}?attributes=displayName,name.givenName")
    assert only.body == {
        "schemas": [USER],
        "id": user["id"],
        "displayName": "P",
        "name": {"givenName": "G"},
    }
    without = await scim.get(f"/Users/{user['id']}?excludedAttributes=name,meta")
    assert "name" not in without.body and "meta" not in without.body
    assert without.body["userName"] == "proj@example.com"
    listed = await scim.get("/Users?attributes=userName")
    assert listed.body["Resources"] == [
        {"schemas": [USER], "id": user["id"], "userName": "proj@example.com"}
    ]


async def _ids(scim: Scim, expression: str) -> set[str]:
    reply = await scim.get(f"/Users?filter={quote(expression)}")
    assert reply.status == 200, (expression, reply.body)
    return {r["userName"] for r in reply.body["Resources"]}


async def test_filters_are_translated_to_sql(scim: Scim) -> None:
    await scim.user(
        "ann@example.com",
        displayName="Ann",
        title="Engineer",
        emails=[{"value": "ann@work.example", "type": "work"}],
        externalId="ext-1",
    )
    await scim.user(
        "bob@example.org",
        displayName="Bob",
        emails=[{"value": "bob@home.example", "type": "home"}],
        active=False,
    )
    await scim.user("cy@example.com", name={"familyName": "Young"})
    cases = {
        'userName eq "ANN@example.com"': {"ann@example.com"},
        'userName ne "ann@example.com"': {"bob@example.org", "cy@example.com"},
        'userName co "example.c"': {"ann@example.com", "cy@example.com"},
        'userName sw "b"': {"bob@example.org"},
        'userName ew ".org"': {"bob@example.org"},
        "title pr": {"ann@example.com"},
        'displayName gt "Ann"': {"bob@example.org"},
        'displayName ge "Ann"': {"ann@example.com", "bob@example.org"},
        'displayName lt "Bob"': {"ann@example.com"},
        'displayName le "Bob"': {"ann@example.com", "bob@example.org"},
        "active eq false": {"bob@example.org"},
        'active eq "False"': {"bob@example.org"},
        'displayName eq "Ann" or name.familyName eq "Young"': {"ann@example.com", "cy@example.com"},
        'not (userName sw "a") and (active eq true)': {"cy@example.com"},
        'emails[type eq "work" and value co "@work"]': {"ann@example.com"},
        'emails.value ew "home.example"': {"bob@example.org"},
        "externalId eq ext-1": {"ann@example.com"},
        'meta.created gt "2000-01-01T00:00:00Z"': {
            "ann@example.com",
            "bob@example.org",
            "cy@example.com",
        },
    }
    for expression, expected in cases.items():
        assert await _ids(scim, expression) == expected, expression


@pytest.mark.parametrize(
    "expression",
    ['nosuch eq "x"', 'userName eq "x" and', "userName zz 1", 'active gt "x"', "(", ""],
)
async def test_bad_filters_are_400_invalid_filter(scim: Scim, expression: str) -> None:
    reply = await scim.get(f"/Users?filter={quote(expression)}")
    assert reply.status == 400 and reply.scim_type == "invalidFilter", reply.body


async def test_search_endpoints(scim: Scim) -> None:
    user = await scim.user("search@example.com")
    group = await scim.group("Searchers", [user["id"]])
    found = await scim.post(
        "/Users/.search",
        {"schemas": [SEARCH], "filter": 'userName eq "search@example.com"', "attributes": ["id"]},
    )
    assert found.status == 200 and found.body["Resources"] == [
        {"schemas": [USER], "id": user["id"]}
    ]
    everything = await scim.post("/.search", {"schemas": [SEARCH], "count": 10})
    assert everything.body["totalResults"] == 2
    assert [r["id"] for r in everything.body["Resources"]] == [user["id"], group["id"]]
    second = await scim.post("/.search", {"schemas": [SEARCH], "startIndex": 2, "count": 1})
    assert [r["id"] for r in second.body["Resources"]] == [group["id"]]
    by_name = await scim.post(
        "/.search", {"schemas": [SEARCH], "filter": 'displayName eq "Searchers"'}
    )
    assert [r["id"] for r in by_name.body["Resources"]] == [group["id"]]
    wrong = await scim.post("/Users/.search", {"filter": "userName pr"})
    assert wrong.status == 400 and wrong.scim_type == "invalidSyntax"


async def test_discovery_endpoints(scim: Scim) -> None:
    config = await scim.get("/ServiceProviderConfig")
    assert config.status == 200
    assert config.body["patch"]["supported"] is True and config.body["etag"]["supported"] is True
    assert config.body["authenticationSchemes"][0]["type"] == "oauthbearertoken"
    types = await scim.get("/ResourceTypes")
    assert {t["id"] for t in types.body["Resources"]} == {"User", "Group"}
    assert (await scim.get("/ResourceTypes/User")).body["schemaExtensions"][0][
        "schema"
    ] == ENTERPRISE
    schemas = await scim.get("/Schemas")
    names = {s["name"] for s in schemas.body["Resources"]}
    assert {"User", "Group", "EnterpriseUser", "Schema", "ResourceType"} <= names
    assert (await scim.get(f"/Schemas/{USER}")).body["id"] == USER
    assert (await scim.get("/Schemas/urn:nope")).status == 404
    assert (await scim.call("POST", "/ServiceProviderConfig", {})).status == 405


async def test_concurrent_twins_get_one_201_and_409s(scim: Scim) -> None:
    import asyncio

    body = {"schemas": [USER], "userName": "twin@example.com"}
    replies = await asyncio.gather(*(scim.post("/Users", body) for _ in range(6)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [201, 409, 409, 409, 409, 409], [r.body for r in replies]
    assert all(r.scim_type == "uniqueness" for r in replies if r.status == 409)
    assert (await scim.get("/Users")).body["totalResults"] == 1
