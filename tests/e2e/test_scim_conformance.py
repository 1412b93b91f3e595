"""scim2-tester (through scim2-cli) against the real service: every check must be SUCCESS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.processes import BIN, Process, resolver_bin

pytestmark = pytest.mark.e2e


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_scim2_tester_reports_only_success(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    _run(resolver_bin(), "init", "--data-dir", str(data), "--port", str(port))
    config = str(data / "resolver.toml")
    token = (
        _run(
            resolver_bin(),
            "token",
            "create",
            "--config",
            config,
            "--name",
            "conformance",
            "--scope",
            "scim",
        )
        .strip()
        .splitlines()[-1]
    )
    assert token.startswith("nir_")

    service = Process(
        [resolver_bin(), "serve", "--config", config],
        tmp_path / "serve.log",
        env={"RESOLVER_NATS_ENABLED": "false"},
    )
    try:
        wait_for_port(port)
        # The header goes through the environment: a command line is visible to every user.
        result = subprocess.run(
            [str(BIN / "scim2"), "--url", f"http://127.0.0.1:{port}/scim/v2", "test"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env={**os.environ, "SCIM_CLI_HEADERS": f"Authorization: Bearer {token}"},
        )
    finally:
        assert service.stop() in (0, -signal.SIGTERM)
    output = result.stdout + result.stderr
    statuses = re.findall(r"^([A-Z]+) \w+", result.stdout, flags=re.MULTILINE)
    assert statuses, output
    failed = [
        line
        for line in result.stdout.splitlines()
        if re.match(r"^[A-Z]+ ", line) and not line.startswith("SUCCESS ")
    ]
    assert not failed, output
    assert result.returncode == 0, output
    assert len(statuses) > 100  # discovery, CRUD, attributes and PATCH checks all ran
    log = service.output()
    assert " 500" not in log and token not in log
