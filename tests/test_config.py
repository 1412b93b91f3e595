from __future__ import annotations

from pathlib import Path

import pytest

from resolver.config import load_settings, setting_names
from resolver.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_file() -> None:
    settings = load_settings(None, env={})
    assert settings.server.host == "127.0.0.1"
    assert settings.database_url == "sqlite+aiosqlite:///data/resolver.db"
    assert settings.log.format == "text"


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[log]\nformat = "json"\n')
    settings = load_settings(path, env={"RESOLVER_SERVER_PORT": "9100"})
    assert settings.server.port == 9100  # environment wins
    assert settings.server.host == "0.0.0.0"
    assert settings.log.format == "json"
    # The data directory defaults to the config file's directory.
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'resolver.db'}"


def test_environment_list_and_bool(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        env={
            "RESOLVER_NATS_SERVERS": "nats://a:4222, nats://b:4222",
            "RESOLVER_NATS_ENABLED": "false",
            "RESOLVER_DATABASE_URL": "postgresql+asyncpg://u@h/db",
        },
    )
    assert settings.nats.servers == ("nats://a:4222", "nats://b:4222")
    assert settings.nats.enabled is False
    assert settings.database_url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize(
    ("doc", "env", "key"),
    [
        ("[server]\nport = 'eighty'\n", {}, "server.port"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("", {"RESOLVER_SERVER_PORT": "x"}, "server.port"),
        ("[log]\nlevel = 'LOUD'\n", {}, "log.level"),
        ("[database]\nurl = 'mysql://x'\n", {}, "database.url"),
        ("[nats]\nservers = ['http://x']\n", {}, "nats.servers"),
        ("[server]\ntls_cert = 'c.pem'\n", {}, "server.tls_cert"),
        ("[server]\nbogus = 1\n", {}, "server.bogus"),
        ("[nonsense]\n", {}, "nonsense"),
        ("", {"RESOLVER_SERVER_NOPE": "1"}, "RESOLVER_SERVER_NOPE"),
        ("[server\n", {}, "r.toml"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, doc: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    message = str(info.value)
    assert key in message
    assert "\n" not in message.strip()


def test_sample_config_documents_every_setting_and_loads() -> None:
    sample = ROOT / "conf" / "resolver.toml"
    text = sample.read_text()
    for name in setting_names():
        section, key = name.split(".")
        assert f"[{section}]" in text, section
        assert f"{key} =" in text, name
    # As shipped, it is a valid configuration.
    settings = load_settings(sample, env={})
    assert settings.server.port == 8080
