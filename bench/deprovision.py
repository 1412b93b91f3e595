"""Deprovisioning latency: from the SCIM response that removes a member to the moment the
removed person's NATS client runs its disconnect callback; and how long a role change takes
to re-sign and push 1,000 accounts. Prints a table.

    .venv/bin/python bench/deprovision.py [--trials 200] [--sizes 10,1000,10000]
        [--accounts 1000] [--database-url URL]

The stack is the product as an operator runs it (tests/support/stack.py): ``nats-iam-resolver
init``, ``serve`` pinned to ONE core, and a real nats-server on its ``resolver: URL(...)``
with the service's push connection; default settings (push_timeout 0.5 s), log level
WARNING. The client runs here, pinned to another core when there is one.

Users in the account: the members of a group bound to it. The N members are inserted with
SQL first (bench/scim_ingest.py ``bulk_users``/``bulk_group``: the rows SCIM writes) and the
group is bound over the admin API; only the measured steps go through the service. A trial:
person credentials for member i (admin API), connect, then SCIM PATCH removing the member
(the Entra ``members[value eq "id"]`` shape); the clock runs from the PATCH response (and,
in brackets, from the start of the request) to the client's ``disconnected_cb``. Between
trials the member is added back (so the account keeps N users) and the outbox is drained
(``GET /admin/v1/push``), so every trial starts with an idle pusher. A second series
(``--busy-trials``) sends a removal right after another one was pushed, while the pusher
still gathers replies to that push: what a burst of IdP removals meets.

Role change: one role, bound to one group in each of ``--accounts`` accounts, with a scoped
signing key in each (one person's credentials issued per account). The clock starts before
``PUT /admin/v1/roles/<name>`` is sent and stops (a) at its response, (b) when a system-user
observer on nats-server has seen the update of every account, (c) when the last outbox row
is done (``GET /admin/v1/push`` shows nothing pending).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import nats
from aiohttp import ClientSession

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scim_ingest import bulk_group, bulk_users, pct
from resolver.db.engine import create_engine
from tests.support.stack import Api, Stack, connect, patch

TARGET_P99_MS = 50.0
TARGET_SIZE = 10_000


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


async def gather_limited(n: int, jobs: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the jobs ``n`` at a time (as an IdP or a script would, not all at once)."""
    queue = list(jobs)
    results: list[Any] = [None] * len(queue)
    indexed = list(enumerate(queue))

    async def worker() -> None:
        while indexed:
            i, job = indexed.pop()
            results[i] = await job()

    await asyncio.gather(*(worker() for _ in range(n)))
    return results


