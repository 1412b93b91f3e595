"""``serve`` with ``[server] tls_cert``/``tls_key``: HTTPS only, with the given certificate."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.pki import make_pki
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import Process, resolver_bin


def _get(port: int, context: ssl.SSLContext | None) -> int:
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=5
        )
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def test_serve_answers_https_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run(
        [resolver_bin(), "init", "--data-dir", str(data)], check=True, capture_output=True
    )
    make_pki(tmp_path)
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    port = free_port()
    service = Process(
        [resolver_bin(), "serve", "--config", str(data / "resolver.toml")],
        tmp_path / "service.log",
        env={
            "RESOLVER_SERVER_PORT": str(port),
            "RESOLVER_SERVER_TLS_CERT": str(cert),
            "RESOLVER_SERVER_TLS_KEY": str(key),
            "RESOLVER_NATS_ENABLED": "false",
        },
    )
    try:
        wait_for_port(port)
        trusting = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _get(port, trusting) == 200
                break
            except (ConnectionError, ssl.SSLError, OSError):
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.1)
        # The certificate is checked by clients as usual: one they do not trust fails.
        with pytest.raises(ssl.SSLCertVerificationError):
            _get(port, ssl.create_default_context())
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            _get(port, None)
    finally:
        service.stop()
