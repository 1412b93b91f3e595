"""Settings: a TOML file, then ``RESOLVER_<SECTION>_<KEY>`` environment overrides.

Every value is validated here, once, so a bad setting stops the process with one line that
names the key (``ConfigError``) instead of a traceback deep inside a request.
"""

from __future__ import annotations

import ipaddress
import os
import re
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
    #: Requests a second each API token may make on average (0: no limit), and at once.
    #: Above what IdP provisioning and the SCIM ingest benchmark send (about 420 creates a
    #: second at most); what it stops is a runaway script or a leaked token's flood.
    token_requests_per_second: int = 500
    token_burst: int = 1000


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
class IdpSettings:
    """One trusted identity provider (a ``[[idp]]`` table): how its tokens are verified."""

    #: Short name used in logs, audit rows and workload identities ("entra", "okta").
    name: str = ""
    #: Exact ``iss`` its tokens carry.
    issuer: str = ""
    #: Accepted ``aud`` values; at least one must match (empty only with ``header``).
    audience: tuple[str, ...] = ()
    #: Where its signing keys are published (OIDC ``jwks_uri``).
    jwks_url: str = ""
    #: A PEM public key instead of a JWKS (a proxy with one fixed key).
    public_key_file: Path | None = None
    #: A URL with ``{kid}`` answering one PEM key per key id (AWS ALB).
    key_url: str = ""
    #: Signature algorithms accepted; anything else is refused before any key is looked up.
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: Token claim naming the person, and the SCIM attribute it is compared with.
    user_claim: str = "email"
    user_attribute: str = "userName"
    #: Claim naming a workload (no SCIM user) in its credentials and the audit log.
    workload_name_claim: str = "sub"
    #: Bindings by token claim may match this IdP's tokens (workloads, group claims).
    claim_bindings: bool = True
    #: Request header carrying this issuer's signed assertion (a front proxy such as an
    #: AWS ALB's ``x-amzn-oidc-data``); empty: the token comes as a bearer token.
    header: str = ""
    #: Only for ``header``: the ``signer`` the assertion's JWT header must name (ALB ARN).
    signer: str = ""
    #: Clock skew allowed on exp, nbf and iat, in seconds.
    leeway_seconds: int = 30
    #: How long a person's NATS credentials may outlive the IdP token they came from.
    grace_seconds: int = 0


@dataclass(frozen=True)
class CredentialSettings:
    #: Lifetime of issued user JWTs when the caller does not ask (capped by roles and token).
    default_ttl_seconds: int = 3_600
    #: Keys fetched from a JWKS are reused this long before being fetched again.
    jwks_cache_seconds: int = 300
    #: An unknown ``kid`` refetches the JWKS at most this often (forged kids cannot flood
    #: the IdP), in seconds.
    jwks_refetch_seconds: int = 30
    #: Timeout of one JWKS (or key URL) fetch, in seconds.
    jwks_timeout: float = 5.0
    #: Issued user keys whose JWT expired more than this many days ago are forgotten by a
    #: job (resolver.jobs.issued_keys_retention); 0 keeps them forever.
    issued_keys_retention_days: int = 30


@dataclass(frozen=True)
class FrontProxySettings:
    #: Header with the plain user name set by an identity-aware proxy. Off when empty: an
    #: unsigned header is only as good as the network path, so it needs ``trusted_proxies``.
    identity_header: str = ""
    #: Addresses or CIDRs the unsigned header is accepted from (the proxy's own address).
    trusted_proxies: tuple[str, ...] = ()
    #: SCIM attribute the header value is compared with.
    user_attribute: str = "userName"


@dataclass(frozen=True)
class AuthCalloutSettings:
    #: Answer nats-server's authorization requests ($SYS.REQ.USER.AUTH).
    enabled: bool = False
    #: Name of the auth account whose JWT carries the ``authorization`` section.
    account: str = "AUTH"


