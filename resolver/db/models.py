"""Declarative models: the one description of the schema that Alembic migrations must match.

Conventions: integer surrogate keys except for SCIM resources (whose ids the IdP stores, so
they are opaque UUID strings); every timestamp is timezone-aware UTC (``UTCDateTime``);
JWT times (``iat``/``exp``/revocation times) stay unix seconds because that is what goes
into the tokens; seeds are only ever stored sealed (``*_sealed`` columns, see ``sealing``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints so migrations can drop and alter them by name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NKEY = String(56)
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Operator(Base):
    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    seed_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: Public key of the system account (its row lives in ``accounts``).
    system_account_key: Mapped[str | None] = mapped_column(NKEY)
    jwt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OperatorSigningKey(Base):
    __tablename__ = "operator_signing_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    seed_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: When it began signing account JWTs; null for the pre-published "next" key, which
    #: the operator JWT lists so that servers trust it before a rotation promotes it.
    activated_at: Mapped[datetime | None]
    #: A retired key stays listed in the operator JWT until accounts it signed are re-signed.
    retired_at: Mapped[datetime | None]


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    #: Null for accounts managed elsewhere (uploaded with ``nsc push``): we only store their JWT.
    seed_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    is_system: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Declared settings the claims are built from: limits, tags, exports, imports, description.
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    jwt: Mapped[str | None] = mapped_column(Text)
    jti: Mapped[str | None] = mapped_column(String(64))
    issued_at: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Set when deleted: the account is locked out and no longer served.
    deleted_at: Mapped[datetime | None]


class AccountSigningKey(Base):
    __tablename__ = "account_signing_keys"
    __table_args__ = (Index("ix_account_signing_keys_account_role_set", "account_id", "role_set"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    seed_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: Canonical name of the role set a scoped key serves; null for a plain signing key.
    role_set: Mapped[str | None] = mapped_column(String(512))
    #: The ``user_scope`` template (permissions and limits) compiled from the roles.
    template: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Rotated: signs no new user JWT, but stays in the account JWT (its users stay
    #: connected) until every user JWT it signed has expired; then it is retired.
    superseded_at: Mapped[datetime | None]
    #: Left out of the account JWT: nats-server drops the users it signed.
    retired_at: Mapped[datetime | None]


class User(Base):
    """A SCIM user. Core attributes are columns (filterable in SQL); the rest is ``resource``."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    user_name: Mapped[str] = mapped_column(String(256))
    #: ``user_name`` case-folded: SCIM says userName is unique case-insensitively.
    user_name_key: Mapped[str] = mapped_column(String(256), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(256), index=True)
    display_name: Mapped[str | None] = mapped_column(String(256))
    #: Primary e-mail, lower-cased, to map IdP tokens carrying ``email`` to the user.
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    resource: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    display_name: Mapped[str] = mapped_column(String(256))
    display_name_key: Mapped[str] = mapped_column(String(256), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(256), index=True)
    resource: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class GroupMember(Base):
    """Membership as a join table: one row per member, so a change touches one row.

    The primary key (group_id, user_id) serves "members of G" and "is U in G"; the index on
    user_id serves "groups of U". A 100,000-member group is 100,000 narrow rows, never a list.
    """

    __tablename__ = "group_members"
    __table_args__ = (Index("ix_group_members_user_id", "user_id"),)

    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    #: The member's ``display`` as the IdP sent it (Okta does), echoed back as given.
    display: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    #: Permissions, limits, connection types, JetStream grants, maximum credential lifetime.
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Binding(Base):
    """IdP group (or token claim value) → NATS account + role, optionally until ``ends_at``."""

    __tablename__ = "bindings"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), index=True)
    #: Exactly one selector is set: a SCIM group id, a group displayName (resolved at use,
    #: so a binding may precede the IdP's push), or a token claim (workloads SCIM never sees).
    group_id: Mapped[str | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), index=True
    )
    group_name_key: Mapped[str | None] = mapped_column(String(256), index=True)
    #: The displayName as the operator wrote it (``group_name_key`` is its case-folded form).
    group_name: Mapped[str | None] = mapped_column(String(256))
    claim_name: Mapped[str | None] = mapped_column(String(200))
    claim_value: Mapped[str | None] = mapped_column(String(512))
    ends_at: Mapped[datetime | None] = mapped_column(index=True)
    #: When the end-time job revoked what this binding granted (``ends_at`` had passed); a
    #: binding extended afterwards (``ends_at`` later than this) is handled again.
    lapsed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IssuedUserKey(Base):
    """Every user JWT handed out: what a revocation must cover and when it stops mattering."""

    __tablename__ = "issued_user_keys"
    __table_args__ = (
        Index("ix_issued_user_keys_account_user", "account_id", "user_id"),
        # Both columns: "was this key issued in this account" is on every credentials
        # request, and with account_id alone the planner walks all the account's keys.
        Index("ix_issued_user_keys_public_key_account", "public_key", "account_id"),
        # "Does a live user JWT signed by this (rotated) key remain?" (key rotation).
        Index("ix_issued_user_keys_signing_key_expires_at", "signing_key", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    public_key: Mapped[str] = mapped_column(NKEY)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    #: The SCIM user, or null for a workload credential.
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    #: Human identity or workload name written into the JWT's ``name``.
    name: Mapped[str] = mapped_column(String(256))
    signing_key: Mapped[str] = mapped_column(NKEY)
    jti: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class IssuedKeyClaim(Base):
    """A claim binding an issued key rests on: ending that binding revokes the key.

    SCIM knows no members of a claim binding, so this is the only way back from the
    binding to the workloads it granted. ``binding_id`` has no foreign key on purpose: a
    policy apply deletes the binding first and revokes after, in the same transaction.
    """

    __tablename__ = "issued_key_claims"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    issued_key_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("issued_user_keys.id", ondelete="CASCADE"), index=True
    )
    binding_id: Mapped[int] = mapped_column(Integer, index=True)


class AuthCalloutKeys(Base):
    """The keys of the auth callout: which user answers, what the server encrypts to.

    One row per auth account (``init --auth-callout``). Seeds are sealed like every other;
    replicas need only the database and the master key to answer callouts.
    """

    __tablename__ = "auth_callout_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), unique=True
    )
    #: The callout service's user (the account JWT's ``authorization.auth_users``).
    user_public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    user_seed_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: The curve key requests are encrypted to (``authorization.xkey``).
    xkey_public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    xkey_seed_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: The bearer user JWT (deny all) that clients without a JWT of their own connect as,
    #: nats-server's ``default_sentinel``; its seed only fills a creds file.
    sentinel_public_key: Mapped[str] = mapped_column(NKEY, unique=True)
    sentinel_seed_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    sentinel_jwt: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Revocation(Base):
    __tablename__ = "revocations"
    __table_args__ = (UniqueConstraint("account_id", "public_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    #: A user public key, or ``*`` for every user issued up to ``revoked_at``.
    public_key: Mapped[str] = mapped_column(NKEY)
    #: Unix seconds: user JWTs with ``iat`` at or before this are refused.
    revoked_at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_actor_at", "actor", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
        Index("ix_audit_log_target_at", "target", "at"),
        Index("ix_audit_log_user_name_at", "user_name", "at"),
        Index("ix_audit_log_account_key_at", "account_key", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(256))
    request_id: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str | None] = mapped_column(String(100))
    #: The person or workload the row is about (SCIM userName, or the name in the user
    #: JWT), as it was then: what an auditor filters by.
    user_name: Mapped[str | None] = mapped_column(String(256))
    #: Public key of the NATS account the row is about.
    account_key: Mapped[str | None] = mapped_column(NKEY)
    #: What changed (claims diff, member ids...). Never a secret.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PushOutbox(Base):
    """An account JWT to push to NATS, written in the transaction that changed it."""

    __tablename__ = "push_outbox"
    __table_args__ = (Index("ix_push_outbox_status_next_attempt", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_key: Mapped[str] = mapped_column(NKEY, index=True)
    jwt: Mapped[str] = mapped_column(Text)
    jti: Mapped[str] = mapped_column(String(64))
    #: pending | done | superseded | failed
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    #: Each server's reply: ``[{"server": name, "id": id, "code": 200, "message": ...}]``.
    results: Mapped[list[Any]] = mapped_column(default=list)


class ApiToken(Base):
    """A bearer token: ``nir_<token_id>_<secret>``; only a hash of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    #: Space-separated scopes: scim, admin, admin:read, push.
    scopes: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class JobRun(Base):
    """Each scheduled job's last run, whichever replica ran it (resolver.jobs.runs)."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    ok: Mapped[bool]
    duration_ms: Mapped[int] = mapped_column(Integer)
    #: What the run did, as the job put it ("re-signed 3 account(s)"). Never a secret.
    summary: Mapped[str | None] = mapped_column(String(500))
    #: The exception's class name when the run failed: never its message or traceback.
    error: Mapped[str | None] = mapped_column(String(200))
    #: ``hostname:pid`` of the replica that ran it.
    replica: Mapped[str] = mapped_column(String(255))
    #: When a run last succeeded (a failure does not clear it).
    last_ok_at: Mapped[datetime | None]
