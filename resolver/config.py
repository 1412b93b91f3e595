"""Settings: a TOML file, then ``RESOLVER_<SECTION>_<KEY>`` environment overrides.

Every value is validated here, once, so a bad setting stops the process with one line that
names the key (``ConfigError``) instead of a traceback deep inside a request.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from resolver.errors import ConfigError

ENV_PREFIX = "RESOLVER_"
#: The whole master key may be handed over by the environment instead of a file.
MASTER_KEY_ENV = "RESOLVER_MASTER_KEY"
CONFIG_ENV = "RESOLVER_CONFIG"
DEFAULT_CONFIG_PATH = Path("data/resolver.toml")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: URL under which nats-server and IdPs reach this service (no trailing slash).
    public_url: str = ""
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    echo: bool = False


@dataclass(frozen=True)
class SecuritySettings:
    master_key_file: Path | None = None


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    system_creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: How long a push waits for replies from every server, in seconds.
    push_timeout: float = 0.5
    #: Start the NATS push connection at all (off for tests that need no server).
    enabled: bool = True


@dataclass(frozen=True)
class AccountSettings:
    #: Lifetime of every account JWT; a server that missed a push heals when it expires.
    jwt_ttl_seconds: int = 86_400
    #: How often the job looks for account JWTs close to expiry (and re-signs them).
    resign_check_seconds: int = 300
    #: How often the job looks for bindings whose ``ends_at`` passed (and revokes).
    binding_check_seconds: int = 30
    #: How often the job drops revocation entries that no live user JWT can match.
    prune_check_seconds: int = 3_600
    #: Largest encoded account JWT; a bigger one has its oldest revocations folded into "*".
    jwt_size_budget_bytes: int = 819_200


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    accounts: AccountSettings = field(default_factory=AccountSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'resolver.db'}"

    @property
    def master_key_path(self) -> Path:
        return self.security.master_key_file or self.data_dir / "master.key"

    @property
    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        scheme = "https" if self.server.tls_cert else "http"
        return f"{scheme}://{self.server.host}:{self.server.port}"

    @property
    def system_creds_path(self) -> Path:
        return self.nats.system_creds or self.data_dir / "sys.creds"


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "security": SecuritySettings,
    "nats": NatsSettings,
    "accounts": AccountSettings,
    "log": LogSettings,
}


def _as_int(low: int, high: int) -> Callable[[str, Any], int]:
    def parse(key: str, raw: Any) -> int:
        if isinstance(raw, bool):
            raise ConfigError(key, f"must be an integer, got {raw!r}")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, f"must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(key, f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _as_float(key: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")
    return value


def _as_bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(key, f"must be true or false, got {raw!r}")


def _as_str(key: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a string, got {raw!r}")
    return raw


def _as_path(key: str, raw: Any) -> Path | None:
    text = _as_str(key, raw).strip()
    return Path(text).expanduser() if text else None


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def parse(key: str, raw: Any) -> str:
        value = _as_str(key, raw).strip()
        for option in allowed:
            if value.lower() == option.lower():
                return option
        raise ConfigError(key, f"must be one of {', '.join(allowed)}, got {raw!r}")

    return parse


def _as_url(*schemes: str) -> Callable[[str, Any], str]:
    def parse(key: str, raw: Any) -> str:
        value = _as_str(key, raw).strip()
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(key, f"must be a {' or '.join(schemes)} URL, got {raw!r}")
        return value

    return parse


def _as_db_url(key: str, raw: Any) -> str:
    value = _as_str(key, raw).strip()
    if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            key, "must start with sqlite+aiosqlite:// or postgresql+asyncpg://, got another URL"
        )
    return value


def _as_servers(key: str, raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(key, "must be a non-empty list of nats:// URLs")
    parse = _as_url("nats", "tls")
    return tuple(parse(key, str(item).strip()) for item in items)


_PARSERS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "server": {
        "host": _as_str,
        "port": _as_int(0, 65535),
        "tls_cert": _as_path,
        "tls_key": _as_path,
        "public_url": _as_url("http", "https"),
        "max_body_bytes": _as_int(1024, 1 << 30),
    },
    "database": {"url": _as_db_url, "echo": _as_bool},
    "security": {"master_key_file": _as_path},
    "nats": {
        "servers": _as_servers,
        "system_creds": _as_path,
        "tls_ca": _as_path,
        "tls_cert": _as_path,
        "tls_key": _as_path,
        "push_timeout": _as_float,
        "enabled": _as_bool,
    },
    "accounts": {
        "jwt_ttl_seconds": _as_int(300, 366 * 86_400),
        "resign_check_seconds": _as_int(10, 86_400),
        "binding_check_seconds": _as_int(1, 86_400),
        "prune_check_seconds": _as_int(10, 7 * 86_400),
        # nats-io/jwt refuses tokens over 1 MiB, and 1 MiB is nats-server's default max_payload.
        "jwt_size_budget_bytes": _as_int(16_384, 1_048_576),
    },
    "log": {
        "level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "format": _choice("text", "json"),
    },
}


def _collect(doc: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Merge the file's sections with the environment, rejecting unknown keys in both."""
    merged: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for section, body in doc.items():
        if section == "data_dir":
            continue
        if section not in _SECTIONS:
            raise ConfigError(section, "unknown section")
        if not isinstance(body, dict):
            raise ConfigError(section, "must be a table")
        for key, value in body.items():
            if key not in _PARSERS[section]:
                raise ConfigError(f"{section}.{key}", "unknown setting")
            merged[section][key] = value
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in {MASTER_KEY_ENV, CONFIG_ENV}:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "data_dir":
            continue
        section, _, key = rest.partition("_")
        if section in _PARSERS and key in _PARSERS[section]:
            merged[section][key] = value
        elif section in _PARSERS:
            raise ConfigError(name, "unknown setting")
    return merged


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (optional), apply environment overrides, validate everything."""
    env = os.environ if env is None else env
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(path), "config file not found (run `init` first?)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"is not valid TOML: {exc}") from None
    raw_data_dir = env.get(f"{ENV_PREFIX}DATA_DIR", doc.get("data_dir"))
    if raw_data_dir is not None:
        data_dir = _as_path("data_dir", raw_data_dir) or Path("data")
    elif path is not None:
        data_dir = Path(path).resolve().parent
    else:
        data_dir = Path("data")
    if path is not None and not data_dir.is_absolute():
        data_dir = (Path(path).resolve().parent / data_dir).resolve()

    merged = _collect(doc, env)
    # Relative paths are relative to the config file's directory, not to wherever the
    # process happens to start (a service manager's cwd is rarely the data directory).
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        values = {
            key: _PARSERS[section][key](f"{section}.{key}", raw)
            for key, raw in merged[section].items()
        }
        values = {
            key: base / value if isinstance(value, Path) and not value.is_absolute() else value
            for key, value in values.items()
        }
        sections[section] = replace(cls(), **values)
    settings = Settings(data_dir=data_dir, **sections)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    server = settings.server
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError("server.tls_cert", "tls_cert and tls_key must be given together")
    nats = settings.nats
    if (nats.tls_cert is None) != (nats.tls_key is None):
        raise ConfigError("nats.tls_cert", "tls_cert and tls_key must be given together")


def setting_names() -> list[str]:
    """Every ``section.key`` the loader accepts (the sample config documents each one)."""
    return [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]
