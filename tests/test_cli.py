from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from resolver.cli import cli
from resolver.natsjwt import JWTError, decode, parse_creds, seed_kind

# Lookahead: overlapping candidates, so a chance match cannot hide a real seed next to it.
SEED_RE = re.compile(rb"(?=(S[OAUNX][A-Z2-7]{56}))")


def real_seeds(data: bytes) -> list[bytes]:
    """Seed-shaped runs with a valid checksum. Base32 text stored side by side (a signing
    key followed by a jti in one row) contains seed-shaped runs by chance in about one
    database out of four; only the CRC tells a real seed from those."""
    found = []
    for match in SEED_RE.finditer(data):
        try:
            seed_kind(match.group(1))
        except JWTError:
            continue
        found.append(match.group(1))
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_init_creates_everything_once(data_dir: Path) -> None:
    out = invoke("init", "--data-dir", str(data_dir), "--port", "18080")
    for item in ("config", "master key", "operator", "system user creds", "nats-server config"):
        assert f"created {item}" in out
    config = data_dir / "resolver.toml"
    for name in ("resolver.toml", "master.key", "resolver.db", "sys.creds", "nats-server.conf"):
        assert (data_dir / name).exists(), name
    for secret in ("master.key", "sys.creds"):
        assert stat.S_IMODE((data_dir / secret).stat().st_mode) == 0o600

    user_jwt, seed = parse_creds((data_dir / "sys.creds").read_text())
    user = decode(user_jwt)
    conf = (data_dir / "nats-server.conf").read_text()
    operator = decode(re.search(r"^operator: (\S+)$", conf, re.M).group(1))
    system_key = re.search(r"^system_account: (\S+)$", conf, re.M).group(1)
    assert operator.claims["nats"]["system_account"] == system_key
    assert user.issuer_account == system_key and user.issuer != system_key
    assert "resolver: URL(http://127.0.0.1:18080/jwt/v1/accounts/)" in conf

    # Idempotent: a second run changes nothing.
    before = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.suffix != ".db"}
    out = invoke("init", "--data-dir", str(data_dir))
    assert "already initialised" in out
    after = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.suffix != ".db"}
    assert after.keys() >= before.keys()
    assert {k: after[k] for k in before} == before

    # nats-config prints what init wrote.
    assert invoke("nats-config", "--config", str(config)) == conf

    # The database holds no seed in clear: not the creds' seed, not any other.
    dump = "\n".join(sqlite3.connect(data_dir / "resolver.db").iterdump()).encode()
    assert seed not in dump
    assert real_seeds(dump) == []
    assert real_seeds((data_dir / "resolver.db").read_bytes()) == []


def test_token_create_prints_once_and_stores_a_hash(data_dir: Path) -> None:
    invoke("init", "--data-dir", str(data_dir))
    config = str(data_dir / "resolver.toml")
    token = invoke("token", "create", "--config", config, "--name", "okta", "--scope", "scim")
    token = token.strip()
    assert token.startswith("nir_")
    db = (data_dir / "resolver.db").read_bytes()
    secret = token[len("nir_") + 16 + 1 :]  # base64url: it may hold "_" itself
    assert len(secret) == 43
    assert token.encode() not in db and secret.encode() not in db
    listing = invoke("token", "list", "--config", config)
    assert "okta\tscim\tactive" in listing and token not in listing
    result = CliRunner().invoke(
        cli, ["token", "create", "--config", config, "--name", "okta", "--scope", "scim"]
    )
    assert result.exit_code == 1 and "already exists" in result.output
    assert "Traceback" not in result.output


def test_config_from_environment_variable(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    invoke("init", "--data-dir", str(data_dir))
    monkeypatch.setenv("RESOLVER_CONFIG", str(data_dir / "resolver.toml"))
    assert "database at revision" in invoke("migrate")


def test_bad_config_gives_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = 'lots'\n")
    result = CliRunner().invoke(cli, ["migrate", "--config", str(config)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["error: invalid configuration: server.port: must be an integer, got 'lots'"]
    result = CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "config file not found" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["init"],
        ["serve"],
        ["migrate"],
        ["token"],
        ["token", "create"],
        ["nats-config"],
        ["dev"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    out = invoke(*command, "--help")
    assert "Usage:" in out
    if command and command != ["token"]:
        assert "--config" in out
