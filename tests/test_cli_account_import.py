"""``nats-iam-resolver account import``: many account JWTs at once, each checked like
``nsc push``, with progress and totals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select

from resolver.accounts.operator import get_operator
from resolver.accounts.signing import active_signing_key
from resolver.cli import cli, settings_from
from resolver.db.models import Account, AuditEntry, PushOutbox
from resolver.natsjwt import account_claims, encode, new_keypair, user_claims
from resolver.sealing import Sealer, load_master_key
from tests.test_cli_policy import config, invoke, query  # noqa: F401  (the fixture)


def operator_seed(config: str) -> bytes:
    async def fn(session: Any) -> bytes:
        key = await active_signing_key(session, await get_operator(session))
        return key.seed_sealed

    sealed = query(config, fn)
    return Sealer(load_master_key(settings_from(Path(config)).master_key_path)).open(sealed)


def account_jwt(seed: bytes, key: str, name: str, iat: int) -> str:
    return encode(account_claims(name, key, limits={"conn": -1}), seed, iat=iat)


def stored(config: str) -> dict[str, tuple[str, str | None]]:
    async def fn(session: Any) -> dict[str, tuple[str, str | None]]:
        rows = await session.execute(select(Account.public_key, Account.name, Account.jwt))
        return {key: (name, jwt) for key, name, jwt in rows.all()}

    return query(config, fn)


def test_an_nsc_store_a_pack_and_a_bad_file_import_with_totals(config: str, tmp_path: Path) -> None:
    seed = operator_seed(config)
    now = int(time.time())
    # An nsc-like store: accounts/<name>/<name>.jwt, with a user JWT beside it.
    store = tmp_path / "store" / "accounts"
    accounts = {}
    for index in range(5):
        key, account_seed = new_keypair("account")
        name = f"team-{index}"
        accounts[key] = account_jwt(seed, key, name, now)
        folder = store / name
        (folder / "users").mkdir(parents=True)
        (folder / f"{name}.jwt").write_text(accounts[key] + "\n")
        user = encode(user_claims("u", new_keypair("user")[0]), account_seed, iat=now)
        (folder / "users" / "u.jwt").write_text(user)
    # A pack (GET /jwt/v1/pack) of two more.
    pack_keys = [new_keypair("account")[0] for _ in range(2)]
    pack = tmp_path / "pack.txt"
    pack.write_text(
        "".join(
            f"{k}|{account_jwt(seed, k, f'packed-{i}', now)}\n" for i, k in enumerate(pack_keys)
        )
    )
    # Signed by a stranger: refused, and it stops nothing else.
    stranger_key = new_keypair("account")[0]
    stranger = tmp_path / "stranger.jwt"
    stranger.write_text(account_jwt(new_keypair("operator")[1], stranger_key, "evil", now))
    pushes_before = query(config, lambda s: s.scalar(select(func.count()).select_from(PushOutbox)))

    result = CliRunner().invoke(
        cli,
        [
            "account",
            "import",
            "--config",
            config,
            str(tmp_path / "store"),
            str(pack),
            str(stranger),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "imported 7, not newer than stored 0, failed 1" in result.stdout
    assert "passing over 5 JWT(s) that are not account JWTs" in result.stderr
    assert "8/8 account JWTs" in result.stderr  # progress, to the end
    assert f"failed: {stranger}: JWT issuer is not the operator" in result.stderr
    assert "Traceback" not in result.output

    held = stored(config)
    for key, token in accounts.items():
        assert held[key][1] == token
    assert {held[k][0] for k in pack_keys} == {"packed-0", "packed-1"}
    assert stranger_key not in held
    pushes = query(config, lambda s: s.scalar(select(func.count()).select_from(PushOutbox)))
    assert pushes == pushes_before + 7  # each queued for nats-server
    uploads = query(
        config,
        lambda s: s.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "account.upload")
        ),
    )
    assert uploads == 7

    # Again: nothing is newer, so nothing changes and it succeeds.
    again = CliRunner().invoke(
        cli, ["account", "import", "--config", config, str(tmp_path / "store")]
    )
    assert again.exit_code == 0, again.output
    assert "imported 0, not newer than stored 5, failed 0" in again.stdout
    assert stored(config) == held


def test_a_newer_jwt_replaces_an_imported_one_and_an_older_one_does_not(
    config: str, tmp_path: Path
) -> None:
    seed = operator_seed(config)
    key = new_keypair("account")[0]
    now = int(time.time())
    for iat, name in ((now, "v1"), (now + 10, "v2"), (now + 5, "v-older")):
        path = tmp_path / f"{name}.jwt"
        path.write_text(account_jwt(seed, key, "team", iat))
        invoke("account", "import", "--config", config, str(path))
    token = stored(config)[key][1]
    assert token is not None and token == (tmp_path / "v2.jwt").read_text()


def test_garbage_is_a_failure_not_a_traceback(config: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jwt"
    bad.write_text("not a jwt at all")
    result = CliRunner().invoke(cli, ["account", "import", "--config", config, str(bad)])
    assert result.exit_code == 1
    assert "failed: " in result.stderr and "Traceback" not in result.output
    assert "imported 0, not newer than stored 0, failed 1" in result.stdout
