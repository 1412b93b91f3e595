"""``init``: a data directory with config, master key, migrated database, operator and creds.

Idempotent: each step is skipped when its result already exists, so running it again (as
``make run`` does every time) changes nothing that works.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from resolver.accounts.natsconf import listen_address, nats_server_config
from resolver.accounts.operator import (
    create_operator,
    get_operator,
    issue_system_user_creds,
)
from resolver.audit.service import Actor
from resolver.config import MASTER_KEY_ENV, Settings, load_settings
from resolver.credentials.callout_keys import CalloutSetup, sentinel_creds, setup_auth_callout
from resolver.db import migrate
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import Operator
from resolver.errors import ConfigError
from resolver.sealing import Sealer, generate_master_key_file, load_master_key

CONFIG_TEMPLATE = """\
# nats-iam-resolver configuration, written by `nats-iam-resolver init`.
# Every setting is listed in conf/resolver.toml; environment variables
# RESOLVER_<SECTION>_<KEY> override what is here.

# Relative paths below are relative to this file's directory.
data_dir = "."

[server]
host = "{host}"
port = {port}
public_url = "{public_url}"

[database]
# Default: sqlite+aiosqlite:///<data_dir>/resolver.db
url = ""

[security]
master_key_file = "master.key"

[nats]
servers = ["{nats_url}"]
system_creds = "sys.creds"

[auth_callout]
# `init --auth-callout` sets this up (auth account, keys, nats-server default_sentinel).
enabled = {auth_callout}
account = "AUTH"

[log]
level = "INFO"
format = "text"
"""


@dataclass
class InitReport:
    config_path: Path
    nats_config_path: Path
    creds_path: Path
    created: list[str]
    operator_key: str
    system_account_key: str
    #: The auth callout's account (None unless the callout is set up).
    auth_callout: CalloutSetup | None = None
    sentinel_creds_path: Path | None = None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (creds, keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def write_config(
    config_path: Path,
    *,
    host: str,
    port: int,
    public_url: str,
    nats_url: str,
    auth_callout: bool = False,
) -> bool:
    if config_path.exists():
        return False
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            host=host,
            port=port,
            public_url=public_url,
            nats_url=nats_url,
            auth_callout="true" if auth_callout else "false",
        ),
        encoding="utf-8",
    )
    return True


_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*(?:#.*)?$")
_ENABLED_RE = re.compile(r"^(\s*enabled\s*=\s*)(\S+)(.*)$")


def enable_auth_callout(config_path: Path) -> bool:
    """Set ``[auth_callout] enabled = true`` in an existing config; False if it already was.

    A line edit, not a TOML rewrite, so the file's comments and layout stay as they were.
    """
    if load_settings(config_path).auth_callout.enabled:
        return False
    lines = config_path.read_text(encoding="utf-8").splitlines()
    section = None
    start = None
    for number, line in enumerate(lines):
        header = _SECTION_RE.match(line)
        if header:
            section = header.group(1).strip()
            if section == "auth_callout":
                start = number
            continue
        found = _ENABLED_RE.match(line)
        if section == "auth_callout" and found:
            lines[number] = f"{found.group(1)}true{found.group(3)}"
            break
    else:
        if start is None:
            lines += ["", "[auth_callout]", "enabled = true"]
        else:
            lines.insert(start + 1, "enabled = true")
    config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not load_settings(config_path).auth_callout.enabled:
        # Set some other way (an environment override, a dotted key): say so, change nothing.
        raise ConfigError(
            "auth_callout.enabled", f"could not turn it on in {config_path}; set it by hand"
        )
    return True


async def initialize(
    config_path: Path, *, operator_name: str = "nats-iam-resolver", auth_callout: bool = False
) -> InitReport:
    """Everything after the config file exists: master key, schema, operator, creds, conf.

    ``auth_callout`` (or ``[auth_callout] enabled`` already in the config) also makes the
    auth account with its keys, turns the setting on and writes the sentinel's creds.
    """
    created: list[str] = []
    settings = load_settings(config_path)
    auth_callout = auth_callout or settings.auth_callout.enabled
    if not os.environ.get(MASTER_KEY_ENV) and generate_master_key_file(settings.master_key_path):
        created.append(f"master key {settings.master_key_path}")
    sealer = Sealer(load_master_key(settings.master_key_path))

    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        sessions = create_sessionmaker(engine)
        async with sessions() as session, session.begin():
            if await session.scalar(select(Operator.id).limit(1)) is None:
                await create_operator(
                    session,
                    sealer,
                    name=operator_name,
                    account_server_url=f"{settings.public_url}/jwt/v1",
                    account_jwt_ttl=settings.accounts.jwt_ttl_seconds,
                )
                created.append("operator, signing key and system account")
            creds_path = settings.system_creds_path
            if not creds_path.exists():
                write_private(creds_path, await issue_system_user_creds(session, sealer))
                created.append(f"system user creds {creds_path}")
            callout = sentinel_text = None
            if auth_callout:
                callout = await setup_auth_callout(
                    session, sealer, settings, actor=Actor("admin", source="init")
                )
                if callout.created:
                    created.append(f"auth callout account {callout.account_name} and its keys")
                sentinel_text = await sentinel_creds(session, sealer, settings)
            operator = await get_operator(session)
            conf_text = render_nats_config(
                settings, operator, default_sentinel=callout.sentinel_jwt if callout else None
            )
    finally:
        await engine.dispose()

    # Files only after the commit: none may name keys the database does not hold.
    sentinel_path = None
    if callout is not None:
        if enable_auth_callout(config_path):
            created.append(f"[auth_callout] enabled = true in {config_path}")
        sentinel_path = settings.data_dir / "sentinel.creds"
        if sentinel_text is not None and not sentinel_path.exists():
            write_private(sentinel_path, sentinel_text)
            created.append(f"sentinel creds {sentinel_path}")

    nats_conf = settings.data_dir / "nats-server.conf"
    if not nats_conf.exists() or nats_conf.read_text(encoding="utf-8") != conf_text:
        nats_conf.write_text(conf_text, encoding="utf-8")
        created.append(f"nats-server config {nats_conf}")
    return InitReport(
        config_path=config_path,
        nats_config_path=nats_conf,
        creds_path=settings.system_creds_path,
        created=created,
        operator_key=operator.public_key,
        system_account_key=operator.system_account_key or "",
        auth_callout=callout,
        sentinel_creds_path=sentinel_path,
    )


def render_nats_config(
    settings: Settings,
    operator: Operator,
    *,
    monitor_port: int | None = None,
    default_sentinel: str | None = None,
) -> str:
    text = nats_server_config(
        operator_jwt=operator.jwt or "",
        system_account_key=operator.system_account_key or "",
        resolver_base_url=settings.public_url,
        listen=listen_address(settings.nats.servers[0]),
        monitor_port=monitor_port,
    )
    if default_sentinel:
        # nats-server 2.11.2+: clients without a JWT of their own connect as this bearer user
        # of the auth account, so the auth callout decides who they are (token/password).
        text += (
            "# Auth callout: JWT-less clients are sent to the callout as this sentinel user.\n"
            f"default_sentinel: {default_sentinel}\n"
        )
    return text
