"""``account create|list``, ``user-creds``, ``revoke``: sync tests, the CLI runs its own loop."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from resolver.cli import cli
from resolver.natsjwt import decode, parse_creds


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def config(tmp_path: Path) -> str:
    data_dir = tmp_path / "data"
    invoke("init", "--data-dir", str(data_dir))
    return str(data_dir / "resolver.toml")


def stored(config: str, name: str) -> tuple[str, str, int]:
    db = Path(config).parent / "resolver.db"
    with sqlite3.connect(db) as conn:
        key, jwt = conn.execute(
            "SELECT public_key, jwt FROM accounts WHERE name = ?", (name,)
        ).fetchone()
        pushes = conn.execute(
            "SELECT count(*) FROM push_outbox WHERE account_key = ?", (key,)
        ).fetchone()[0]
    return key, jwt, pushes


def test_account_create_and_list(config: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("limits:\n  conn: 7\ndescription: billing\n")
    out = invoke("account", "create", "ACME", "--config", config, "--spec", str(spec))
    key, jwt, pushes = stored(config, "ACME")
    assert out.strip() == f"created account ACME {key}"
    token = decode(jwt)
    assert token.nats["limits"]["conn"] == 7 and token.nats["description"] == "billing"
    assert pushes == 1

    listing = invoke("account", "list", "--config", config).splitlines()
    assert [line.split("\t")[:3] for line in listing] == [
        ["ACME", key, "here"],
        ["SYS", listing[1].split("\t")[1], "here"],
    ]

    assert "already exists" in fails("account", "create", "ACME", "--config", config)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"limits": {"conn": "many"}}))
    assert "spec.limits.conn" in fails(
        "account", "create", "B", "--config", config, "--spec", str(bad)
    )


def test_user_creds_then_revoke(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke("account", "create", "ACME", "--config", config)
    key, _, _ = stored(config, "ACME")
    monkeypatch.chdir(tmp_path)
    before = int(time.time())
    out = invoke(
        "user-creds", "--config", config, "--account", "ACME", "--name", "etl", "--ttl", "30m"
    )
    path = tmp_path / "etl.creds"  # the default: ./<name>.creds
    assert f"wrote {path.name}" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user_jwt, seed = parse_creds(path.read_text())
    assert seed.decode() not in out
    user = decode(user_jwt, expected_type="user")
    assert user.issuer_account == key and user.name == "etl"
    assert before + 1_800 <= user.exp <= int(time.time()) + 1_800
    _, account_jwt, _ = stored(config, "ACME")
    assert user.issuer in decode(account_jwt).nats["signing_keys"]
    with sqlite3.connect(Path(config).parent / "resolver.db") as conn:
        row = conn.execute(
            "SELECT expires_at, revoked_at FROM issued_user_keys WHERE public_key = ?",
            (user.subject,),
        ).fetchone()
    assert row == (user.exp, None)

    # No silent overwrite of a creds file; --out elsewhere works.
    assert "exists" in fails("user-creds", "--config", config, "--account", "ACME", "--name", "etl")
    other = tmp_path / "sub.creds"
    invoke(
        "user-creds",
        "--config",
        config,
        "--account",
        key,
        "--name",
        "x",
        "--out",
        str(other),
        "--ttl",
        "7d",
    )
    assert decode(parse_creds(other.read_text())[0]).exp - int(time.time()) > 6 * 86_400
    assert "duration" in fails(
        "user-creds", "--config", config, "--account", "ACME", "--name", "y", "--ttl", "soon"
    )
    assert "no account" in fails(
        "user-creds", "--config", config, "--account", "NOPE", "--name", "y"
    )

    out = invoke("revoke", "--config", config, "--account", "ACME", "--user-key", user.subject)
    assert f"revoked {user.subject} in ACME" in out
    _, account_jwt, pushes = stored(config, "ACME")
    revocations = decode(account_jwt).nats["revocations"]
    assert revocations[user.subject] >= user.iat
    assert pushes == 2
    with sqlite3.connect(Path(config).parent / "resolver.db") as conn:
        revoked_at = conn.execute(
            "SELECT revoked_at FROM issued_user_keys WHERE public_key = ?", (user.subject,)
        ).fetchone()[0]
    assert revoked_at == revocations[user.subject]
    assert "user public key" in fails(
        "revoke", "--config", config, "--account", "ACME", "--user-key", "nope"
    )


@pytest.mark.parametrize(
    "command", [["account"], ["account", "create"], ["account", "list"], ["user-creds"], ["revoke"]]
)
def test_new_commands_have_help(command: list[str]) -> None:
    out = invoke(*command, "--help")
    assert "Usage:" in out
    if command != ["account"]:
        assert "--config" in out
