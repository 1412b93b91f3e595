"""High availability, end to end: two ``nats-iam-resolver serve`` processes on one PostgreSQL
database and a real nats-server (its URL resolver on replica B, the one that survives).

Replica A starts first and so becomes the job leader. The test shows, as an outsider sees
it (HTTP, NATS, the database's tables):

(a) a change made through A is served by B within one second (LISTEN/NOTIFY);
(b) each change is pushed once: nats-server's system account sees one claims update per
    account JWT, and every outbox row was done on its first attempt;
(c) the jobs run on A only (``job_runs``, ``GET /admin/v1/jobs``, each replica's /metrics);
(d) A is killed (SIGKILL) right after a SCIM deactivation it answered: the person's live
    connection is still dropped and the account JWT on nats-server refuses her creds, B
    takes the jobs over within ``leader_check_seconds`` plus a job interval, and a change
    made through B afterwards is pushed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from aiohttp import ClientSession

from resolver.natsjwt import new_keypair
from tests.support.nats import NatsServer
from tests.support.ports import free_port
from tests.support.processes import Process, resolver_bin
from tests.support.stack import (
    Api,
    Stack,
    connect,
    may_publish,
    patch,
    refused_connect,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LEADER_CHECK_SECONDS = 1
#: The binding job is the one with the shortest allowed interval: it shows who runs jobs.
JOB = "lapse_ended_bindings"
JOB_SECONDS = 1
UPDATE_SUBJECT = "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE"


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def creds_user_key(creds: Path) -> str:
    token = creds.read_text().split("-----BEGIN NATS USER JWT-----")[1].split("------END")[0]
    return claims(token.strip())["sub"]


def replica_of(process: Process) -> str:
    return f"{socket.gethostname()}:{process.proc.pid}"


@pytest.fixture
def database(postgres_server_url: str) -> Iterator[str]:
    name = f"ha_{uuid.uuid4().hex[:12]}"
    admin = postgres_server_url.replace("+asyncpg", "") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{postgres_server_url}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Replicas:
    """Replica A (``stack.service``), replica B, and the nats-server resolving through B."""

    def __init__(self, stack: Stack, b: Process, b_port: int) -> None:
        assert stack.service is not None
        self.stack = stack
        self.a = stack.service
        self.b = b
        self.b_url = f"http://127.0.0.1:{b_port}"


@pytest.fixture
def replicas(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replicas]:
    # Every process started below (both replicas, the CLI) reads these.
    monkeypatch.setenv("RESOLVER_JOBS_LEADER_CHECK_SECONDS", str(LEADER_CHECK_SECONDS))
    monkeypatch.setenv("RESOLVER_ACCOUNTS_BINDING_CHECK_SECONDS", str(JOB_SECONDS))
    # No periodic re-push of every account: it would blur "one push per change".
    monkeypatch.setenv("RESOLVER_JOBS_RECONCILE_SECONDS", "0")
    workdir = tmp_path / "stack"
    workdir.mkdir()
    # Stack.start's steps, with a second replica before nats-server (which resolves via B).
    stack = Stack(
        workdir=workdir,
        data=workdir / "data",
        env={"RESOLVER_LOG_LEVEL": "INFO", "RESOLVER_DATABASE_URL": database},
        http_port=free_port(),
        nats_port=free_port(),
        tokens={},
    )
    b: Process | None = None
    try:
        stack._init()
        stack._set_up(nats_config=False)
        stack._start_service(None)  # replica A: first, so it wins the jobs lock
        stack._wait_service_ready()
        b_port = free_port()
        b_env = {**stack.env, "RESOLVER_SERVER_PORT": str(b_port)}
        b = Process(
            [resolver_bin(), "serve", "--config", str(stack.config)],
            tmp_path / "replica-b.log",
            env=b_env,
        )
        replicas = Replicas(stack, b, b_port)
        wait_until(replicas.b, replicas.b_url + "/jwt/v1/accounts/", lambda _body: True)
        nats_config = subprocess.run(
            [resolver_bin(), "nats-config", "--config", str(stack.config)],
            capture_output=True,
            text=True,
            env={**os.environ, **b_env},
            check=True,
            timeout=60,
        ).stdout
        assert f"127.0.0.1:{b_port}/jwt/v1/accounts/" in nats_config, nats_config
        server = NatsServer(workdir / "nats", "n1", port=stack.nats_port)
        server.configure(f"server_name: n1\n{nats_config}")
        stack.nats = server
        server.start()
        for process, base in ((replicas.a, stack.base_url), (b, replicas.b_url)):
            wait_until(
                process,
                base + "/admin/v1/push",
                lambda body: bool(json.loads(body)["nats"]["connected"]),
                token=stack.tokens["admin:read"],
            )
        yield replicas
    finally:
        try:
            stack.stop()
        finally:
            if b is not None:
                b.stop()


def wait_until(
    process: Process,
    url: str,
    done: Callable[[bytes], bool],
    *,
    token: str | None = None,
    timeout: float = 30.0,
) -> None:
    """Poll ``url`` until it answers 200 with a body ``done`` accepts."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    deadline = time.monotonic() + timeout
    while True:
        assert process.alive(), process.output()[-4000:]
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200 and done(response.read()):
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url}:\n{process.output()[-4000:]}"
        time.sleep(0.05)


