"""Credentials: issued per second, and p50/p99 latency at a fixed rate, for token exchange
(``POST /v1/credentials``) and for auth callout (from CONNECT to the server's acceptance).
Prints a table.

    .venv/bin/python bench/credentials.py [--seconds 10] [--rate 200] [--database-url URL]

The stack is the product as an operator runs it (tests/support/stack.py): ``init
--auth-callout``, ``serve`` pinned to ONE core, a real nats-server; a local IdP stand-in
(tests/support/idp.py) signs RS256 tokens for 50 users of one group bound to one account.
Tokens and user keys are made before the clock starts, so the load generator (this process,
on the other core) spends its time sending; the HTTP requests go out through ``LeanHTTP``,
a minimal keep-alive client, so that the generator's own cost stays out of the latencies.

- closed loop: 8 concurrent clients as fast as the service answers: issued per second;
- open loop at ``--rate`` per second for ``--seconds``: every request starts on schedule
  whether or not the previous ones finished; latency is measured from that start;
- reference, same run, same rate: ``GET /healthz`` on the same service (the HTTP floor);
- reference, same run, same rate, same core: bench/exchange_floor.py, the least work an
  exchange can do (check the token, sign, two inserts and a commit, nothing else): what this
  machine allows at best, so the service's p99 is read as a ratio to it; and the same with
  the two inserts through an SQLAlchemy session (what the database layer alone costs);
- auth callout: ``nats.connect(token=...)`` at ``--rate`` per second, timed from the start
  of the connect to its return (the server answered +OK after the callout's reply), each
  connection closed after; reference: the same connects with a creds file (no callout);
- latency two ways: from the moment this process began the request (the service's part;
  the target is read on it) and from the request's scheduled start, which also holds this
  process's own delays in starting requests (counted: how many began over 2 ms late). In
  an open loop the service cannot cause those delays: no request waits for another;
- cost: the service's CPU time (all its threads, from /proc) per request over each phase.
  This machine's speed drifts from run to run; CPU per request says what the code costs,
  and shows how much more a request costs alone (open loop) than in a stream (closed loop).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from aiohttp import ClientSession

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resolver.natsjwt import new_keypair
from tests.support.idp import AUDIENCE, running_idp
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import Process
from tests.support.stack import Api, Stack

USERS = 50
FLOOR = str(Path(__file__).resolve().parent / "exchange_floor.py")


def python_loop_seconds() -> float:
    """A fixed pure-Python workload: how fast this machine is right now (the same box has
    run 40% slower an hour later), so results of different runs can be compared."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) process ``pid`` used so far; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServiceCPU:
    """The service's CPU per request over a phase: what a request costs it, whatever the
    machine's speed does to latencies."""

    def __init__(self, pid: int, whose: str = "service") -> None:
        self.pid = pid
        self.whose = whose
        self.start = cpu_seconds(pid)

    def per_request(self, requests: float) -> str:
        end = cpu_seconds(self.pid)
        if end is None or self.start is None or not requests:
            return ""
        return f"{self.whose} CPU {(end - self.start) * 1000 / requests:.2f} ms/request"


class LeanHTTP:
    """The load generator's HTTP/1.1 client: each request written as bytes on a kept-alive
    connection, the answer read by its Content-Length.

    aiohttp's client spent about half a millisecond of this process's CPU per request; at
    200/s this process then fell behind its own schedule now and then, and a request it
    started late counted that delay as the server's. This does the least a client can.
    Only for the answers measured here: a status line, headers with a Content-Length, a
    body; anything else is an error, not guessed at.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer = self._idle.pop()
            # The server closes a connection idle for its keep-alive timeout (aiohttp: 75 s,
            # which a long --seconds outlasts): take another.
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._all.append(writer)
        return reader, writer

    async def open(self, connections: int) -> None:
        """Connect ahead of the clock (an open loop has a few requests in flight at once)."""
        for made in [await self._connection() for _ in range(connections)]:
            self._idle.append(made)

    def message(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, message: bytes) -> int:
        """The answer's status; its body is read and dropped."""
        reader, writer = await self._connection()
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self._all), return_exceptions=True)


def exchange_call(
    http: LeanHTTP, tokens: list[str], keys: Iterator[str]
) -> Callable[[int], Awaitable[bool]]:
    """One token exchange per call: user i's token, the next unused key."""

    async def exchange(i: int) -> bool:
        body = json.dumps({"public_key": next(keys)}).encode()
        headers = {
            "Authorization": f"Bearer {tokens[i % USERS]}",
            "Content-Type": "application/json",
        }
        return await http.send(http.message("POST", "/v1/credentials", headers, body)) == 201

    return exchange


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


#: A request the load generator started later than this after its due time is counted as
#: started late: its latency holds the generator's own delay.
LATE_MS = 2.0


