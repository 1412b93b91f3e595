from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.auth.tokens import create_token, revoke_token, verify_token
from resolver.db.engine import create_sessionmaker
from resolver.db.models import ApiToken
from resolver.errors import ConflictError, ValidationError


async def test_token_lifecycle(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions() as session, session.begin():
        plain = await create_token(session, "okta", ["scim"])
    # nir_<16-character id>_<secret>; the secret is base64url, so it may hold "_" itself.
    secret = plain[len("nir_") + 16 + 1 :]
    assert len(secret) == 43
    async with sessions() as session:
        row = await session.scalar(select(ApiToken))
        assert row is not None and row.secret_hash != secret and secret not in row.secret_hash
        dump = (await session.execute(text("SELECT * FROM api_tokens"))).all()
        assert secret not in repr(dump)
        info = await verify_token(session, plain)
        assert info is not None and info.name == "okta" and info.allows("scim")
        assert not info.allows("admin")
        # One changed character of the secret, or garbage, is refused.
        assert await verify_token(session, plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
        assert await verify_token(session, "nir_nope") is None
    async with sessions() as session, session.begin():
        await revoke_token(session, "okta")
    async with sessions() as session:
        assert await verify_token(session, plain) is None


async def test_names_and_scopes_are_checked(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await create_token(session, "ops", ["admin"])
        with pytest.raises(ConflictError):
            await create_token(session, "ops", ["admin"])
        with pytest.raises(ValidationError):
            await create_token(session, "x", ["root"])
        again = await create_token(session, "ops", ["admin:read"], replace=True)
        info = await verify_token(session, again)
        assert info is not None and info.allows("admin:read") and not info.allows("admin")
