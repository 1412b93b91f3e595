"""The product as an operator runs it, for end-to-end tests and benchmarks.

``Stack.start`` follows the README: ``nats-iam-resolver init`` a data directory, create an
admin, a read-only admin and a SCIM token with ``token create``, ``serve`` on an ephemeral
127.0.0.1 port, then a real nats-server on the configuration ``nats-config`` prints
(``resolver: URL(http://127.0.0.1:PORT/jwt/v1/accounts/)``), and wait until the service's
push connection to it is up. ``Stack.stop`` stops both processes. SQLite by default; any
``database_url`` (PostgreSQL) is handed to every command as ``RESOLVER_DATABASE_URL``.
``token create`` and ``nats-config`` run in one process (tests/support/stack_setup.py).

``Api`` speaks to the service over HTTP as an IdP (SCIM) and an admin do; ``connect`` is a
NATS client with a creds file that records what happens to its connection. Nothing here
reaches into the service's process: what the tests see is what an outsider sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
from aiohttp import ClientSession

from tests.support.nats import NatsServer
from tests.support.ports import free_port
from tests.support.processes import Process, resolver_bin

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

T = TypeVar("T")
#: Where ``tests`` is importable from (``_set_up`` runs a module of it).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The API tokens every stack makes (``Stack.tokens`` keys).
TOKEN_SCOPES = ("admin", "admin:read", "scim")


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    """A SCIM PatchOp body."""
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


# -- the processes ----------------------------------------------------------------------


@dataclass
class Stack:
    """A running ``nats-iam-resolver serve`` and a nats-server resolving accounts through it."""

    workdir: Path
    data: Path
    env: dict[str, str]
    http_port: int
    nats_port: int
    tokens: dict[str, str]
    service: Process | None = None
    nats: NatsServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def config(self) -> Path:
        return self.data / "resolver.toml"

    @property
    def sys_creds(self) -> Path:
        return self.data / "sys.creds"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        database_url: str | None = None,
        log_level: str = "INFO",
        service_core: int | None = None,
        extra_config: str = "",
        init_args: tuple[str, ...] = (),
    ) -> Stack:
        """Init, tokens, serve, nats-server; the push connection is up when this returns.

        ``service_core`` pins the service process to one CPU (benchmarks); ``extra_config``
        is TOML appended to the generated resolver.toml (``[[idp]]`` tables, say);
        ``init_args`` are passed to ``init`` (``--auth-callout``, say)."""
        workdir.mkdir(parents=True, exist_ok=True)
        env = {"RESOLVER_LOG_LEVEL": log_level}
        if database_url:
            env["RESOLVER_DATABASE_URL"] = database_url
        stack = cls(
            workdir=workdir,
            data=workdir / "data",
            env=env,
            http_port=free_port(),
            nats_port=free_port(),
            tokens={},
        )
        try:
            stack._init(init_args)
            if extra_config:
                with stack.config.open("a", encoding="utf-8") as config:
                    config.write("\n" + extra_config)
            # The service starts while the tokens and the nats-server config are made: each
            # is a process that spends a second or two importing, and neither needs the other.
            stack._start_service(service_core)
            config_text = stack._set_up(nats_config=True)
            stack._wait_service_ready()
            stack._start_nats(config_text)
            stack._wait_push_connected()
        except BaseException:
            stack.stop()
            raise
        return stack

    def cli(self, *args: str) -> str:
        """Run ``nats-iam-resolver ARGS --config <this stack>``; its stdout."""
        result = subprocess.run(
            [resolver_bin(), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def _init(self, extra: tuple[str, ...] = ()) -> None:
        subprocess.run(
            [
                resolver_bin(),
                "init",
                "--data-dir",
                str(self.data),
                "--port",
                str(self.http_port),
                "--nats-url",
                self.nats_url,
                *extra,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            check=True,
            timeout=60,
        )

    def _set_up(self, *, nats_config: bool) -> str:
        """``token create`` for each of ``TOKEN_SCOPES`` (into ``tokens``) and, if asked,
        ``nats-config`` (its output), in one process (tests/support/stack_setup.py)."""
        flags = ["--nats-config"] if nats_config else []
        command = [sys.executable, "-m", "tests.support.stack_setup", str(self.config)]
        result = subprocess.run(
            [*command, *flags, *TOKEN_SCOPES],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            cwd=REPO_ROOT,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        made = json.loads(result.stdout.strip().splitlines()[-1])
        self.tokens.update(made["tokens"])
        return made["nats_config"] or ""

    def _start_service(self, core: int | None) -> None:
        self.service = Process(
            [resolver_bin(), "serve", "--config", str(self.config)],
            self.workdir / "service.log",
            env=self.env,
        )
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.service.proc.pid, {core})

    def _wait_service_ready(self) -> None:
        # nats-server refuses to start unless the resolver URL answers: wait for it.
        self._wait_http("/jwt/v1/accounts/", lambda status, _body: status == 200)

    def _start_nats(self, config_text: str) -> None:
        server = NatsServer(self.workdir / "nats", "n1", port=self.nats_port)
        server.configure(f"server_name: n1\n{config_text}")
        self.nats = server
        server.start()

    def _wait_push_connected(self) -> None:
        def connected(status: int, body: bytes) -> bool:
            return status == 200 and bool(json.loads(body)["nats"]["connected"])

        self._wait_http("/admin/v1/push", connected, token=self.tokens["admin:read"])

    def _wait_http(
        self,
        path: str,
        done: Callable[[int, bytes], bool],
        *,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        request = urllib.request.Request(self.base_url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        deadline = time.monotonic() + timeout
        while True:
            assert self.service is not None and self.service.alive(), self.service_output()
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if done(response.status, response.read()):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} never answered as expected:\n{self.service_output()}")
            time.sleep(0.05)

    def service_output(self) -> str:
        return self.service.output()[-4000:] if self.service is not None else ""

    def stop(self) -> None:
        """Stop nats-server, then the service (it would log reconnect attempts otherwise)."""
        try:
            if self.nats is not None:
                self.nats.stop()
        finally:
            if self.service is not None:
                self.service.stop()


# -- talking to the service -------------------------------------------------------------


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, what: str, within: float = 10.0, every: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something truthy (at most ``within`` s); that value."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


@dataclass
class Api:
    """The service's HTTP API, called as the IdP (token ``scim``) and admins do."""

    base: str
    nats_url: str
    tokens: dict[str, str]
    tmp: Path
    http: ClientSession
    clients: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, stack: Stack, http: ClientSession, tmp: Path) -> Api:
        return cls(stack.base_url, stack.nats_url, stack.tokens, tmp, http)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = "admin",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"}
        if path.startswith("/scim/"):
            headers["Content-Type"] = "application/scim+json"
        async with self.http.request(
            method, self.base + path, json=body, headers=headers, params=params
        ) as response:
            text = await response.text()
            try:
                data = await response.json(content_type=None) if text else None
            except ValueError:
                data = text
            return response.status, data

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, data = await self.call(method, path, body, **kwargs)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    async def scim(self, method: str, path: str, body: Any = None) -> Any:
        return await self.ok(method, "/scim/v2" + path, body, token="scim")

    async def user(self, name: str) -> str:
        """A new active SCIM user; its id."""
        body = {"schemas": [USER], "userName": name, "active": True}
        return (await self.scim("POST", "/Users", body))["id"]

    async def group(self, name: str, members: Iterable[str]) -> str:
        """A new SCIM group with these member ids; its id."""
        body = {
            "schemas": [GROUP],
            "displayName": name,
            "members": [{"value": m} for m in members],
        }
        return (await self.scim("POST", "/Groups", body))["id"]

    async def account(self, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if spec is not None:
            body["spec"] = spec
        return await self.ok("POST", "/admin/v1/accounts", body)

    async def role(self, name: str, **fields: Any) -> dict[str, Any]:
        return await self.ok("POST", "/admin/v1/roles", {"name": name, **fields})

    async def binding(self, account: str, role: str, **target: Any) -> int:
        """Bind a group (``group=displayName`` or ``group_id=id``) or a claim; the id."""
        body = {"account": account, "role": role, **target}
        return int((await self.ok("POST", "/admin/v1/bindings", body))["id"])

    async def creds(self, user: str, account: str, ttl: str = "1h") -> Path:
        """Person credentials from the admin API, written to a 0600 creds file."""
        issued = await self.ok(
            "POST", f"/admin/v1/users/{user}/credentials", {"account": account, "ttl": ttl}
        )
        path = self.tmp / f"{user}-{account}-{issued['user_key'][:8]}.creds"
        path.write_text(issued["creds"])
        path.chmod(0o600)
        return path

    async def get_account(self, account: str) -> dict[str, Any]:
        return await self.ok("GET", f"/admin/v1/accounts/{account}", token="admin:read")

    async def account_jti(self, account: str) -> str:
        return (await self.get_account(account))["jti"]

    async def push_status(self) -> dict[str, Any]:
        return await self.ok("GET", "/admin/v1/push", token="admin:read")

    async def pushed(self, account: str, *, within: float = 10.0) -> dict[str, Any]:
        """Wait until the account's current JWT has been pushed and acknowledged: no row of
        the account pending, and the newest reply recorded for the server names that JWT.
        Returns that server's entry of ``GET /admin/v1/push``."""
        current = await self.get_account(account)

        async def done() -> dict[str, Any] | None:
            status = await self.push_status()
            if any(row["account"] == current["public_key"] for row in status["pending"]):
                return None
            for server in status["servers"]:
                if server["account"] == current["public_key"] and server["jti"] == current["jti"]:
                    return server
            return None

        return await wait_for(done, what=f"the push of {account}", within=within)

    async def close_clients(self) -> None:
        for nc in self.clients:
            if not nc.is_closed:
                await nc.close()
        self.clients.clear()


# -- NATS clients -----------------------------------------------------------------------


@dataclass
class Person:
    """A connected NATS client and what happened to its connection since."""

    nc: Any
    creds: Path
    errors: list[str]
    lost: asyncio.Event
    closed: asyncio.Event
    reconnected: asyncio.Event
    lost_at: list[float]


async def connect(
    api: Api | str,
    creds: Path,
    *,
    reconnect: bool = False,
    attempts: int = 3,
) -> Person:
    """Connect with a creds file. ``reconnect``: nats-py's reconnect on, ``attempts`` tries
    ``0.05`` s apart, so a refused reconnect is observable (errors, then ``closed``)."""
    url = api if isinstance(api, str) else api.nats_url
    errors: list[str] = []
    lost, closed, reconnected = asyncio.Event(), asyncio.Event(), asyncio.Event()
    lost_at: list[float] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        if not lost.is_set():
            lost_at.append(time.perf_counter())
            lost.set()

    async def on_closed() -> None:
        closed.set()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        url,
        user_credentials=str(creds),
        allow_reconnect=reconnect,
        max_reconnect_attempts=attempts,
        reconnect_time_wait=0.05,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        closed_cb=on_closed,
        reconnected_cb=on_reconnect,
    )
    if not isinstance(api, str):
        api.clients.append(nc)
    return Person(nc, creds, errors, lost, closed, reconnected, lost_at)


async def may_publish(person: Person, subject: str) -> None:
    """The person publishes on ``subject`` and receives it back on their own subscription."""
    sub = await person.nc.subscribe(subject)
    await person.nc.publish(subject, b"hello")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"hello"
    await sub.unsubscribe()


async def refused_publish(person: Person, subject: str) -> None:
    """nats-server answers a publish on ``subject`` with a permissions violation."""
    await person.nc.publish(subject, b"nope")
    await person.nc.flush()
    expected = f'permissions violation for publish to "{subject}"'.lower()
    deadline = time.monotonic() + 3
    while not any(expected in e.lower() for e in person.errors):
        assert time.monotonic() < deadline, person.errors
        await asyncio.sleep(0.02)


async def refused_connect(url: str, creds: Path) -> str:
    """A fresh connect with ``creds`` is refused; the server's reason, lower case."""

    async def quiet(_exc: Exception) -> None:
        return None  # without a callback nats-py logs the refusal with a traceback

    try:
        nc = await nats.connect(
            url,
            user_credentials=str(creds),
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=quiet,
        )
    except nats.errors.Error as exc:
        return str(exc).lower()
    await nc.close()
    raise AssertionError(f"{creds.name} still connects")
