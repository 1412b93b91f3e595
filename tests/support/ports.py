"""Loopback ports for processes that cannot bind port 0 themselves and report it.

A port found by binding port 0 comes from the kernel's ephemeral range, and once we let go
of it any process's next outgoing connection may take it as its source port before our
server binds it (CI lost a nats-server route port that way). So ports are drawn from below
that range, where only listeners go, and a process never hands out the same one twice.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

_LOWEST = 10_000
_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    top = _ephemeral_start()
    if top - _LOWEST < 1_000:
        # An unusual range leaves no room below it: fall back to the kernel's choice.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    while True:
        port = random.randrange(_LOWEST, top)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)
