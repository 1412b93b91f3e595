"""GET /jwt/v1/accounts/<A> throughput and latency, next to a bare aiohttp handler.

    .venv/bin/python bench/resolver_get.py [--duration 8] [--rounds 3] [--connections 32]

What nats-server does on every first connect to an account (and a reconnect storm does many
times at once). Two servers, each a child process pinned to the same ONE core:

- ``resolver``: the real thing, ``nats-iam-resolver serve`` on a data directory made by
  ``init`` and ``account create`` (NATS disabled: this measures HTTP only);
- ``bare``: an aiohttp app with one handler that returns the same JWT bytes, no middleware.

The load generator is ``wrk`` (Debian package ``wrk``) pinned to another core, or, when wrk
is missing, an aiohttp client in this process. Rounds alternate bare/resolver so both see
the same machine; the table shows medians and the resolver/bare throughput ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
RESOLVER = str(BIN / "nats-iam-resolver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


# -- the bare reference server (this script, run as a child with --bare) ------------------


def run_bare(port: int, jwt_file: Path, use_uvloop: bool) -> None:
    import base64
    import json

    from aiohttp import web

    body = jwt_file.read_bytes()
    payload = body.split(b".")[1]
    jti = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))["jti"]
    # The same response the resolver sends (body and header names, constant values), so
    # the ratio measures the resolver's own work, not the size of its headers.
    headers = {
        "Content-Type": "application/jwt",
        "ETag": f'"{jti}"',
        "Cache-Control": "max-age=86400, stale-while-revalidate=3600, stale-if-error=3600",
        "X-Request-ID": "0123456789abcdef0123456789abcdef",
    }

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/jwt/v1/accounts/{key}", handler)
    if use_uvloop:
        import uvloop

        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def run_resolver(config: Path, use_uvloop: bool) -> None:
    """``nats-iam-resolver serve``, optionally on uvloop (the CLI itself does not pick it)."""
    if use_uvloop:
        import uvloop

        uvloop.install()
    from resolver.cli import main

    sys.argv = [RESOLVER, "serve", "--config", str(config)]
    main()


# -- load generators ----------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, duration: float, connections: int, core: int) -> Result:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", url]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, preexec_fn=lambda: pin(core)
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return Result(rps, p50, p99)


async def _aiohttp_load(url: str, duration: float, connections: int) -> Result:
    import aiohttp

    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status}")
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return Result(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


def aiohttp_load(url: str, duration: float, connections: int, core: int) -> Result:
    pin(core)
    return asyncio.run(_aiohttp_load(url, duration, connections))


# -- orchestration ------------------------------------------------------------------------


def prepare(data: Path, port: int) -> tuple[Path, str]:
    """``init`` and ``account create`` with the CLI; the config path and the account key."""
    env = {**os.environ, "RESOLVER_NATS_ENABLED": "false"}
    subprocess.run(
        [RESOLVER, "init", "--data-dir", str(data), "--port", str(port)],
        check=True,
        capture_output=True,
        env=env,
    )
    config = data / "resolver.toml"
    out = subprocess.run(
        [RESOLVER, "account", "create", "bench", "--config", str(config)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    key = re.search(r"\bA[A-Z2-7]{55}\b", out)
    if key is None:
        raise RuntimeError(f"no account key in `account create` output:\n{out}")
    return config, key.group(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--uvloop", action="store_true", help="both servers on uvloop")
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--bare", nargs=2, metavar=("PORT", "JWT_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        run_bare(int(args.bare[0]), Path(args.bare[1]), args.uvloop)
        return
    if args.serve:
        run_resolver(Path(args.serve), args.uvloop)
        return

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    load = wrk if client == "wrk" else aiohttp_load
    cores = os.cpu_count() or 1
    server_core, client_core = 0, (1 if cores > 1 else 0)

    with tempfile.TemporaryDirectory(prefix="bench-get-") as tmp:
        data = Path(tmp) / "data"
        resolver_port, bare_port = free_port(), free_port()
        config, key = prepare(data, resolver_port)
        extra = ["--uvloop"] if args.uvloop else []
        env = {**os.environ, "RESOLVER_NATS_ENABLED": "false", "RESOLVER_LOG_LEVEL": "WARNING"}
        resolver = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(config), *extra],
            env=env,
            preexec_fn=lambda: pin(server_core),
        )
        bare = None
        try:
            path = f"/jwt/v1/accounts/{key}"
            resolver_url = f"http://127.0.0.1:{resolver_port}{path}"
            body = wait_http(resolver_url)
            jwt_file = Path(tmp) / "account.jwt"
            jwt_file.write_bytes(body)
            bare = subprocess.Popen(
                [sys.executable, __file__, "--bare", str(bare_port), str(jwt_file), *extra],
                preexec_fn=lambda: pin(server_core),
            )
            bare_url = f"http://127.0.0.1:{bare_port}{path}"
            assert wait_http(bare_url) == body, "both servers must return the same bytes"

            results: dict[str, list[Result]] = {"bare aiohttp": [], "resolver": []}
            load(bare_url, 2, args.connections, client_core)  # warm-up, not counted
            load(resolver_url, 2, args.connections, client_core)
            for _ in range(args.rounds):
                results["bare aiohttp"].append(
                    load(bare_url, args.duration, args.connections, client_core)
                )
                results["resolver"].append(
                    load(resolver_url, args.duration, args.connections, client_core)
                )
        finally:
            for proc in (resolver, bare):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(
        f"\nGET /jwt/v1/accounts/<A>  ({len(body)} bytes, {client}, {args.connections} "
        f"connections, {args.rounds}x{args.duration:g}s, servers on 1 core, {loop_name})\n"
    )
    print(f"{'server':<14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r.rps for r in runs)
        print(
            f"{name:<14}{medians[name]:>10.0f}"
            f"{statistics.median(r.p50_ms for r in runs):>10.2f}"
            f"{statistics.median(r.p99_ms for r in runs):>10.2f}"
        )
    ratio = medians["resolver"] / medians["bare aiohttp"]
    per_round = ", ".join(
        f"{r.rps / b.rps:.2f}"
        for r, b in zip(results["resolver"], results["bare aiohttp"], strict=True)
    )
    print(f"\nresolver / bare throughput: {ratio:.2f}  (per round: {per_round}; target >= 0.80)")


if __name__ == "__main__":
    main()
