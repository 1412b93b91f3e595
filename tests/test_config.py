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


IDP = """
[[idp]]
name = "entra"
issuer = "https://login.example/t/v2.0"
audience = ["api://nats"]
jwks_url = "https://login.example/t/keys"
"""


def test_identity_providers_are_an_array_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        IDP
        + """
[[idp]]
name = "alb"
issuer = "https://alb.example"
key_url = "https://public-keys.auth.elb.eu-west-1.amazonaws.com/{kid}"
header = "x-amzn-oidc-data"
signer = "arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/x/y"
algorithms = ["ES256"]

[[idp]]
name = "fixed"
issuer = "https://proxy.example"
public_key_file = "keys/proxy.pem"
header = "X-Identity"

[front_proxy]
identity_header = "X-Forwarded-Email"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
"""
    )
    settings = load_settings(path, env={})
    entra, alb, fixed = settings.idp
    assert (entra.name, entra.audience, entra.algorithms) == (
        "entra",
        ("api://nats",),
        ("RS256", "ES256"),
    )
    assert (entra.user_claim, entra.user_attribute, entra.grace_seconds) == ("email", "userName", 0)
    assert alb.header == "x-amzn-oidc-data" and alb.audience == ()
    # Relative key files are relative to the config file, like every other path.
    assert fixed.public_key_file == tmp_path / "keys" / "proxy.pem"
    assert settings.front_proxy.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        (IDP.replace('name = "entra"', ""), "idp[0].name"),
        (IDP.replace('issuer = "https://login.example/t/v2.0"', ""), "issuer"),
        (IDP.replace('audience = ["api://nats"]', ""), "audience"),
        (IDP + 'public_key_file = "k.pem"\n', "exactly one of"),
        (IDP.replace("jwks_url", "key_url"), "{kid}"),
        (IDP + 'algorithms = ["HS256"]\n', "algorithms"),
        (IDP + "algorithms = []\n", "algorithms"),
        (IDP + 'signer = "arn"\n', "signer"),
        (IDP + 'colour = "red"\n', "idp[0].colour"),
        (IDP + 'header = "Authorization"\n', "header"),
        (IDP + IDP, "defined twice"),
        (IDP.replace("https://login.example/t/keys", "file:///etc/passwd"), "jwks_url"),
        ('[front_proxy]\nidentity_header = "X-User"\n', "trusted_proxies"),
        ('[front_proxy]\ntrusted_proxies = ["not-an-ip"]\n', "trusted_proxies"),
        ('[front_proxy]\nuser_attribute = "nickName"\n', "user_attribute"),
        ("[credentials]\ndefault_ttl_seconds = 5\n", "credentials.default_ttl_seconds"),
        ("idp = 3\n", "idp"),
    ],
)
def test_bad_identity_provider_settings_name_the_key(tmp_path: Path, doc: str, key: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert key in str(info.value)