@dataclass
class Phase:
    """An open loop's answers: latencies in ms two ways, errors, late starts."""

    #: From the scheduled start: what a client that wanted the answer then waited.
    scheduled: list[float] = field(default_factory=list)
    #: From the moment this process began the request: the service's part, without this
    #: process's own delays in starting it (none of which the service caused: each
    #: request starts on its own schedule, whatever the others are waiting for).
    sent: list[float] = field(default_factory=list)
    errors: int = 0
    #: Requests this process began more than LATE_MS after their scheduled start.
    late: int = 0


def summary(values: list[float]) -> str:
    return f"{pct(values, 0.5):.1f} / {pct(values, 0.99):.1f} / {max(values):.1f} ms"


async def open_loop(rate: float, seconds: float, call: Callable[[int], Awaitable[bool]]) -> Phase:
    """Start call(i) every 1/rate s, each on its own task."""
    phase = Phase()
    start = time.perf_counter()

    async def one(i: int, due: float) -> None:
        began = time.perf_counter()
        if (began - due) * 1000 > LATE_MS:
            phase.late += 1
        ok = await call(i)
        if ok:
            answered = time.perf_counter()
            phase.scheduled.append((answered - due) * 1000)
            phase.sent.append((answered - began) * 1000)
        else:
            phase.errors += 1

    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return phase


async def closed_loop(
    seconds: float, workers: int, call: Callable[[int], Awaitable[bool]]
) -> float:
    done = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if await call(next(counter)):
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    with running_idp("corp") as idp, tempfile.TemporaryDirectory() as tmp:
        stack = Stack.start(
            Path(tmp) / "stack",
            database_url=args.database_url or None,
            log_level="WARNING",
            service_core=0,
            extra_config=idp.config(user_claim="email", user_attribute="userName"),
            init_args=("--auth-callout",),
        )
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        try:
            async with ClientSession() as http:
                rows = await run(args, stack, idp, http, Path(tmp))
        finally:
            stack.stop()
    width = max(len(name) for name, *_ in rows)
    print(f"\n{'measure'.ljust(width)}  {'result':<28}  target / reference / cost")
    print(f"{'-' * width}  {'-' * 28}  {'-' * 34}")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:<28}  {note}".rstrip())


