"""The system connection over TLS with a private CA and a client certificate (mutual TLS)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from resolver.audit.connection_recorder import ConnectionRecorder
from resolver.config import NatsSettings
from resolver.db.models import Account
from resolver.errors import ConfigError
from resolver.push.connection import SystemConnection
from tests.push.conftest import wait_for
from tests.support.nats import NatsServer
from tests.support.pki import make_pki


async def test_push_over_mutual_tls(
    tmp_path: Path, full_nats: NatsServer, sys_creds: Path, system_account: Account
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    full_nats.configure(
        full_nats.conf.read_text()
        + "tls {\n"
        + f'  cert_file: "{pki / "server.pem"}"\n'
        + f'  key_file: "{pki / "server.key"}"\n'
        + f'  ca_file: "{pki / "ca.pem"}"\n'
        + "  verify: true\n}\n"
    )
    full_nats.start()
    settings = NatsSettings(
        servers=(f"tls://127.0.0.1:{full_nats.port}",),
        system_creds=sys_creds,
        tls_ca=pki / "ca.pem",
        tls_cert=pki / "client.pem",
        tls_key=pki / "client.key",
        push_timeout=0.3,
    )
    connection = SystemConnection(settings, sys_creds)
    connection.start()
    try:

        async def connected() -> bool:
            return connection.connected

        await wait_for(connected, what="a TLS connection")
        replies = await connection.push_claims(
            system_account.public_key, system_account.jwt or "", 0.3
        )
        assert {r.server for r in replies} == {"n1"} and all(r.code == 200 for r in replies)
    finally:
        await connection.close()

    # Without the client certificate the server refuses: the connection never comes up.
    without_cert = SystemConnection(replace(settings, tls_cert=None, tls_key=None), sys_creds)
    without_cert.start()
    try:
        await asyncio.sleep(1.5)
        assert not without_cert.connected
    finally:
        await without_cert.close()


def test_unreadable_tls_files_stop_start_up(tmp_path: Path) -> None:
    settings = NatsSettings(tls_ca=tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match=r"nats\.tls_ca"):
        SystemConnection(settings, tmp_path / "sys.creds")
    # The connection audit builds its context through the same function.
    with pytest.raises(ConfigError, match=r"nats\.tls_ca"):
        ConnectionRecorder(async_sessionmaker(), settings, tmp_path / "sys.creds")
