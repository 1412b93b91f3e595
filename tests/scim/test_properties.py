"""Property tests through the HTTP layer: PATCH bodies and filters never cause a 5xx, and a
refused PATCH leaves the database exactly as it was (no partial writes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from resolver.config import Settings
from resolver.db import migrate
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import Group, GroupMember, User
from tests.scim.conftest import GROUP, PATCH_OP, USER, _make_tokens, build_app


class Harness:
    """A running app on its own event loop, so hypothesis can drive it synchronously."""

    def __init__(self, config: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = create_engine(config.database_url)
        self.loop.run_until_complete(migrate.upgrade(self.engine))
        self.token = self.loop.run_until_complete(_make_tokens(self.engine))["scim"]

        async def start() -> TestClient:
            client = TestClient(TestServer(build_app(config)))
            await client.start_server()
            return client

        self.client = self.loop.run_until_complete(start())
        self.user_ids = [
            self.create("/Users", {"schemas": [USER], "userName": f"u{i}"}) for i in range(3)
        ]
        members = [{"value": i} for i in self.user_ids[:2]]
        self.group_id = self.create(
            "/Groups", {"schemas": [GROUP], "displayName": "g", "members": members}
        )

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                headers["Content-Type"] = "application/scim+json"
                data = json.dumps(body)
            resp = await self.client.request(method, path, data=data, headers=headers)
            text = await resp.text()
            return resp.status, text

        return self.loop.run_until_complete(go())

    def create(self, path: str, body: Any) -> str:
        status, text = self.request("POST", "/scim/v2" + path, body)
        assert status == 201, text
        return str(json.loads(text)["id"])

    def snapshot(self) -> Any:
        async def go() -> Any:
            async with create_sessionmaker(self.engine)() as session:
                users = (await session.execute(select(User).order_by(User.id))).scalars()
                groups = (await session.execute(select(Group).order_by(Group.id))).scalars()
                members = await session.execute(
                    select(GroupMember.group_id, GroupMember.user_id, GroupMember.display).order_by(
                        GroupMember.group_id, GroupMember.user_id
                    )
                )
                return (
                    [
                        (u.id, u.user_name, u.active, u.version, json.dumps(u.resource))
                        for u in users
                    ],
                    [(g.id, g.display_name, g.version, json.dumps(g.resource)) for g in groups],
                    [tuple(m) for m in members],
                )

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


@pytest.fixture
def harness(settings: Settings) -> Iterator[Harness]:
    running = Harness(settings)
    try:
        yield running
    finally:
        running.close()


ATTRIBUTES = [
    "userName", "displayName", "active", "externalId", "title", "name", "name.givenName",
    "emails", "emails.value", "members", "members.value", "id", "meta", "groups", "password",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    "urn:ietf:params:scim:schemas:core:2.0:User:userName", "urn:x:unknown:attr", "nosuch",
]  # fmt: skip
OPERATORS = ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "pr", "EQ", "zz"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["True", "False", "u", "", "x" * 300]),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from([*ATTRIBUTES, "value", "display", "type"]) | st.text(max_size=8),
            children,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@st.composite
def filters(draw: st.DrawFn) -> str:
    def literal() -> str:
        return draw(
            st.sampled_from(
                ['"u0"', '"x"', "true", "False", "null", "42", '"2020-01-01T00:00:00Z"', "bare"]
            )
            | st.text(max_size=6).map(json.dumps)
        )

    def term(depth: int) -> str:
        choice = draw(st.integers(0, 5 if depth < 3 else 1))
        attribute = draw(st.sampled_from(ATTRIBUTES))
        if choice == 0:
            return f"{attribute} {draw(st.sampled_from(OPERATORS))} {literal()}"
        if choice == 1:
            return f"{attribute} pr"
        if choice == 2:
            joiner = draw(st.sampled_from(["and", "or", "OR"]))
            return f"({term(depth + 1)} {joiner} {term(depth + 1)})"
        if choice == 3:
            return f"not ({term(depth + 1)})"
        if choice == 4:
            return f"{attribute}[{term(depth + 1)}]"
        return draw(st.text(max_size=15))

    return term(0)


@st.composite
def operations(draw: st.DrawFn, harness_ids: tuple[str, ...]) -> Any:
    op = draw(st.sampled_from(["add", "Add", "replace", "Replace", "remove", "Remove", "bogus"]))
    path = draw(
        st.none()
        | st.sampled_from(ATTRIBUTES)
        | st.sampled_from(harness_ids).map(lambda i: f'members[value eq "{i}"]')
        | filters()
    )
    member = st.sampled_from([*harness_ids, "nobody", ""]).map(lambda i: {"value": i})
    value = draw(
        json_values
        | st.lists(member, max_size=3)
        | st.dictionaries(st.sampled_from(ATTRIBUTES), json_values, max_size=3)
    )
    operation: dict[str, Any] = {"op": op}
    if path is not None:
        operation["path"] = path
    if draw(st.booleans()):
        operation["value"] = value
    return operation


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(data=st.data())
def test_patch_bodies_never_5xx_and_never_write_partially(
    harness: Harness, data: st.DataObject
) -> None:
    ids = (*harness.user_ids, harness.group_id)
    structured = st.fixed_dictionaries(
        {
            "schemas": st.just([PATCH_OP]),
            "Operations": st.lists(operations(ids), min_size=1, max_size=4),
        }
    )
    body = data.draw(structured | json_values)
    target = data.draw(
        st.sampled_from([f"/Groups/{harness.group_id}", f"/Users/{harness.user_ids[0]}"])
    )
    before = harness.snapshot()
    status, text = harness.request("PATCH", "/scim/v2" + target, body)
    assert status < 500, (body, text)
    if status >= 400:
        assert harness.snapshot() == before, (body, text)
        assert json.loads(text)["status"] == str(status)


@SETTINGS
@given(expression=filters(), resource=st.sampled_from(["Users", "Groups"]))
def test_filters_never_5xx(harness: Harness, expression: str, resource: str) -> None:
    status, text = harness.request("GET", f"/scim/v2/{resource}?filter={quote(expression)}")
    assert status in (200, 400), (expression, text)
    if status == 400:
        assert json.loads(text)["scimType"] == "invalidFilter", (expression, text)
