"""``nats-iam-resolver init --auth-callout``: on a fresh data directory and on an existing one."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path

from click.testing import CliRunner

from resolver.bootstrap import enable_auth_callout
from resolver.cli import cli
from resolver.config import load_settings
from resolver.natsjwt import decode, parse_creds
from tests.test_cli import real_seeds


def invoke(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def sentinel_of(conf: str) -> str | None:
    found = re.search(r"^default_sentinel: (\S+)$", conf, re.M)
    return found.group(1) if found else None


def test_init_sets_up_the_callout_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = invoke("init", "--data-dir", str(data), "--auth-callout")
    assert "created auth callout account AUTH and its keys" in out
    assert "created sentinel creds" in out
    config = data / "resolver.toml"
    settings = load_settings(config)
    assert settings.auth_callout.enabled and settings.auth_callout.account == "AUTH"
    sentinel_creds = data / "sentinel.creds"
    assert stat.S_IMODE(sentinel_creds.stat().st_mode) == 0o600
    sentinel_jwt, _seed = parse_creds(sentinel_creds.read_text())
    conf = (data / "nats-server.conf").read_text()
    assert sentinel_of(conf) == sentinel_jwt
    sentinel = decode(sentinel_jwt, expected_type="user")
    assert sentinel.nats["bearer_token"] is True
    auth_key = re.search(r"auth account\s+AUTH (A[A-Z2-7]{55})", out).group(1)
    assert sentinel.issuer_account == auth_key
    # nats-config prints the same, sentinel included.
    assert invoke("nats-config", "--config", str(config)) == conf

    # Again: nothing changes.
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.suffix != ".db"}
    assert "already initialised" in invoke("init", "--data-dir", str(data), "--auth-callout")
    after = {p.name: p.read_bytes() for p in data.iterdir() if p.suffix != ".db"}
    assert after == before

    # Every seed of the callout is sealed: none is in the database in clear.
    dump = "\n".join(sqlite3.connect(data / "resolver.db").iterdump()).encode()
    assert real_seeds(dump) == []


def test_init_adds_the_callout_to_an_existing_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    invoke("init", "--data-dir", str(data))
    config = data / "resolver.toml"
    assert not load_settings(config).auth_callout.enabled
    assert sentinel_of((data / "nats-server.conf").read_text()) is None
    text = config.read_text()

    out = invoke("init", "--data-dir", str(data), "--auth-callout")
    assert "created auth callout account AUTH" in out
    assert f"[auth_callout] enabled = true in {config}" in out
    assert "created nats-server config" in out
    assert load_settings(config).auth_callout.enabled
    # One line changed; comments and everything else kept.
    assert config.read_text() == text.replace("enabled = false", "enabled = true")
    assert sentinel_of((data / "nats-server.conf").read_text()) is not None
    # From now on a plain init keeps it (the setting says so).
    assert "already initialised" in invoke("init", "--data-dir", str(data))


def test_an_account_of_that_name_that_is_not_the_auth_account_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    invoke("init", "--data-dir", str(data))
    config = data / "resolver.toml"
    invoke("account", "create", "AUTH", "--config", str(config))
    out = invoke("init", "--data-dir", str(data), "--auth-callout", code=1)
    assert "not an auth callout account" in out
    assert not load_settings(config).auth_callout.enabled


def test_enabling_edits_only_the_callout_section(tmp_path: Path) -> None:
    config = tmp_path / "resolver.toml"
    config.write_text('[nats]\nenabled = true\n\n[log]\nlevel = "INFO"\n')
    assert enable_auth_callout(config)
    assert load_settings(config).auth_callout.enabled
    assert config.read_text().endswith("\n[auth_callout]\nenabled = true\n")
    assert not enable_auth_callout(config)  # already on

    config.write_text('[auth_callout]\n# the auth account\naccount = "GATE"\n')
    assert enable_auth_callout(config)
    settings = load_settings(config)
    assert settings.auth_callout.enabled and settings.auth_callout.account == "GATE"
    assert config.read_text() == (
        '[auth_callout]\nenabled = true\n# the auth account\naccount = "GATE"\n'
    )