@dataclass(frozen=True)
class AuditSettings:
    #: Audit rows older than this are deleted by the retention job; 0 keeps them forever.
    retention_days: int = 365
    retention_check_seconds: int = 3_600
    #: Subscribe to ``$SYS.ACCOUNT.*.CONNECT``/``DISCONNECT`` and audit every connection.
    record_connections: bool = True


@dataclass(frozen=True)
class JobSettings:
    #: How often a replica tries to become (or checks it still is) the job leader on
    #: PostgreSQL: another replica takes over within this long after the leader dies.
    leader_check_seconds: int = 5
    #: Seconds between re-pushes of every account's current JWT (0: never).
    reconcile_seconds: int = 3_600
    #: Rotate the operator signing key every N days (0: only ``nats-iam-resolver rotate``).
    operator_key_rotation_days: int = 0
    #: Rotate every account's signing keys every N days (0: only on demand).
    account_key_rotation_days: int = 0
    rotation_check_seconds: int = 3_600


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
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    front_proxy: FrontProxySettings = field(default_factory=FrontProxySettings)
    auth_callout: AuthCalloutSettings = field(default_factory=AuthCalloutSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    log: LogSettings = field(default_factory=LogSettings)
    idp: tuple[IdpSettings, ...] = ()

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
    "credentials": CredentialSettings,
    "front_proxy": FrontProxySettings,
    "auth_callout": AuthCalloutSettings,
    "audit": AuditSettings,
    "jobs": JobSettings,
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


def _as_str_list(key: str, raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ConfigError(key, f"must be a list of strings, got {raw!r}")
    values = tuple(_as_str(key, item).strip() for item in items)
    return tuple(value for value in values if value)


def _as_networks(key: str, raw: Any) -> tuple[str, ...]:
    values = _as_str_list(key, raw)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not an IP address or CIDR") from None
    return values


def _as_header(key: str, raw: Any) -> str:
    value = _as_str(key, raw).strip()
    if value and not _HEADER_RE.match(value):
        raise ConfigError(key, f"{raw!r} is not an HTTP header name")
    if value.lower() in {"authorization", "cookie", "host"}:
        raise ConfigError(key, f"{value!r} cannot carry an identity here")
    return value


_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
#: SCIM user attributes a token claim (or proxy header) may be matched against.
USER_ATTRIBUTES = ("userName", "email", "externalId", "id")
#: Asymmetric algorithms only: an HMAC "key" taken from a JWKS would be public knowledge.
IDP_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _as_algorithms(key: str, raw: Any) -> tuple[str, ...]:
    values = _as_str_list(key, raw)
    if not values:
        raise ConfigError(key, "must name at least one algorithm")
    for value in values:
        if value not in IDP_ALGORITHMS:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(IDP_ALGORITHMS)}")
    return values


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
    "security": {
        "master_key_file": _as_path,
        "token_requests_per_second": _as_int(0, 1_000_000),
        "token_burst": _as_int(1, 1_000_000),
    },
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
    "credentials": {
        "default_ttl_seconds": _as_int(60, 366 * 86_400),
        "jwks_cache_seconds": _as_int(1, 86_400),
        "jwks_refetch_seconds": _as_int(0, 86_400),
        "jwks_timeout": _as_float,
        "issued_keys_retention_days": _as_int(0, 100 * 366),
    },
    "front_proxy": {
        "identity_header": _as_header,
        "trusted_proxies": _as_networks,
        "user_attribute": _choice(*USER_ATTRIBUTES),
    },
    "auth_callout": {"enabled": _as_bool, "account": _as_str},
    "audit": {
        "retention_days": _as_int(0, 100 * 366),
        "retention_check_seconds": _as_int(10, 7 * 86_400),
        "record_connections": _as_bool,
    },
    "jobs": {
        "leader_check_seconds": _as_int(1, 3_600),
        "reconcile_seconds": _as_int(0, 30 * 86_400),
        "operator_key_rotation_days": _as_int(0, 10 * 366),
        "account_key_rotation_days": _as_int(0, 10 * 366),
        "rotation_check_seconds": _as_int(10, 7 * 86_400),
    },
    "log": {
        "level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "format": _choice("text", "json"),
    },
}


