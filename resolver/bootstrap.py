"""``init``: a data directory with config, master key, migrated database, operator and creds.

Idempotent: each step is skipped when its result already exists, so running it again (as
``make run`` does every time) changes nothing that works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from resolver.accounts.natsconf import listen_address, nats_server_config
from resolver.accounts.operator import (
    create_operator,
    get_operator,
    issue_system_user_creds,
)
from resolver.config import MASTER_KEY_ENV, Settings, load_settings
from resolver.db import migrate
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import Operator
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


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (creds, keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def write_config(
    config_path: Path, *, host: str, port: int, public_url: str, nats_url: str
) -> bool:
    if config_path.exists():
        return False
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        CONFIG_TEMPLATE.format(host=host, port=port, public_url=public_url, nats_url=nats_url),
        encoding="utf-8",
    )
    return True


async def initialize(config_path: Path, *, operator_name: str = "nats-iam-resolver") -> InitReport:
    """Everything after the config file exists: master key, schema, operator, creds, conf."""
    created: list[str] = []
    settings = load_settings(config_path)
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
            operator = await get_operator(session)
            conf_text = render_nats_config(settings, operator)
    finally:
        await engine.dispose()

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
    )


def render_nats_config(
    settings: Settings, operator: Operator, *, monitor_port: int | None = None
) -> str:
    return nats_server_config(
        operator_jwt=operator.jwt or "",
        system_account_key=operator.system_account_key or "",
        resolver_base_url=settings.public_url,
        listen=listen_address(settings.nats.servers[0]),
        monitor_port=monitor_port,
    )
