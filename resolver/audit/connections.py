"""Client connections as audit rows: nats-server's connect/disconnect events, each written
under the person or workload behind the user key.

nats-server publishes ``$SYS.ACCOUNT.<account>.CONNECT`` and ``.DISCONNECT`` for every
client (``ConnectEventMsg``/``DisconnectEventMsg`` in its server/events.go; checked
against nats-server 2.15.1). What matters in them, and what does not go into a row:

- ``client.user`` is the user public key of a JWT user. For an auth-callout client it is
  the ``name`` of the user JWT the callout answered with (nats-server replaces the user
  with it); for a token it is ``[REDACTED]``.
- ``client.jwt`` is the whole user JWT the client presented, and ``client.nonce`` the
  connect nonce: never stored (a bearer JWT is a credential). Only the JWT's ``name`` is
  read, to show what a key we did not issue claims to be.
- ``client.name_tag`` is the *account's* JWT name (nats-server's ``acc.getNameTag()``),
  not the user's: it names the account in rows and metric labels.
- ``client.host`` is the address only: the events carry no client port.
- ``sent``/``received`` (disconnect) are the client's: what it sent to the server and what
  it was sent.

No aiohttp and no commit here: ``record_connection_events`` writes into the caller's
transaction (resolver.audit.connection_recorder batches the events and owns it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import Account, AuditEntry, AuthCalloutKeys, IssuedUserKey, User, utcnow
from resolver.natsjwt.keys import is_public_key

CONNECT_SUBJECT = "$SYS.ACCOUNT.*.CONNECT"
DISCONNECT_SUBJECT = "$SYS.ACCOUNT.*.DISCONNECT"
CONNECT_TYPE = "io.nats.server.advisory.v1.client_connect"
DISCONNECT_TYPE = "io.nats.server.advisory.v1.client_disconnect"

#: Audit actions of the two events.
CONNECT_ACTION = "nats.connect"
DISCONNECT_ACTION = "nats.disconnect"
#: Actor (and ``identity_source``) of a row whose user key the service did not issue.
UNKNOWN = "unknown"
#: Who the auth callout's own connection is (its key is in ``auth_callout_keys``).
CALLOUT_SERVICE_NAME = "nats-iam-resolver auth callout"

#: Client-chosen strings (connection name, library version...) are cut to this length: a
#: client must not be able to bloat the audit log, nor fail a batch on a column's size.
MAX_TEXT = 200
#: A JWT longer than this is not decoded for its name (nats-server accepts far less).
MAX_JWT_CHARS = 64 * 1024


@dataclass(frozen=True)
class ConnectionEvent:
    """One connect or disconnect, with nothing secret left in it."""

    action: str  # CONNECT_ACTION or DISCONNECT_ACTION
    at: datetime
    account_key: str
    #: The account JWT's name as the server knows it (empty when it has none).
    account_name: str
    #: ``client.user``: a user public key, a callout user's name, or empty.
    user: str
    #: The ``name`` the presented user JWT claims (never trusted as the identity).
    jwt_name: str | None
    details: dict[str, Any]

    @property
    def event(self) -> str:
        """``connect`` or ``disconnect`` (the metric label)."""
        return self.action.removeprefix("nats.")

    @property
    def account_label(self) -> str:
        """The account's name if the server sent one, else its key (bounded either way)."""
        return self.account_name or self.account_key


@dataclass(frozen=True)
class Identity:
    """Who is behind a connection, and how we know."""

    #: SCIM userName or workload name; None when unknown.
    name: str | None
    #: ``issued`` (a key this service issued), ``service`` (one of its own connections),
    #: ``callout`` (the name the auth callout gave the client) or ``unknown``.
    source: str
    user_id: str | None = None


