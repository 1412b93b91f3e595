"""The least work a token exchange can do, as a reference for bench/credentials.py.

    python bench/exchange_floor.py PORT PUBLIC_KEY_PEM ISSUER AUDIENCE DATABASE CORE [sqlalchemy]

One aiohttp route, ``POST /v1/credentials``, that does only what no implementation can skip:
check the RS256 IdP token with PyJWT, sign a user JWT with resolver.natsjwt, and record the
issued key and an audit row in SQLite in one transaction, on the event loop's thread. No
grants, no lock, no decision. SQLite's log is checkpointed off the loop, as the service does
(resolver.db.checkpoint). Pinned to CPU ``CORE``, like the service.

- plain: the two inserts and the commit on a plain sqlite3 connection;
- ``sqlalchemy``: the same two inserts and commit through an SQLAlchemy async session on the
  service's own engine and driver (``inline_statements()``), as the service's batch runs.

What the plain one answers at a given rate is what this machine can do at best; the
difference to the second is what the database layer alone costs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.sqlite_driver import inline_statements
from resolver.jobs import wal_checkpoint
from resolver.natsjwt import encode, new_keypair
from resolver.natsjwt.claims import user_claims

ISSUED = "INSERT INTO issued VALUES (:key, :name, :exp)"
AUDIT = "INSERT INTO audit (at, who, what) VALUES (:at, :who, :what)"


def checkpoint_like_the_service(database: str) -> None:
    # As the service's checkpointer does (resolver.db.checkpoint): at the lowest priority,
    # so the copy runs in the server's idle time, and as often.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    connection = sqlite3.connect(database, isolation_level=None)
    while True:
        time.sleep(wal_checkpoint.EVERY_SECONDS)
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")


def build_app(
    public_pem: bytes, issuer: str, audience: str, database: str, *, sqlalchemy: bool
) -> web.Application:
    key = load_pem_public_key(public_pem)
    account, _account_seed = new_keypair("account")
    _signer, signer_seed = new_keypair("account")
    db = sqlite3.connect(database, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE IF NOT EXISTS issued (key TEXT PRIMARY KEY, name TEXT, exp INT)")
    db.execute("CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, at REAL, who, what)")
    threading.Thread(target=checkpoint_like_the_service, args=(database,), daemon=True).start()
    engine = create_engine(f"sqlite+aiosqlite:///{database}", wal_autocheckpoint=False)
    sessionmaker = create_sessionmaker(engine)

    async def record(issued: dict[str, Any], audit: dict[str, Any]) -> None:
        if sqlalchemy:
            with inline_statements():
                async with sessionmaker() as session, session.begin():
                    conn = await session.connection()
                    await conn.execute(text(ISSUED), issued)
                    await conn.execute(text(AUDIT), audit)
            return
        db.execute("BEGIN IMMEDIATE")
        db.execute(ISSUED, issued)
        db.execute(AUDIT, audit)
        db.execute("COMMIT")

    async def issue(request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        public_key = (await request.json())["public_key"]
        claims = jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=issuer)
        exp = min(int(claims["exp"]), int(time.time()) + 3600)
        user = user_claims(
            claims["email"], public_key, issuer_account=account, scoped=True, exp=exp
        )
        user_jwt = encode(user, signer_seed)
        await record(
            {"key": public_key, "name": claims["email"], "exp": exp},
            {"at": time.time(), "who": claims["email"], "what": json.dumps({"key": public_key})},
        )
        return web.json_response({"jwt": user_jwt}, status=201)

    app = web.Application()
    app.router.add_post("/v1/credentials", issue)
    return app


if __name__ == "__main__":
    port, pem, issuer, audience, database, core = sys.argv[1:7]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(core)})
    through_sqlalchemy = sys.argv[7:] == ["sqlalchemy"]
    app = build_app(
        Path(pem).read_bytes(), issuer, audience, database, sqlalchemy=through_sqlalchemy
    )
    web.run_app(app, host="127.0.0.1", port=int(port), print=None, access_log=None)