async def served_token(http: ClientSession, base: str, key: str) -> str:
    async with http.get(f"{base}/jwt/v1/accounts/{key}") as response:
        assert response.status == 200
        return (await response.text()).strip()


async def jobs_view(api: Api) -> dict[str, Any]:
    return await api.ok("GET", "/admin/v1/jobs", token="admin:read")


async def job_runs(database: str) -> list[tuple[str, str, bool]]:
    with psycopg.connect(database.replace("+asyncpg", "")) as conn:
        rows = conn.execute("SELECT name, replica, ok FROM job_runs ORDER BY name").fetchall()
    return [(str(n), str(r), bool(ok)) for n, r, ok in rows]


async def outbox(database: str, account_key: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(database.replace("+asyncpg", "")) as conn:
        rows = conn.execute(
            "SELECT jti, status, attempts FROM push_outbox WHERE account_key = %s ORDER BY id",
            (account_key,),
        ).fetchall()
    return [(str(j), str(s), int(a)) for j, s, a in rows]


async def job_samples(api: Api, job: str) -> float:
    status, text = await api.call("GET", "/metrics", token="admin:read")
    assert status == 200
    pattern = re.compile(rf'^nir_job_runs_total\{{[^}}]*job="{job}"[^}}]*\}} (\S+)$', re.M)
    return sum(float(value) for value in pattern.findall(text))


async def test_two_replicas_share_changes_pushes_and_jobs_and_survive_a_kill(
    replicas: Replicas, database: str, tmp_path: Path
) -> None:
    stack = replicas.stack
    a_name, b_name = replica_of(replicas.a), replica_of(replicas.b)
    sys_nc = await nats.connect(stack.nats_url, user_credentials=str(stack.sys_creds))
    updates: list[tuple[str, str]] = []

    async def on_update(msg: Any) -> None:
        updates.append((msg.subject.split(".")[3], claims(msg.data.decode())["jti"]))

    await sys_nc.subscribe(UPDATE_SUBJECT, cb=on_update)
    await sys_nc.flush()
    async with ClientSession() as http:
        a = Api(stack.base_url, stack.nats_url, stack.tokens, tmp_path, http)
        b = Api(replicas.b_url, stack.nats_url, stack.tokens, tmp_path, http)
        try:
            # -- leader: A started first and holds the lock; both replicas say so.
            view_a, view_b = await jobs_view(a), await jobs_view(b)
            assert view_a["leader"]["this_replica"] is True, view_a
            assert view_b["leader"]["this_replica"] is False, view_b
            assert view_a["leader"]["holder"] == view_b["leader"]["holder"] == a_name

            # -- the world: an account, a role, alice in eng bound to it (all through A).
            orders = await a.account("orders")
            key = orders["public_key"]
            await a.role("writer", publish=["orders.>"], subscribe=["orders.>"])
            alice = await a.user("alice")
            await a.group("eng", [alice])
            await a.binding("orders", "writer", group="eng")
            creds = await a.creds("alice", "orders")
            person = await connect(a, creds)  # nats-server fetched orders from B
            await may_publish(person, "orders.hello")

            # -- (a) B has the account cached; a change through A reaches it within 1 s.
            before = claims(await served_token(http, b.base, key))["jti"]
            other_key, _ = new_keypair("user")  # nobody holds it: a harmless revocation
            await a.ok("POST", "/admin/v1/accounts/orders/revocations", {"user_key": other_key})
            changed = time.monotonic()
            new_jti = await a.account_jti("orders")
            assert new_jti != before

            async def b_serves_it() -> bool:
                return claims(await served_token(http, b.base, key))["jti"] == new_jti

            await wait_for(b_serves_it, what="B serving A's change", within=1.0)
            assert time.monotonic() - changed < 1.0

            # -- (b) pushed once: one claims update per JWT, every row done first time.
            await a.pushed("orders")
            await asyncio.sleep(0.5)  # time for a second push to show, if there were one
            seen = Counter(jti for account, jti in updates if account == key)
            assert seen[new_jti] == 1, updates
            assert all(count == 1 for count in seen.values()), seen
            rows = await outbox(database, key)
            assert rows and all(status in ("done", "superseded") for _, status, _ in rows), rows
            assert all(attempts == 1 for _, status, attempts in rows if status == "done"), rows

            # -- (c) jobs on A only: job_runs, both views, and each replica's own counters.
            async def a_ran_it() -> bool:
                return any(name == JOB for name, _, _ in await job_runs(database))

            await wait_for(a_ran_it, what=f"{JOB} recorded", within=JOB_SECONDS + 3)
            ran_before = await job_samples(a, JOB)
            await asyncio.sleep(JOB_SECONDS * 2.5)
            assert await job_samples(a, JOB) >= ran_before + 1  # still running, on A
            assert await job_samples(b, JOB) == 0
            assert {replica for _, replica, _ in await job_runs(database)} == {a_name}
            for view in (await jobs_view(a), await jobs_view(b)):
                job = next(j for j in view["jobs"] if j["name"] == JOB)
                assert job["last_run"]["replica"] == a_name and job["last_run"]["ok"], job
                assert view["leader"]["last_runner"] == a_name
            # The CLI reads the same from the database, and the lock's holder.
            listed = json.loads(stack.cli("jobs", "--format", "json"))
            assert listed["leader"] == a_name
            assert listed["jobs"][JOB]["replica"] == a_name

            # -- (d) deactivate alice through A and kill A the moment it has answered.
            user_key = creds_user_key(creds)
            await a.scim(
                "PATCH", f"/Users/{alice}", patch({"op": "replace", "value": {"active": False}})
            )
            replicas.a.stop(signal.SIGKILL)
            killed = time.monotonic()

            # Her live connection is closed for revocation (by A's push or B's retry) ...
            async with asyncio.timeout(10):
                await person.lost.wait()
            assert "revoked" in str(person.nc.last_error).lower(), person.errors
            # ... and the account JWT nats-server holds refuses her creds from now on.
            assert "authorization violation" in await refused_connect(stack.nats_url, creds)
            revoked = claims(await served_token(http, b.base, key))["nats"]["revocations"]
            assert user_key in revoked

            # B takes the jobs over: leader within one check, a run within one interval.
            async def b_leads() -> bool:
                view = await jobs_view(b)
                return view["leader"]["this_replica"] and view["leader"]["holder"] == b_name

            await wait_for(b_leads, what="B leading", within=LEADER_CHECK_SECONDS + 2)

            async def b_ran_it() -> bool:
                return (JOB, b_name, True) in await job_runs(database)

            await wait_for(b_ran_it, what=f"{JOB} on B", within=JOB_SECONDS + 2)
            assert time.monotonic() - killed < LEADER_CHECK_SECONDS + JOB_SECONDS + 3

            # Pushes carry on: a change through B reaches nats-server.
            count_before = len(updates)
            await b.ok(
                "POST",
                "/admin/v1/accounts/orders/revocations",
                {"user_key": new_keypair("user")[0]},
            )
            pushed = await b.pushed("orders")
            assert pushed["jti"] == await b.account_jti("orders")
            assert any(jti == pushed["jti"] for _, jti in updates[count_before:])
        finally:
            await a.close_clients()
            await sys_nc.close()