async def drained(api: Api, every: float = 0.01, within: float = 120.0) -> None:
    """Nothing left in the outbox: every push was sent and its replies recorded."""
    deadline = time.monotonic() + within
    while (await api.push_status())["pending_count"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the outbox never drained")
        await asyncio.sleep(every)


def ratio(values: list[float], reference: list[float]) -> str:
    return f"{statistics.median(values) / statistics.median(reference):.2f}"


def stats_ms(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} / {pct(values, 0.99):7.2f}"


async def removal_trials(
    api: Api, database_url: str, size: int, trials: int, role: str
) -> dict[str, list[float]]:
    """``trials`` removals from the bound group of an account with ``size`` users."""
    engine = create_engine(database_url)
    try:
        members = await bulk_users(engine, size, f"s{size}-")
        group = await bulk_group(engine, f"staff-{size}", members)
    finally:
        await engine.dispose()
    account = f"bench-{size}"
    await api.account(account)
    await api.binding(account, role, group_id=group)
    await drained(api)

    from_response: list[float] = []
    from_request: list[float] = []
    request: list[float] = []
    for i in range(trials):
        member = members[i % size]
        person = await connect(api, await api.creds(member, account))
        await person.nc.flush()
        await drained(api)  # a first issue creates the scoped key and pushes it

        remove = patch({"op": "Remove", "path": f'members[value eq "{member}"]'})
        started = time.perf_counter()
        await api.scim("PATCH", f"/Groups/{group}", remove)
        answered = time.perf_counter()
        async with asyncio.timeout(10):
            await person.lost.wait()
        lost = person.lost_at[0]
        assert "revoked" in str(person.nc.last_error).lower(), person.nc.last_error
        from_response.append((lost - answered) * 1000)
        from_request.append((lost - started) * 1000)
        request.append((answered - started) * 1000)

        await api.close_clients()
        back = patch({"op": "Add", "path": "members", "value": [{"value": member}]})
        await api.scim("PATCH", f"/Groups/{group}", back)
        await drained(api)
    return {"response": from_response, "request": from_request, "patch": request}


async def busy_trials(api: Api, database_url: str, trials: int, role: str) -> list[float]:
    """Removals sent right after another one was pushed, while the pusher still gathers
    replies to it (``push_timeout``): SCIM response -> disconnect, ms."""
    engine = create_engine(database_url)
    try:
        members = await bulk_users(engine, 10, "busy-")
        group = await bulk_group(engine, "staff-busy", members)
    finally:
        await engine.dispose()
    account = "bench-busy"
    await api.account(account)
    await api.binding(account, role, group_id=group)
    await drained(api)
    latencies: list[float] = []
    for i in range(trials):
        first, second = members[(2 * i) % 10], members[(2 * i + 1) % 10]
        people = [await connect(api, await api.creds(m, account)) for m in (first, second)]
        await drained(api)
        for member, person in zip((first, second), people, strict=True):
            remove = patch({"op": "Remove", "path": f'members[value eq "{member}"]'})
            await api.scim("PATCH", f"/Groups/{group}", remove)
            answered = time.perf_counter()
            async with asyncio.timeout(10):
                await person.lost.wait()
        latencies.append((person.lost_at[0] - answered) * 1000)
        await api.close_clients()
        back = patch(
            {"op": "Add", "path": "members", "value": [{"value": first}, {"value": second}]}
        )
        await api.scim("PATCH", f"/Groups/{group}", back)
        await drained(api)
    return latencies


async def role_change(api: Api, stack: Stack, accounts: int) -> dict[str, float]:
    """Re-sign and push ``accounts`` accounts whose scoped key carries the changed role."""
    role = "fanout"
    await api.role(role, publish=["fan.>"], subscribe=["fan.>"])
    user = await api.user("fan@example.com")
    group = await api.group("fan-staff", [user])
    names = [f"fan-{n:05d}" for n in range(accounts)]
    await gather_limited(8, (lambda n=n: api.account(n) for n in names))
    await gather_limited(8, (lambda n=n: api.binding(n, role, group_id=group) for n in names))
    # The first credentials in an account create its scoped key for the role (and wait for
    # its push): without one, a role change has nothing to re-sign there.
    await gather_limited(32, (lambda n=n: api.creds(user, n) for n in names))
    await drained(api)
    keys = {(await api.get_account(n))["public_key"] for n in names}

    seen: set[str] = set()
    all_seen = asyncio.Event()
    seen_at: list[float] = []

    async def on_update(msg: Any) -> None:
        account = msg.subject.split(".")[3]
        if account in keys and account not in seen:
            seen.add(account)
            if len(seen) == len(keys):
                seen_at.append(time.perf_counter())
                all_seen.set()

    observer = await nats.connect(stack.nats_url, user_credentials=str(stack.sys_creds))
    try:
        await observer.subscribe("$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE", cb=on_update)
        await observer.flush()
        started = time.perf_counter()
        answer = await api.ok(
            "PUT", f"/admin/v1/roles/{role}", {"publish": ["fan.>", "fanout.>"], "subscribe": []}
        )
        answered = time.perf_counter()
        await drained(api, every=0.05, within=600)
        done = time.perf_counter()
        async with asyncio.timeout(30):
            await all_seen.wait()
    finally:
        await observer.close()
    resigned = answer.get("accounts_resigned", len(answer.get("accounts", [])))
    return {
        "resigned": float(resigned),
        "response": answered - started,
        "pushed": seen_at[0] - started,
        "done": done - started,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="removals per account size")
    parser.add_argument(
        "--sizes", default="10,1000,10000", help="users in the account, comma separated"
    )
    parser.add_argument(
        "--accounts", type=int, default=1000, help="accounts re-signed by the role change (0: skip)"
    )
    parser.add_argument(
        "--busy-trials", type=int, default=50, help="removals right after another one"
    )
    parser.add_argument("--database-url", default="", help="an empty database (default: SQLite)")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="deprovision-bench-"))
    stack = Stack.start(
        tmp, database_url=args.database_url or None, log_level="WARNING", service_core=0
    )
    database_url = args.database_url or f"sqlite+aiosqlite:///{stack.data / 'resolver.db'}"
    if (os.cpu_count() or 1) > 1:
        pin(1)
    rows: list[tuple[str, str, str]] = []
    try:
        async with ClientSession() as http:
            api = Api.of(stack, http, tmp)
            await api.role("member", publish=["orders.>"], subscribe=["orders.>"])
            results: dict[int, dict[str, list[float]]] = {}
            for size in sizes:
                results[size] = await removal_trials(api, database_url, size, args.trials, "member")
                print(f"... {size:,} users done", file=sys.stderr)
            busy = await busy_trials(api, database_url, args.busy_trials, "member")
            first = sizes[0]
            for size, r in results.items():
                p99 = pct(r["response"], 0.99)
                note = f"p50 x{ratio(r['response'], results[first]['response'])} of {first:,}"
                if size == TARGET_SIZE:
                    verdict = "met" if p99 < TARGET_P99_MS else "MISSED"
                    note = f"target p99 < {TARGET_P99_MS:.0f} ms: {verdict}; {note}"
                label = f"SCIM response -> disconnect, {size:,} users: p50 / p99 ms"
                rows.append((label, stats_ms(r["response"]), note))
                label = "    from the start of the PATCH request: p50 / p99 ms"
                rows.append((label, stats_ms(r["request"]), ""))
                note = f"p50 x{ratio(r['patch'], results[first]['patch'])} of {first:,}"
                rows.append(("    the PATCH itself: p50 / p99 ms", stats_ms(r["patch"]), note))
            rows.append(
                ("SCIM response -> disconnect, right after another removal: p50 / p99 ms",
                 stats_ms(busy), "the previous push's round ends on its last reply")
            )  # fmt: skip
            if args.accounts:
                change = await role_change(api, stack, args.accounts)
                label = f"role change, {int(change['resigned']):,} accounts re-signed"
                rows.append((f"{label}: PUT response s", f"{change['response']:7.2f}", ""))
                rows.append(
                    ("    last account update received by nats-server s",
                     f"{change['pushed']:7.2f}", "")
                )  # fmt: skip
                rows.append(
                    ("    last outbox row done s", f"{change['done']:7.2f}",
                     "rounds of 50 accounts, each ends on its last reply")
                )  # fmt: skip
    finally:
        stack.stop()
    width = max(len(r[0]) for r in rows)
    print(
        f"Deprovisioning on {database_url.split('+')[0]} (python {sys.version.split()[0]}), "
        f"{args.trials} trials per size; users inserted with SQL, removals over SCIM"
    )
    print(f"{'measure'.ljust(width)}  {'result':<17}  target / reference")
    print(f"{'-' * width}  {'-' * 17}  {'-' * 30}")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:<17}  {target}".rstrip())


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
