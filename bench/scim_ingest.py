"""SCIM ingest benchmark: user creation rate, single-member PATCH latency by group size, and
an Okta-style paged import. Prints a table.

    .venv/bin/python bench/scim_ingest.py [--users 2000] [--database-url URL]

The service runs in a child process pinned to ONE core (the app `serve` builds, on a real
aiohttp server on 127.0.0.1 and a real database); the client runs here, pinned to another core
when there is one. Big groups and the 20,000-user population are inserted with SQL first:
only the measured requests go through HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resolver.app import create_app
from resolver.auth.tokens import create_token
from resolver.config import DatabaseSettings, NatsSettings, Settings
from resolver.db import migrate
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import Group, GroupMember, User, new_uuid, utcnow
from resolver.sealing import generate_master_key_file

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


async def bulk_users(engine, count: int, prefix: str) -> list[str]:
    ids = [new_uuid() for _ in range(count)]
    now = utcnow()
    async with create_sessionmaker(engine)() as session, session.begin():
        for start in range(0, count, 5000):
            chunk = ids[start : start + 5000]
            await session.execute(
                insert(User),
                [
                    {
                        "id": i,
                        "user_name": f"{prefix}{n + start}@example.com",
                        "user_name_key": f"{prefix}{n + start}@example.com",
                        "resource": {
                            "schemas": [USER],
                            "userName": f"{prefix}{n + start}@example.com",
                        },
                        "active": True,
                        "version": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for n, i in enumerate(chunk)
                ],
            )
    return ids


async def bulk_group(engine, name: str, member_ids: list[str]) -> str:
    gid = new_uuid()
    now = utcnow()
    async with create_sessionmaker(engine)() as session, session.begin():
        session.add(
            Group(
                id=gid,
                display_name=name,
                display_name_key=name.casefold(),
                resource={"schemas": [GROUP], "displayName": name},
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        for start in range(0, len(member_ids), 5000):
            await session.execute(
                insert(GroupMember),
                [
                    {"group_id": gid, "user_id": u, "created_at": now}
                    for u in member_ids[start : start + 5000]
                ],
            )
    return gid


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_settings(data: Path, url: str, port: int) -> Settings:
    settings = Settings(data_dir=data)
    return replace(
        settings,
        server=replace(settings.server, port=port),
        database=DatabaseSettings(url=url),
        nats=NatsSettings(enabled=False),
    )


def serve(data: Path, url: str, port: int) -> None:
    """The child: the service alone on core 0, access log off (as a quiet production would)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    app = create_app(bench_settings(data, url, port))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000, help="users created over HTTP")
    parser.add_argument("--patches", type=int, default=300, help="PATCHes per group size")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--serve", nargs=3, metavar=("DATA", "URL", "PORT"), help=argparse.SUPPRESS)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="scim-bench-"))
    generate_master_key_file(tmp / "master.key")
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'resolver.db'}"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    async with create_sessionmaker(engine)() as session, session.begin():
        token = await create_token(session, "bench", ["scim"])
    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        str(tmp),
        url,
        str(port),
        env={**os.environ, "RESOLVER_LOG_LEVEL": "WARNING"},
    )
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    wait_for(port)
    base = f"http://127.0.0.1:{port}/scim/v2"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    rows: list[tuple[str, str]] = []
    async with aiohttp.ClientSession(headers=headers) as http:

        async def call(method: str, path: str, body: object = None) -> int:
            async with http.request(method, base + path, json=body) as resp:
                await resp.read()
                return resp.status

        # (a) user creation: POST only, then Okta's lookup-then-create pairs.
        queue = list(range(args.users))

        async def creator(kind: str) -> None:
            while queue:
                n = queue.pop()
                name = f"{kind}{n}@example.com"
                if kind == "okta":
                    await call("GET", f'/Users?filter=userName eq "{name}"&startIndex=1&count=100')
                body = {"schemas": [USER], "userName": name, "active": True,
                        "name": {"givenName": "G", "familyName": str(n)},
                        "emails": [{"value": name, "primary": True, "type": "work"}]}  # fmt: skip
                assert await call("POST", "/Users", body) == 201

        for kind in ("post", "okta"):
            queue[:] = range(args.users)
            started = time.perf_counter()
            await asyncio.gather(*(creator(kind) for _ in range(args.concurrency)))
            rate = args.users / (time.perf_counter() - started)
            label = "POST /Users" if kind == "post" else "Okta lookup + POST /Users"
            rows.append((f"(a) users created/s, {label}", f"{rate:,.0f}"))

        # (c) Okta-style import: every user, 100 per page, in order.
        await bulk_users(engine, max(0, 20_000 - 2 * args.users), "import")
        started = time.perf_counter()
        seen, start, total = 0, 1, None
        while total is None or start <= total:
            async with http.get(f"{base}/Users?startIndex={start}&count=100") as resp:
                page = await resp.json(content_type=None)
            total = page["totalResults"]
            seen += len(page["Resources"])
            start += 100
        took = time.perf_counter() - started
        rows.append((f"(c) Okta import of {total:,} users, pages of 100",
                     f"{took:.1f} s ({seen / took:,.0f} users/s)"))  # fmt: skip

        # (b) single-member PATCH latency by group size.
        pool = await bulk_users(engine, 100_001, "member")
        base_p50 = None
        for size in (10, 10_000, 100_000):
            gid = await bulk_group(engine, f"group-{size}", pool[:size])
            newcomer = pool[size]
            latencies: list[float] = []
            for i in range(args.patches):
                if i % 2 == 0:
                    op = {"op": "add", "path": "members", "value": [{"value": newcomer}]}
                else:
                    op = {"op": "remove", "path": f'members[value eq "{newcomer}"]'}
                started = time.perf_counter()
                status = await call(
                    "PATCH", f"/Groups/{gid}", {"schemas": [PATCH_OP], "Operations": [op]}
                )
                latencies.append((time.perf_counter() - started) * 1000)
                assert status == 204, status
            p50, p99 = statistics.median(latencies), pct(latencies, 0.99)
            base_p50 = base_p50 or p50
            rows.append(
                (f"(b) PATCH 1 member, group of {size:,}: p50 / p99 ms",
                 f"{p50:.2f} / {p99:.2f}  (p50 x{p50 / base_p50:.2f} of size 10)")
            )  # fmt: skip
            started = time.perf_counter()
            assert await call("GET", f"/Groups/{gid}?excludedAttributes=members") == 200
            rows.append((f"    GET group of {size:,}, excludedAttributes=members ms",
                         f"{(time.perf_counter() - started) * 1000:.2f}"))  # fmt: skip

    child.terminate()
    await child.wait()
    await engine.dispose()
    width = max(len(r[0]) for r in rows)
    print(f"SCIM ingest on {engine.dialect.name} (python {sys.version.split()[0]})")
    print(f"{'measure'.ljust(width)}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve(Path(arguments.serve[0]), arguments.serve[1], int(arguments.serve[2]))
    else:
        asyncio.run(main(arguments))
