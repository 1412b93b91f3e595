"""``nats-iam-resolver audit export`` on SQLite and PostgreSQL, and the token rows it shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.audit.query import AuditFilter, build_filter, iter_entries
from resolver.cli import cli
from resolver.db.engine import create_sessionmaker
from resolver.db.models import AuditEntry
from resolver.natsjwt import new_keypair

KEYS = ["id", "at", "actor", "action", "target", "user", "account", "request_id", "source"]
ACCOUNT_A = new_keypair("account")[0]
ACCOUNT_B = new_keypair("account")[0]
START = datetime(2026, 1, 1, tzinfo=UTC)
#: More than two export pages (1,000 rows each), so paging is crossed twice.
ROWS = 2_345


def _row(i: int) -> dict[str, Any]:
    return {
        "at": START + timedelta(minutes=i),
        "actor": "okta-scim" if i % 3 else "system",
        "action": ("scim.user.patch", "scim.group.members", "credentials.issue")[i % 3],
        "target": f"t{i}",
        "request_id": f"r{i}",
        "source": "192.0.2.1",
        "user_name": ("alice", "bob", "zoë")[i % 3] if i % 5 else None,
        "account_key": ACCOUNT_A if i % 2 else ACCOUNT_B,
        "details": {"i": i, "text": "ünïcode"},
    }


@pytest.fixture
async def config(engine: AsyncEngine, db_url: str, tmp_path: Path) -> str:
    """A config naming the test database, which holds ``ROWS`` audit rows a minute apart."""
    async with create_sessionmaker(engine)() as session, session.begin():
        await session.execute(insert(AuditEntry), [_row(i) for i in range(ROWS)])
    path = tmp_path / "resolver.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n')
    return str(path)


def export(config: str, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(
        cli, ["audit", "export", "--config", config, *args], catch_exceptions=False
    )
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_export_writes_every_row_oldest_first_with_stable_keys(config: str) -> None:
    result = export(config)
    found = lines(result)
    assert len(found) == ROWS
    assert result.stderr.strip() == f"exported {ROWS} audit row(s)"
    ids = [item["id"] for item in found]
    assert ids == sorted(ids) and len(set(ids)) == ROWS
    for i, item in enumerate(found):
        assert list(item) == [*KEYS, "details"]
        assert item["details"] == {"i": i, "text": "ünïcode"}
        assert datetime.fromisoformat(item["at"]) == START + timedelta(minutes=i)
    assert found[7]["at"] == "2026-01-01T00:07:00.000000+00:00"
    assert (found[7]["user"], found[7]["account"], found[5]["user"]) == ("bob", ACCOUNT_A, None)
    # Readable UTF-8, one object a line.
    assert "ünïcode" in result.stdout and result.stdout.count("\n") == ROWS


def test_filters_select_what_they_name(config: str) -> None:
    rows = [_row(i) for i in range(ROWS)]

    def expected(keep: Any) -> list[int]:
        return [row["details"]["i"] for row in rows if keep(row)]

    def got(*args: str) -> list[int]:
        return [item["details"]["i"] for item in lines(export(config, *args))]

    assert got("--user", "zoë") == expected(lambda r: r["user_name"] == "zoë")
    assert got("--account", ACCOUNT_B, "--actor", "system") == expected(
        lambda r: r["account_key"] == ACCOUNT_B and r["actor"] == "system"
    )
    assert got("--action", "scim.*") == expected(lambda r: r["action"].startswith("scim."))
    assert got("--action", "credentials.issue", "--target", "t11") == [11]
    assert got("--action", "credentials.issue", "--target", "t9") == []
    since, until = "2026-01-01T10:00:00Z", "2026-01-01T12:30:00+01:00"  # 10:00 to 11:30 UTC
    assert got("--since", since, "--until", until) == list(range(600, 690))
    assert got("--since", "2026-01-02") == list(range(24 * 60, ROWS))


def test_after_resumes_an_export_and_output_goes_to_a_file(config: str, tmp_path: Path) -> None:
    first = lines(export(config))
    cut = first[1_499]["id"]
    target = tmp_path / "rest.jsonl"
    result = export(config, "--after", str(cut), "--output", str(target))
    assert result.stdout == ""
    assert result.stderr.strip() == f"exported {ROWS - 1_500} audit row(s) to {target}"
    rest = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert rest == first[1_500:]


def test_table_format_is_one_line_a_row(config: str) -> None:
    out = export(config, "--format", "table", "--user", "alice", "--action", "scim.user.patch")
    header, *body = out.stdout.splitlines()
    assert header.split() == ["at", "actor", "action", "user", "account", "target"]
    wanted = [i for i in range(ROWS) if _row(i)["user_name"] == "alice" and i % 3 == 0]
    assert len(body) == len(wanted)
    assert body[0].split()[:4] == [
        _row(wanted[0])["at"].isoformat(timespec="microseconds"),
        "system",
        "scim.user.patch",
        "alice",
    ]
    assert body[0].split()[-1] == f"t{wanted[0]}"


# One test walks every case: each parametrized case paid its own database set-up.
BAD_OPTIONS = [
    (["--since", "last week"], "since: expected an RFC 3339 time"),
    (["--until", "2026-01-01T00:00:00"], "until: give a time zone"),
    (["--since", "2026-02-01", "--until", "2026-01-01"], "until must be later than since"),
    (["--action", "scim user"], "action: expected a name"),
    (["--account", "NOPE"], "no account is named 'NOPE'"),
]


def test_bad_options_are_one_line_errors(config: str) -> None:
    for args, message in BAD_OPTIONS:
        result = export(config, *args, code=1)
        assert result.stdout == "", args
        assert result.stderr.startswith("error: ") and message in result.stderr, args


def test_bad_format_is_a_usage_error(config: str) -> None:
    result = export(config, "--format", "csv", code=2)
    assert "csv" in result.stderr


async def test_pages_of_any_size_give_the_same_rows(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await session.execute(insert(AuditEntry), [_row(i) for i in range(50)])

    async def collect(found: AuditFilter, size: int) -> list[int]:
        return [item["id"] async for item in iter_entries(sessions, found, page_size=size)]

    everything = await collect(AuditFilter(), 1000)
    assert len(everything) == 50
    for size in (1, 7, 49, 50, 51):
        assert await collect(AuditFilter(), size) == everything
    only_bob = build_filter(user="bob")
    assert await collect(only_bob, 3) == [
        everything[i] for i in range(50) if _row(i)["user_name"] == "bob"
    ]


def test_token_create_and_revoke_are_audited_without_the_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    run("init", "--data-dir", str(data_dir))
    config = str(data_dir / "resolver.toml")
    secret = run("token", "create", "--config", config, "--name", "ops", "--scope", "admin").strip()
    assert secret.startswith("nir_")
    run("token", "revoke", "--config", config, "--name", "ops")
    out = run("audit", "export", "--config", config, "--action", "token.*")
    found = [json.loads(line) for line in out.splitlines()]
    assert [(e["action"], e["actor"], e["target"], e["source"]) for e in found] == [
        ("token.create", "admin", "ops", "cli"),
        ("token.revoke", "admin", "ops", "cli"),
    ]
    assert found[0]["details"] == {"scopes": ["admin"], "expires_at": None, "replaced": False}
    everything = run("audit", "export", "--config", config)
    assert secret not in everything and secret.split("_")[-1] not in everything
