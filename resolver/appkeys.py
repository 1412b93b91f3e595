"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.accounts.cache import AccountJWTCache
from resolver.auth.ratelimit import TokenBuckets
from resolver.config import Settings
from resolver.credentials.identity import IdentityVerifier
from resolver.db.checkpoint import WalCheckpointer
from resolver.scim.events import EventHooks
from resolver.sealing import Sealer

if TYPE_CHECKING:
    from resolver.credentials.issuer import CredentialIssuer
    from resolver.jobs.leader import JobLeader
    from resolver.push.wake import PushWaker

SETTINGS = web.AppKey("settings", Settings)
SEALER = web.AppKey("sealer", Sealer)
TOKEN_BUCKETS = web.AppKey("token_buckets", TokenBuckets)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
#: Alembic head this code expects; /readyz compares it with the database.
SCHEMA_HEAD = web.AppKey("schema_head", str)
#: Wakes the pusher after a commit that wrote outbox rows (a no-op when NATS is disabled).
# Named, not imported: resolver.push imports this module.
PUSHER: web.AppKey[PushWaker] = web.AppKey("pusher")
#: Consumers of SCIM domain events (membership diffs, deactivations, deletions).
SCIM_EVENTS = web.AppKey("scim_events", EventHooks)
#: Served account JWTs in memory, invalidated on every change (see resolver.accounts.cache).
JWT_CACHE = web.AppKey("jwt_cache", AccountJWTCache)
#: Verifies IdP tokens and front-proxy assertions (resolver.credentials.identity).
IDENTITY_VERIFIER = web.AppKey("identity_verifier", IdentityVerifier)
#: Copies SQLite's write-ahead log into the database file (SQLite only; the job in
#: resolver.jobs.wal_checkpoint runs it).
WAL_CHECKPOINTER = web.AppKey("wal_checkpointer", WalCheckpointer)
#: Decides credential requests in batches (started with the database).
# Named, not imported: the issuer imports the whole decision, which imports modules that
# import this one.
CREDENTIAL_ISSUER: web.AppKey[CredentialIssuer] = web.AppKey("credential_issuer")
#: Whether this replica runs the shared scheduled jobs (resolver.jobs.leader). Named, not
#: imported: resolver.jobs imports every job module, and they import this one.
JOB_LEADER: web.AppKey[JobLeader] = web.AppKey("job_leader")
