"""The scheduler's wrapper: shared jobs run on the leader only, and each run is recorded
(``job_runs``, ``GET /admin/v1/jobs``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.appkeys import JOB_LEADER, SESSIONMAKER
from resolver.cli import cli
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import JobRun
from resolver.jobs.leader import replica_name
from resolver.jobs.runs import RunRecord, save_run, summarize
from resolver.jobs.scheduler import LAST_RUNS, JobSpec, _logged
from tests.accounts.conftest import bearer, client, operator, sealer, sessions, tokens  # noqa: F401

#: What a careless job might put in an exception message: it must not reach the table.
SECRET = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"


class Election:
    """A registration standing in for the advisory lock: who leads is set by the test."""

    election = "test"

    def __init__(self, leading: bool) -> None:
        self.is_leader = leading


def job_app(sessions: async_sessionmaker[AsyncSession], leading: bool) -> web.Application:
    app = web.Application()
    app[SESSIONMAKER] = sessions
    app[JOB_LEADER] = Election(leading)
    app[LAST_RUNS] = {}
    return app


async def recorded(sessions: async_sessionmaker[AsyncSession], name: str) -> JobRun | None:
    async with sessions() as session:
        return await session.scalar(select(JobRun).where(JobRun.name == name))


async def test_a_shared_job_runs_on_the_leader_only_and_its_run_is_recorded(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    async def resign(_app: web.Application) -> str:
        calls.append("ran")
        return "re-signed 2 account(s)"

    app = job_app(sessions, leading=False)
    run = _logged(JobSpec("shared", resign, 60, 60), app, set())
    await run()
    assert calls == []
    assert await recorded(sessions, "shared") is None
    assert "shared" not in app[LAST_RUNS]

    app[JOB_LEADER].is_leader = True  # type: ignore[misc]
    before = datetime.now(UTC)
    await run()
    assert calls == ["ran"]
    row = await recorded(sessions, "shared")
    assert row is not None
    assert row.ok and row.error is None
    assert row.summary == "re-signed 2 account(s)"
    assert row.replica == replica_name()
    assert before <= row.started_at <= row.finished_at
    assert row.last_ok_at == row.finished_at
    assert row.duration_ms >= 0
    assert app[LAST_RUNS]["shared"].summary == row.summary


async def test_a_failed_run_keeps_the_error_class_and_the_last_success(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    fail = False

    async def job(_app: web.Application) -> dict[str, int]:
        if fail:
            raise RuntimeError(f"could not use {SECRET}")
        return {"pruned": 3, "accounts": 1}

    app = job_app(sessions, leading=True)
    run = _logged(JobSpec("flaky", job, 60, 60), app, set())
    await run()
    first = await recorded(sessions, "flaky")
    assert first is not None and first.summary == "pruned: 3, accounts: 1"
    succeeded_at = first.finished_at

    fail = True
    await run()
    row = await recorded(sessions, "flaky")
    assert row is not None
    assert not row.ok
    assert row.error == "RuntimeError"
    assert row.summary is None
    assert row.last_ok_at == succeeded_at
    assert row.finished_at > succeeded_at
    assert all(SECRET not in str(getattr(row, c.key)) for c in JobRun.__table__.columns)


async def test_a_per_process_job_runs_everywhere_and_stays_in_memory(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    async def checkpoint(_app: web.Application) -> None:
        calls.append("ran")

    app = job_app(sessions, leading=False)
    await _logged(JobSpec("local", checkpoint, 1, 1, leader_only=False), app, set())()
    assert calls == ["ran"]
    assert await recorded(sessions, "local") is None
    assert app[LAST_RUNS]["local"].ok


async def test_a_record_that_cannot_be_written_does_not_fail_the_run(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    async def job(_app: web.Application) -> str:
        calls.append("ran")
        return "done"

    app = job_app(sessions, leading=True)
    # A name longer than the column: PostgreSQL refuses the row (SQLite does not check).
    spec = JobSpec("x" * 150, job, 60, 60)
    await _logged(spec, app, set())()
    assert calls == ["ran"]
    assert app[LAST_RUNS][spec.name].ok


@pytest.mark.parametrize(
    ("result", "summary"),
    [
        (None, None),
        (True, None),
        ("re-signed 3 account(s)", "re-signed 3 account(s)"),
        ("two\n  lines", "two lines"),
        (7, "7"),
        (["A", "B", "C"], "3 item(s)"),
        ({"resigned": 2}, "resigned: 2"),
        ({}, None),
        (object(), None),
    ],
)
def test_summaries(result: Any, summary: str | None) -> None:
    assert summarize(result) == summary


def test_a_long_summary_is_cut() -> None:
    cut = summarize("y" * 2000)
    assert cut is not None and len(cut) == 500 and cut.endswith("…")


async def test_the_jobs_endpoint_lists_jobs_leader_and_last_runs(
    client: TestClient,
    tokens: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    resp = await client.get("/admin/v1/jobs")
    assert resp.status == 401
    resp = await client.get("/admin/v1/jobs", headers=bearer(tokens["scim"]))
    assert resp.status == 403

    # A run recorded by another replica is what every replica shows.
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    async with sessions() as session, session.begin():
        await save_run(
            session,
            RunRecord("prune_revocations", at, at, True, 12, "pruned 0", None, "elsewhere:7"),
        )
    resp = await client.get("/admin/v1/jobs", headers=bearer(tokens["admin:read"]))
    assert resp.status == 200
    body = await resp.json()
    jobs = {job["name"]: job for job in body["jobs"]}
    assert {"resign_expiring_accounts", "prune_revocations", "lapse_ended_bindings"} <= set(jobs)
    resign = jobs["resign_expiring_accounts"]
    assert resign["leader_only"] is True
    assert resign["every_seconds"] == 300
    assert datetime.fromisoformat(resign["next_run_at"]) > at
    assert jobs["prune_revocations"]["last_run"] == {
        "started_at": at.isoformat(),
        "finished_at": at.isoformat(),
        "ok": True,
        "duration_ms": 12,
        "summary": "pruned 0",
        "error": None,
        "replica": "elsewhere:7",
        "last_ok_at": at.isoformat(),
    }
    # One process alone on its database leads, on SQLite by definition, on PostgreSQL by
    # holding the lock.
    assert body["replica"] == replica_name()
    assert body["leader"]["this_replica"] is True
    assert body["leader"]["holder"] == replica_name()
    assert body["leader"]["last_runner"] == "elsewhere:7"
    url = str(client.server.app[SESSIONMAKER].kw["bind"].url)
    expected = "postgresql-advisory-lock" if url.startswith("postgresql") else "single-process"
    assert body["leader"]["election"] == expected


def test_the_jobs_command_lists_recorded_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner()
    init = runner.invoke(cli, ["init", "--data-dir", str(data)], catch_exceptions=False)
    assert init.exit_code == 0, init.output
    config = str(data / "resolver.toml")
    empty = runner.invoke(cli, ["jobs", "--config", config], catch_exceptions=False)
    assert empty.exit_code == 0 and "SQLite" in empty.output

    async def record() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{data / 'resolver.db'}")
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                at = datetime.now(UTC)
                await save_run(
                    session,
                    RunRecord("prune_revocations", at, at, False, 5, None, "OSError", "h:1"),
                )
        finally:
            await engine.dispose()

    asyncio.run(record())
    table = runner.invoke(cli, ["jobs", "--config", config], catch_exceptions=False).output
    line = next(line for line in table.splitlines() if line.startswith("prune_revocations"))
    assert "OSError" in line and "h:1" in line
    listed = runner.invoke(cli, ["jobs", "--config", config, "--format", "json"]).output
    assert json.loads(listed)["jobs"]["prune_revocations"]["error"] == "OSError"