_IDP_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "name": _as_str,
    "issuer": _as_str,
    "audience": _as_str_list,
    "jwks_url": _as_url("http", "https"),
    "public_key_file": _as_path,
    "key_url": _as_url("http", "https"),
    "algorithms": _as_algorithms,
    "user_claim": _as_str,
    "user_attribute": _choice(*USER_ATTRIBUTES),
    "workload_name_claim": _as_str,
    "claim_bindings": _as_bool,
    "header": _as_header,
    "signer": _as_str,
    "leeway_seconds": _as_int(0, 3_600),
    "grace_seconds": _as_int(0, 7 * 86_400),
}


def _identity_providers(raw: Any, base: Path) -> tuple[IdpSettings, ...]:
    """The ``[[idp]]`` tables, each complete and unambiguous."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError("idp", "must be an array of tables ([[idp]])")
    found: list[IdpSettings] = []
    for index, body in enumerate(raw):
        where = f"idp[{index}]"
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key not in _IDP_PARSERS:
                raise ConfigError(f"{where}.{key}", "unknown setting")
            parsed = _IDP_PARSERS[key](f"{where}.{key}", value)
            if isinstance(parsed, Path) and not parsed.is_absolute():
                parsed = base / parsed
            values[key] = parsed
        idp = replace(IdpSettings(), **values)
        name = idp.name.strip()
        if not name:
            raise ConfigError(f"{where}.name", "every [[idp]] needs a name")
        where = f"idp {name!r}"
        if not idp.issuer.strip():
            raise ConfigError(f"{where}.issuer", "is required: tokens are matched by their iss")
        sources = [bool(idp.jwks_url), idp.public_key_file is not None, bool(idp.key_url)]
        if sum(sources) != 1:
            raise ConfigError(where, "needs exactly one of jwks_url, public_key_file, key_url")
        if idp.key_url and "{kid}" not in idp.key_url:
            raise ConfigError(f"{where}.key_url", "must contain {kid}")
        if not idp.audience and not idp.header:
            # A token minted for any other application of the same IdP would do otherwise.
            raise ConfigError(f"{where}.audience", "is required for bearer tokens")
        if idp.signer and not idp.header:
            raise ConfigError(f"{where}.signer", "only applies with header")
        if not idp.user_claim.strip():
            raise ConfigError(f"{where}.user_claim", "must name a claim")
        if any(other.name == name for other in found):
            raise ConfigError(where, "is defined twice")
        if idp.header and any(o.header.lower() == idp.header.lower() for o in found):
            raise ConfigError(f"{where}.header", "is already used by another [[idp]]")
        found.append(replace(idp, name=name))
    return tuple(found)


def _collect(doc: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Merge the file's sections with the environment, rejecting unknown keys in both."""
    merged: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for section, body in doc.items():
        if section in {"data_dir", "idp"}:
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
    idps = _identity_providers(doc.get("idp"), base)
    settings = Settings(data_dir=data_dir, idp=idps, **sections)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    server = settings.server
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError("server.tls_cert", "tls_cert and tls_key must be given together")
    proxy = settings.front_proxy
    if proxy.identity_header and not proxy.trusted_proxies:
        raise ConfigError(
            "front_proxy.trusted_proxies",
            "must list the proxy's addresses when identity_header is set",
        )
    nats = settings.nats
    if (nats.tls_cert is None) != (nats.tls_key is None):
        raise ConfigError("nats.tls_cert", "tls_cert and tls_key must be given together")


def setting_names() -> list[str]:
    """Every ``section.key`` the loader accepts (the sample config documents each one)."""
    names = [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]
    return names + [f"idp.{f.name}" for f in fields(IdpSettings)]
