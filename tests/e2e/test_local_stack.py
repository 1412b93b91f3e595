"""init + serve + the generated nats-server config, as `make run` wires them, for real."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import nats
import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.processes import Process, nats_server_bin, resolver_bin

pytestmark = pytest.mark.e2e


def _init(data: Path, http_port: int, nats_port: int) -> None:
    result = subprocess.run(
        [
            resolver_bin(),
            "init",
            "--data-dir",
            str(data),
            "--port",
            str(http_port),
            "--nats-url",
            f"nats://127.0.0.1:{nats_port}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def _system_user_round_trip(url: str, creds: Path) -> None:
    nc = await nats.connect(
        url, user_credentials=str(creds), connect_timeout=5, allow_reconnect=False
    )
    try:
        # Only a system-account user may ask every server for its identity.
        reply = await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=5)
        assert b'"server"' in reply.data
    finally:
        await nc.close()


async def test_init_serve_and_nats_server_connect_as_system_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    http_port, nats_port = free_port(), free_port()
    _init(data, http_port, nats_port)
    conf = data / "nats-server.conf"

    service = Process(
        [resolver_bin(), "serve", "--config", str(data / "resolver.toml")], tmp_path / "serve.log"
    )
    server = None
    try:
        wait_for_port(http_port)
        server = Process([nats_server_bin(), "-c", str(conf)], tmp_path / "nats.log")
        wait_for_port(nats_port)
        await _system_user_round_trip(f"nats://127.0.0.1:{nats_port}", data / "sys.creds")
        # The system account JWT reached nats-server through our resolver URL.
        assert re.search(r"GET /jwt/v1/accounts/A[A-Z2-7]{55} 200", service.output())
    finally:
        if server is not None:
            server.stop()
        assert service.stop() in (0, -signal.SIGTERM)


async def test_make_run_stack_starts_both_and_stops_on_signal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    http_port, nats_port = free_port(), free_port()
    _init(data, http_port, nats_port)
    stack = Process([resolver_bin(), "dev", "--data-dir", str(data)], tmp_path / "dev.log")
    try:
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in stack.output():
            assert stack.alive(), stack.output()
            assert time.monotonic() < deadline, stack.output()
            await asyncio.sleep(0.1)
        out = stack.output()
        assert re.search(r"SCIM token\s+nir_\S+", out) and re.search(r"admin token\s+nir_\S+", out)
        assert f"http://127.0.0.1:{http_port}" in out
        assert "Traceback" not in out
        await _system_user_round_trip(f"nats://127.0.0.1:{nats_port}", data / "sys.creds")
    finally:
        code = stack.stop(signal.SIGINT, timeout=20)
    assert code == 0, stack.output()
    # nats-server was stopped with it: the port is free again.
    with pytest.raises(TimeoutError):
        wait_for_port(nats_port, timeout=0.5)