def parse_connection_event(data: bytes) -> ConnectionEvent | None:
    """The event in a ``$SYS.ACCOUNT.*.CONNECT``/``DISCONNECT`` message; None for anything
    that is not one (nothing is raised: a malformed event must not stop the others)."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    kind = body.get("type")
    if kind == CONNECT_TYPE:
        action = CONNECT_ACTION
    elif kind == DISCONNECT_TYPE:
        action = DISCONNECT_ACTION
    else:
        return None
    client = _object(body.get("client"))
    server = _object(body.get("server"))
    account_key = _text(client.get("acc"))
    if not account_key:
        return None
    user = _text(client.get("user"))
    details: dict[str, Any] = {
        "event_id": _text(body.get("id")),
        "account": _text(client.get("name_tag")),
        "account_key": account_key,
        "user_key": user if is_public_key(user, "user") else None,
        "client": _clean(
            {
                "host": _text(client.get("host")),
                "id": client.get("id") if isinstance(client.get("id"), int) else None,
                "name": _text(client.get("name")),
                "lang": _text(client.get("lang")),
                "version": _text(client.get("ver")),
                "kind": _text(client.get("kind")),
                "type": _text(client.get("client_type")),
                "issuer_key": _text(client.get("issuer_key")),
                "tags": [_text(t) for t in client.get("tags") or () if isinstance(t, str)][:50],
                "start": _text(client.get("start")),
                "stop": _text(client.get("stop")),
                "rtt_ms": _rtt_ms(client.get("rtt")),
            }
        ),
        "server": _clean(
            {
                "name": _text(server.get("name")),
                "id": _text(server.get("id")),
                "host": _text(server.get("host")),
                "cluster": _text(server.get("cluster")),
                "version": _text(server.get("ver")),
            }
        ),
    }
    if action == DISCONNECT_ACTION:
        details["reason"] = _text(body.get("reason"))
        for side in ("sent", "received"):
            stats = _stats(body.get(side))
            if stats is not None:
                details[side] = stats
    return ConnectionEvent(
        action=action,
        at=_time(body.get("timestamp")),
        account_key=account_key,
        account_name=_text(client.get("name_tag")),
        user=user,
        jwt_name=_jwt_name(client.get("jwt")),
        details=details,
    )


async def resolve_identities(
    session: AsyncSession, events: Sequence[ConnectionEvent]
) -> dict[tuple[str, str], Identity]:
    """The identity behind each (user, account key) of ``events``, in two queries at most.

    A user key counts as ours only in the account it was issued in: the same key in another
    account was signed by someone else, and could name anyone.
    """
    keys = {e.user for e in events if is_public_key(e.user, "user")}
    found: dict[tuple[str, str], Identity] = {}
    if keys:
        rows = await session.execute(
            select(
                IssuedUserKey.public_key,
                Account.public_key,
                IssuedUserKey.name,
                User.user_name,
                IssuedUserKey.user_id,
            )
            .join(Account, Account.id == IssuedUserKey.account_id)
            .outerjoin(User, User.id == IssuedUserKey.user_id)
            .where(IssuedUserKey.public_key.in_(sorted(keys)))
            .order_by(IssuedUserKey.issued_at)
        )
        for key, account, issued_name, user_name, user_id in rows:
            # Newest issue last: a renamed person shows under the name they have now.
            found[(key, account)] = Identity(user_name or issued_name, "issued", user_id)
        missing = sorted(keys - {key for key, _ in found})
        if missing:
            callout = await session.execute(
                select(AuthCalloutKeys.user_public_key, Account.public_key)
                .join(Account, Account.id == AuthCalloutKeys.account_id)
                .where(AuthCalloutKeys.user_public_key.in_(missing))
            )
            for key, account in callout:
                found[(key, account)] = Identity(CALLOUT_SERVICE_NAME, "service")
    result: dict[tuple[str, str], Identity] = {}
    for event in events:
        pair = (event.user, event.account_key)
        if pair in found:
            result[pair] = found[pair]
        elif event.user and event.user != "[REDACTED]" and not is_public_key(event.user, "user"):
            # A name in place of a key: nats-server put the name of the user JWT our auth
            # callout answered with there (it overrides whatever the client sent).
            result[pair] = Identity(event.user[:MAX_TEXT], "callout")
        else:
            result[pair] = Identity(None, UNKNOWN)
    return result


async def record_connection_events(
    session: AsyncSession, events: Sequence[ConnectionEvent]
) -> None:
    """One audit row per event, in one statement, in the caller's transaction.

    The actor is the identity when the service issued the key (as for ``credentials.issue``,
    so one actor filter shows a person's credentials and their connections), else
    ``unknown``: never ``system`` (the service did not connect), and never the name the JWT
    claims (whoever holds an account signing key can write any name there; it is kept in
    ``details.jwt_name``). The row's ``user`` is the identity too, left empty when unknown.
    """
    if not events:
        return
    identities = await resolve_identities(session, events)
    rows = []
    for event in events:
        identity = identities[(event.user, event.account_key)]
        details = dict(event.details)
        details["identity_source"] = identity.source
        if identity.user_id:
            details["user_id"] = identity.user_id
        if identity.name is None and event.jwt_name:
            details["jwt_name"] = event.jwt_name
        rows.append(
            {
                # When it happened on the server (a burst may be written a little later).
                "at": event.at,
                "actor": identity.name or UNKNOWN,
                "action": event.action,
                "target": details["user_key"],
                "request_id": None,
                "source": details["client"].get("host"),
                "user_name": identity.name,
                "account_key": event.account_key,
                "details": details,
            }
        )
    await session.execute(insert(AuditEntry), rows)


# -- reading the event's fields defensively -------------------------------------------------


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """Without the empty fields (nats-server leaves most of them out when unset, too)."""
    return {k: v for k, v in values.items() if v not in ("", None, [])}


def _rtt_ms(value: Any) -> float | None:
    # A Go time.Duration: nanoseconds.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return round(value / 1e6, 3)
    return None


def _stats(value: Any) -> dict[str, int] | None:
    stats = _object(value)
    msgs, size = stats.get("msgs"), stats.get("bytes")
    if isinstance(msgs, int) and isinstance(size, int):
        return {"msgs": msgs, "bytes": size}
    return None


def _time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return utcnow()
        if parsed.tzinfo is not None:
            return parsed
    return utcnow()


def _jwt_name(value: Any) -> str | None:
    """The ``name`` claim of a user JWT, unverified (nats-server verified it; we only show
    it). The JWT itself goes nowhere."""
    if not isinstance(value, str) or len(value) > MAX_JWT_CHARS or value.count(".") != 2:
        return None
    payload = value.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    name = claims.get("name") if isinstance(claims, dict) else None
    return name[:MAX_TEXT] if isinstance(name, str) and name else None
