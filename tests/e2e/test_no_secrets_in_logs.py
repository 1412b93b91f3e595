"""No secret in any log line: a full run at DEBUG, then every log searched for every secret.

The run does what the service is for, good and bad: SCIM provisioning, admin changes,
person and workload credentials (seeds made by the service), token exchange, the creds
file, the auth callout with an IdP token, a refused forged token, a revocation and its push.
Then the service's and nats-server's logs are searched for each API token (and its secret
part), each IdP token, each seed the run saw and the master key.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nats
import pytest
from aiohttp import ClientSession

from resolver.natsjwt import new_keypair, parse_creds
from tests.support.idp import running_idp
from tests.support.stack import Api, Stack

pytestmark = pytest.mark.e2e


async def _quiet(_exc: Exception) -> None:
    return None  # without a callback nats-py logs the refusal with a traceback


def _seeds_in(text: str) -> list[str]:
    return re.findall(r"\bS[A-Z][A-Z2-7]{56}\b", text)


async def test_a_full_run_logs_no_secret(tmp_path: Path) -> None:
    secrets: dict[str, str] = {}
    with running_idp("corp") as idp:
        stack = Stack.start(
            tmp_path / "stack",
            log_level="DEBUG",
            extra_config=idp.config(user_claim="email", user_attribute="userName"),
            init_args=("--auth-callout",),
        )
        try:
            async with ClientSession() as http:
                api = Api.of(stack, http, tmp_path)
                user = await api.user("ana@example.com")
                await api.group("vault-people", [user])
                await api.account("VAULT")
                await api.role("vault-rw", publish=["vault.>"], subscribe=["vault.>"])
                await api.binding("VAULT", "vault-rw", group="vault-people")

                person = await api.ok(
                    "POST", f"/admin/v1/users/{user}/credentials", {"account": "VAULT"}
                )
                workload = await api.ok(
                    "POST", "/admin/v1/accounts/VAULT/users", {"name": "bot", "ttl": "1h"}
                )
                secrets["person seed"] = parse_creds(person["creds"])[1].decode()
                secrets["workload seed"] = parse_creds(workload["creds"])[1].decode()

                token = idp.token("00u-ana", email="ana@example.com")
                secrets["IdP token"] = token
                bearer = {"Authorization": f"Bearer {token}"}
                public_key, seed = new_keypair("user")
                secrets["client seed"] = seed.decode()
                async with http.post(
                    stack.base_url + "/v1/credentials",
                    json={"public_key": public_key},
                    headers=bearer,
                ) as response:
                    assert response.status == 201, await response.text()
                async with http.get(
                    stack.base_url + "/v1/credentials/creds", headers=bearer
                ) as response:
                    assert response.status == 200
                    secrets["creds file seed"] = parse_creds(await response.text())[1].decode()
                forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
                secrets["forged token"] = forged
                async with http.post(
                    stack.base_url + "/v1/credentials",
                    json={"public_key": public_key},
                    headers={"Authorization": f"Bearer {forged}"},
                ) as response:
                    assert response.status == 401

                callout_token = idp.token("00u-ana", email="ana@example.com")
                secrets["callout token"] = callout_token
                client = await nats.connect(stack.nats_url, token=callout_token)
                await client.close()
                with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
                    await nats.connect(
                        stack.nats_url,
                        token=forged,
                        allow_reconnect=False,
                        connect_timeout=2,
                        error_cb=_quiet,
                    )

                await api.ok(
                    "POST",
                    "/admin/v1/accounts/VAULT/revocations",
                    {"user_key": person["user_key"]},
                )
                await api.pushed("VAULT")
                status, _ = await api.call(
                    "GET", "/admin/v1/accounts", token="scim"
                )  # a token without the scope
                assert status == 403
        finally:
            stack.stop()

    for scope, api_token in stack.tokens.items():
        secrets[f"{scope} API token"] = api_token
        secrets[f"{scope} API token secret"] = api_token[len("nir_") + 16 + 1 :]
    secrets["master key"] = (stack.data / "master.key").read_text().strip()
    secrets["master key (raw, base64url)"] = (
        base64.urlsafe_b64encode(base64.b64decode(secrets["master key"])).decode().rstrip("=")
    )
    for creds in stack.data.glob("*.creds"):
        for seed in _seeds_in(creds.read_text()):
            secrets[f"{creds.name} seed"] = seed
    assert all(len(value) >= 20 for value in secrets.values()), secrets.keys()

    logs = {"service": stack.service.output()}  # type: ignore[union-attr]
    logs["nats-server"] = stack.nats.output()  # type: ignore[union-attr]
    assert "DEBUG" in logs["service"]  # the most the service ever says
    assert "credentials refused" in logs["service"]  # the refusals were logged, too
    for log_name, text in logs.items():
        leaked = [name for name, value in secrets.items() if value in text]
        assert not leaked, f"{log_name} log holds: {leaked}"
        assert not _seeds_in(text), f"{log_name} log holds something shaped like a seed"