async def run(
    args: argparse.Namespace, stack: Stack, idp: Any, http: ClientSession, tmp: Path
) -> list[tuple[str, str, str]]:
    api = Api.of(stack, http, tmp)
    people = [await api.user(f"p{i}@example.com") for i in range(USERS)]
    await api.group("bench-people", people)
    await api.account("BENCH")
    await api.role("bench-rw", publish=["bench.>"], subscribe=["bench.>"], max_ttl="1h")
    await api.binding("BENCH", "bench-rw", group="bench-people")
    total = int(args.rate * args.seconds) * 2 + 20_000
    tokens = [idp.token(f"s{i}", email=f"p{i}@example.com", ttl=3600) for i in range(USERS)]
    print(f"making {total:,} user keys...", file=sys.stderr)
    keys = [new_keypair("user")[0] for _ in range(total)]
    unused = iter(keys)
    lean = LeanHTTP(int(stack.base_url.rsplit(":", 1)[1]))
    await lean.open(16)
    exchange = exchange_call(lean, tokens, unused)
    health = lean.message("GET", "/healthz", {}, b"")

    async def healthz(_i: int) -> bool:
        return await lean.send(health) == 200

    for i in range(50):  # warm up: the first issue makes the scoped key
        assert await exchange(i)
    # This process holds a large heap (the test support modules, the IdP stand-in, the
    # keys); a full collection of it took 50-65 ms, at the same point of every open loop,
    # and every request due meanwhile started late and counted as a slow answer (the
    # service's p99 was the load generator's pause). Frozen, a collection walks only what
    # the phases allocate.
    gc.collect()
    gc.freeze()
    rows: list[tuple[str, str, str]] = [
        (
            "machine: 10M-step Python loop",
            f"{python_loop_seconds():.2f} s",
            "smaller is faster; compare runs by it",
        )
    ]
    pid = stack.service.proc.pid

    async def closed_row(name: str, unit: str, call: Callable[[int], Awaitable[bool]]) -> None:
        seconds = min(args.seconds, 5)
        cpu = ServiceCPU(pid)
        per_second = await closed_loop(seconds, 8, call)
        rows.append(
            (
                f"{name}, closed loop (8 clients)",
                f"{per_second:,.0f} {unit}/s",
                cpu.per_request(per_second * seconds),
            )
        )

    await closed_row("token exchange", "issued", exchange)
    ref = await open_loop(args.rate, args.seconds, healthz)
    cpu = ServiceCPU(pid)
    done = await open_loop(args.rate, args.seconds, exchange)
    lat = done.sent
    target = "p99 < 10 ms: " + ("met" if pct(lat, 0.99) < 10 else "NOT met")
    rows.append(
        (
            f"token exchange at {args.rate:.0f}/s, p50 / p99 / max",
            summary(lat),
            f"{target}; errors {done.errors}; {cpu.per_request(len(lat))}",
        )
    )
    rows.append(
        (
            "  the same, from the scheduled start",
            summary(done.scheduled),
            f"this process started {done.late} late by over {LATE_MS:.0f} ms",
        )
    )
    rows.append(
        (
            f"reference GET /healthz at {args.rate:.0f}/s",
            summary(ref.sent),
            f"p99 ratio {pct(lat, 0.99) / pct(ref.sent, 0.99):.1f}x; errors {ref.errors}",
        )
    )

    rest = list(unused)
    for variant, through_sqlalchemy in (("", False), (", through SQLAlchemy", True)):
        floor, floor_cpu = await exchange_floor(
            args, idp, tmp, tokens, rest, sqlalchemy=through_sqlalchemy
        )
        rows.append(
            (
                f"reference: bare exchange{variant} at {args.rate:.0f}/s",
                summary(floor.sent),
                f"p99 ratio {pct(lat, 0.99) / pct(floor.sent, 0.99):.1f}x; errors "
                f"{floor.errors}; from the schedule p99 {pct(floor.scheduled, 0.99):.1f} ms; "
                f"{floor_cpu}",
            )
        )

    async def quiet(_exc: Exception) -> None:
        pass  # a refused connect is counted, not printed

    async def callout(i: int) -> bool:
        try:
            nc = await nats.connect(
                stack.nats_url,
                token=tokens[i % USERS],
                allow_reconnect=False,
                connect_timeout=3,
                error_cb=quiet,
            )
        except Exception:
            return False
        await nc.close()
        return True

    creds = await api.creds("p0@example.com", "BENCH")

    async def plain(_i: int) -> bool:
        try:
            nc = await nats.connect(
                stack.nats_url, user_credentials=str(creds), allow_reconnect=False, error_cb=quiet
            )
        except Exception:
            return False
        await nc.close()
        return True

    deadline = time.monotonic() + 15  # the callout subscription comes up after serve
    while not await callout(0):
        assert time.monotonic() < deadline, stack.service_output()
        await asyncio.sleep(0.1)
    for i in range(20):
        await callout(i)
    await closed_row("auth callout", "connects", callout)
    ref = await open_loop(args.rate, args.seconds, plain)
    cpu = ServiceCPU(pid)
    done = await open_loop(args.rate, args.seconds, callout)
    # From the schedule: the auth timeout runs from the CONNECT, which a late start delays
    # too, so the larger figure is the one to hold against it.
    lat = done.scheduled
    rows.append(
        (
            f"auth callout connect at {args.rate:.0f}/s, p50 / p99 / max",
            summary(lat),
            f"nats-server auth timeout 2000 ms: max is {max(lat) / 2000:.1%} of it; "
            f"errors {done.errors}; {cpu.per_request(len(lat))}",
        )
    )
    rows.append(
        (
            f"reference creds-file connect at {args.rate:.0f}/s",
            summary(ref.scheduled),
            f"p99 ratio {pct(lat, 0.99) / pct(ref.scheduled, 0.99):.1f}x; errors {ref.errors}",
        )
    )
    await lean.close()
    await api.close_clients()
    return rows


async def exchange_floor(
    args: argparse.Namespace,
    idp: Any,
    tmp: Path,
    tokens: list[str],
    keys: list[str],
    *,
    sqlalchemy: bool,
) -> tuple[Phase, str]:
    """An open loop of bench/exchange_floor.py at ``args.rate``, and its CPU per request,
    on the service's core (the service is idle meanwhile)."""
    name = "floor-sqlalchemy" if sqlalchemy else "floor"
    pem = tmp / "idp.pem"
    pem.write_bytes(idp.key("RS256").public_pem())
    port = free_port()
    database = str(tmp / f"{name}.db")
    command = [sys.executable, FLOOR, str(port), str(pem), idp.issuer, AUDIENCE, database, "0"]
    floor = Process(command + (["sqlalchemy"] if sqlalchemy else []), tmp / f"{name}.log")
    try:
        wait_for_port(port)
        lean = LeanHTTP(port)
        try:
            await lean.open(16)
            exchange = exchange_call(lean, tokens, iter(keys))
            for i in range(50):
                assert await exchange(i), floor.output()
            cpu = ServiceCPU(floor.proc.pid, whose="its")
            done = await open_loop(args.rate, args.seconds, exchange)
            return done, cpu.per_request(len(done.sent))
        finally:
            await lean.close()
    finally:
        floor.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--database-url", default="")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
