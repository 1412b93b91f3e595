"""The production samples in conf/production and the Dockerfile's health check.

No Docker daemon runs where the tests run, so the image itself is not built here; what can
be checked without one is: the samples are accepted by the programs that read them, and
the health check command the image runs tells a ready service from one that is not.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from resolver.config import load_settings
from tests.support.pki import make_pki
from tests.support.processes import nats_server_bin, resolver_bin

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ROOT / "conf" / "production"
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_the_production_settings_sample_loads_as_postgresql_with_tls() -> None:
    settings = load_settings(PRODUCTION / "resolver.toml", env={})
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert ":" not in settings.database_url.split("//", 1)[1].split("@", 1)[0]  # no password
    assert settings.server.tls_cert and settings.server.tls_key
    assert settings.public_url.startswith("https://")
    assert settings.nats.tls_ca and all(s.startswith("tls://") for s in settings.nats.servers)
    assert [idp.name for idp in settings.idp] == ["entra"]
    # The environment still wins, as the sample's comments promise.
    url = "postgresql+asyncpg://nats_iam:secret@db:5432/nats_iam"
    assert (
        load_settings(PRODUCTION / "resolver.toml", env={"RESOLVER_DATABASE_URL": url}).database_url
        == url
    )


def test_the_production_nats_server_sample_is_accepted_by_nats_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run(
        [resolver_bin(), "init", "--data-dir", str(data)], check=True, capture_output=True
    )
    generated = subprocess.run(
        [resolver_bin(), "nats-config", "--config", str(data / "resolver.toml")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    operator = re.search(r"^operator: (\S+)$", generated, re.M)
    system = re.search(r"^system_account: (\S+)$", generated, re.M)
    assert operator is not None and system is not None
    (tmp_path / "operator.jwt").write_text(operator.group(1))
    make_pki(tmp_path)
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    sample = (PRODUCTION / "nats-server.conf").read_text(encoding="utf-8")
    placeholders = {
        "/etc/nats/tls/server.crt": str(cert),
        "/etc/nats/tls/server.key": str(key),
        "/etc/nats/tls/ca.crt": str(ca),
        "/etc/nats/operator.jwt": str(tmp_path / "operator.jwt"),
        "A" * 56: system.group(1),
    }
    for placeholder, real in placeholders.items():
        assert placeholder in sample
        sample = sample.replace(placeholder, real)
    conf = tmp_path / "nats-server.conf"
    conf.write_text(sample)
    checked = subprocess.run(
        [nats_server_bin(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    # And it is a real check: a misspelt block is refused.
    conf.write_text(sample.replace("resolver_tls", "resolver_tsl"))
    broken = subprocess.run([nats_server_bin(), "-t", "-c", str(conf)], capture_output=True)
    assert broken.returncode != 0


def test_the_image_runs_serve_as_a_non_root_user_with_volumes() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    assert user is not None and int(user.group(1)) != 0
    assert json.loads(re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M).group(1)) == [  # type: ignore[union-attr]
        "nats-iam-resolver"
    ]
    assert json.loads(re.search(r"^CMD (.+)$", DOCKERFILE, re.M).group(1)) == ["serve"]  # type: ignore[union-attr]
    volumes = json.loads(re.search(r"^VOLUME (.+)$", DOCKERFILE, re.M).group(1))  # type: ignore[union-attr]
    assert set(volumes) == {"/etc/nats-iam-resolver", "/var/lib/nats-iam-resolver"}
    # A non-editable install has no migrations beside the package: the image says where.
    assert "RESOLVER_MIGRATIONS_DIR=/app/migrations" in DOCKERFILE
    assert "COPY migrations ./migrations" in DOCKERFILE


def _health_check_command() -> list[str]:
    match = re.search(r"HEALTHCHECK [^\n]*\\\n\s+CMD (\[.+\])", DOCKERFILE)
    assert match is not None
    command: list[str] = json.loads(match.group(1))
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def test_the_health_check_passes_on_a_ready_service_and_fails_otherwise() -> None:
    answers = {"status": 200}

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response({}, status=answers["status"])

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/readyz"))

        async def check() -> int:
            env: dict[str, Any] = {"RESOLVER_HEALTHCHECK_URL": url, "PATH": "/usr/bin:/bin"}
            process = await asyncio.create_subprocess_exec(
                *_health_check_command(),
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            return await process.wait()

        assert await check() == 0
        answers["status"] = 503  # the database is unreachable, or the schema behind
        assert await check() != 0
    finally:
        await server.close()
    assert "/readyz" in re.search(r"RESOLVER_HEALTHCHECK_URL=(\S+)", DOCKERFILE).group(1)  # type: ignore[union-attr]
