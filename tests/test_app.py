from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from resolver.app import create_app
from resolver.config import Settings
from resolver.errors import ConflictError
from resolver.http.handling import add_routes
from resolver.logs import configure_logging

Client = Callable[..., Any]


@pytest.fixture
async def client(settings: Settings, engine: Any, aiohttp_client: Client) -> TestClient:
    app = create_app(settings)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret SUAEXAMPLESEED must not leak")

    async def conflict(request: web.Request) -> web.Response:
        raise ConflictError("that name is taken")

    add_routes(app, [web.get("/_test/boom", boom), web.get("/_test/conflict", conflict)])
    return await aiohttp_client(app)


async def test_healthz_and_readyz(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["database"] == "ok" and body["schema"]


async def test_readyz_fails_when_schema_is_not_at_head(
    settings: Settings, aiohttp_client: Client
) -> None:
    # No `engine` fixture: this database was never migrated.
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["schema"] is None


async def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = resp.headers["X-Request-ID"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    resp = await client.get("/healthz")
    assert resp.headers["X-Request-ID"] != generated


async def test_domain_errors_become_json(client: TestClient) -> None:
    resp = await client.get("/_test/conflict", headers={"X-Request-ID": "r1"})
    assert resp.status == 409
    assert await resp.json() == {
        "error": "conflict",
        "message": "that name is taken",
        "request_id": "r1",
    }
    resp = await client.get("/no/such/route")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_unexpected_error_is_a_bare_500(client: TestClient) -> None:
    resp = await client.get("/_test/boom", headers={"X-Request-ID": "r2"})
    assert resp.status == 500
    text = await resp.text()
    assert "Traceback" not in text and "SUAEXAMPLESEED" not in text and "RuntimeError" not in text
    assert json.loads(text) == {
        "error": "internal",
        "message": "internal error",
        "request_id": "r2",
    }


def test_the_scheduler_does_not_log_every_job_run() -> None:
    root, quieted = logging.getLogger(), logging.getLogger("apscheduler.executors")
    executors = logging.getLogger("apscheduler.executors.default")
    saved = (root.handlers[:], root.level, quieted.level)
    try:
        configure_logging("INFO", "text")
        assert logging.getLogger("resolver.jobs.prune").isEnabledFor(logging.INFO)
        assert not executors.isEnabledFor(logging.INFO)  # "Running job ..." every second
        assert executors.isEnabledFor(logging.WARNING)  # missed runs still show
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        quieted.setLevel(saved[2])


async def test_every_log_line_carries_the_request_id(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO", "json")
        await client.get("/healthz", headers={"X-Request-ID": "trace-me"})
        await client.get("/_test/boom", headers={"X-Request-ID": "trace-boom"})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    access = [entry for entry in lines if entry.get("path") == "/healthz"]
    assert access and access[0]["request_id"] == "trace-me" and access[0]["status"] == 200
    boom = [entry for entry in lines if entry["request_id"] == "trace-boom"]
    assert any("unhandled error" in entry["message"] for entry in boom)
    assert all(entry["request_id"] == "trace-boom" for entry in boom)
