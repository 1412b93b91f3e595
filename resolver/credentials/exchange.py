"""The one decision behind every credential: a verified identity → a short-lived user JWT.

``POST /v1/credentials``, ``GET /v1/credentials/creds`` and the auth callout all end in
``exchange_many`` (through ``resolver.credentials.issuer``, which batches the requests of
the moment), so a person or workload gets the same answer however they ask.

- A person is the SCIM user whose attribute (userName, email, externalId, id) equals the
  identity's user value. Inactive: refused, whatever else the token says.
- A workload is an identity with no SCIM user; it can only reach accounts through bindings
  that match a token claim (``roles=ci-deployer``, ``groups=...``).
- Credentials never outlive the IdP token they came from, except by the IdP's configured
  grace for a person whose access comes from SCIM groups (the removal path revokes those);
  access that rests on a token claim stops with the token.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    Select,
    String,
    and_,
    bindparam,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolver.accounts.service import (
    MIN_CREDS_TTL,
    get_account,
    issued_key_row,
    record_issued_keys,
    resign_account,
)
from resolver.audit.service import Actor, AuditRow, record_all
from resolver.config import Settings
from resolver.credentials.identity import Identity
from resolver.db.models import (
    Account,
    AccountSigningKey,
    Binding,
    Group,
    GroupMember,
    IssuedKeyClaim,
    IssuedUserKey,
    Revocation,
    Role,
    User,
)
from resolver.db.statements import Statements
from resolver.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ResolverError,
    ValidationError,
)
from resolver.natsjwt import is_public_key
from resolver.policy.access import Grant, grants_of_users
from resolver.policy.roles import RoleSpec, max_ttl, parse_role, role_set_name
from resolver.policy.scoped_keys import load_roles, scoped_key_for
from resolver.policy.user_creds import group_tag, refuse_public_key, sign_scoped
from resolver.sealing import Sealer

#: ``Grant.group_id`` of a grant that comes from a token claim, not a SCIM group.
CLAIM_GROUP_PREFIX = "claim:"


@dataclass(frozen=True)
class CredentialRequest:
    """What the caller asks for; everything but the identity is optional."""

    #: The caller's user public key (U...); None: a key pair is made, the seed returned.
    public_key: str | None
    #: Account name or public key; None: the only account the identity reaches.
    account: str | None = None
    #: A subset of the roles held in that account; None: all of them.
    roles: tuple[str, ...] | None = None
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class IssuedCredentials:
    jwt: str
    #: A creds file with a generated seed (never stored), when no public key was given.
    creds: str | None
    account_name: str
    account_public_key: str
    #: The account JWT in force after the issue (wait for its push if the key is new).
    account_jti: str
    #: The human (or workload) identity in the user JWT's ``name``.
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    expires_at: int
    #: A scoped key was made for this role set: the account JWT must reach the servers
    #: before the credentials work there.
    new_signing_key: bool
    user_public_key: str


@dataclass(frozen=True)
class Ask:
    """One caller's request for credentials, as ``exchange_many`` takes it."""

    identity: Identity
    request: CredentialRequest
    #: The way in, for the audit: ``token``, ``proxy`` or ``callout``.
    via: str
    source: str | None
    request_id: str | None = None


#: What ``exchange_many`` gives for each ask: the credentials, or why they were refused.
Outcome = IssuedCredentials | ResolverError


class Batch(Protocol):
    """The transaction a batch is decided in (resolver.credentials.issuer makes it)."""

    #: The hot path's statements (every batch runs them).
    statements: Statements
    #: The read before the lock kept from earlier batches on this connection, or None.
    memo: GrantsMemo | None

    async def session(self) -> AsyncSession:
        """An ORM session in the same transaction, for the rare paths (a role set's first
        issue, a role not read with the grants, a re-read under the lock)."""
        ...


@dataclass(frozen=True)
class Person:
    """The SCIM user a token names (what the decision needs of it)."""

    id: str
    user_name: str
    active: bool


# -- reading grants -------------------------------------------------------------------------


def _claim_bindings(*columns: Any) -> Select[Any]:
    """``columns`` of the live bindings on the claims named by the ``names`` parameter
    (only claims the tokens carry can match: bindings on other claims are not read)."""
    return (
        select(*columns)
        .select_from(Binding)
        .join(Role, Role.id == Binding.role_id)
        .join(Account, Account.id == Binding.account_id)
        .where(
            Binding.claim_name.in_(bindparam("names", expanding=True)),
            Account.deleted_at.is_(None),
            or_(Binding.ends_at.is_(None), Binding.ends_at > bindparam("now")),
        )
    )


def _typed_null(column: Any) -> Any:
    # A NULL of the column's type: PostgreSQL wants each UNION column of one type.
    return null().cast(column.type)


# Built once (building them costs more CPU than running them). Under the lock, the claim
# grants of the locked accounts only.
_CLAIM_GRANTS_IN_ACCOUNTS = _claim_bindings(
    Binding.account_id,
    Account.name,
    Role.name,
    Binding.id,
    Binding.claim_name,
    Binding.claim_value,
    Role.spec,
).where(Binding.account_id.in_(bindparam("account_ids", expanding=True)))

#: The SCIM attributes a token's user value can name, and their columns.
_PERSON_COLUMNS = {
    "userName": User.user_name_key,
    "email": User.email,
    "externalId": User.external_id,
    "id": User.id,
}


def _person_grants(attribute: str) -> Select[Any]:
    # The users named, each outer-joined to every grant their groups give: one statement
    # tells an unknown user (no row), an inactive one, one without a binding (NULL grant
    # columns) and the grants themselves. The join conditions mirror
    # resolver.policy.access. The last two columns say which name the row answers.
    column = _PERSON_COLUMNS[attribute]
    now = bindparam("now")
    return (
        select(
            User.id,
            User.user_name,
            User.active,
            Binding.account_id,
            Account.name,
            Role.name,
            Binding.id,
            Group.id,
            Group.display_name,
            Role.spec,
            # Labelled: equal NULL expressions in one select would be folded into one.
            _typed_null(Binding.claim_name).label("claim_name"),
            _typed_null(Binding.claim_value).label("claim_value"),
            literal(attribute, String).label("attribute"),
            column.label("answers"),
        )
        .select_from(User)
        .outerjoin(GroupMember, GroupMember.user_id == User.id)
        .outerjoin(Group, Group.id == GroupMember.group_id)
        .outerjoin(
            Binding,
            and_(
                or_(
                    Binding.group_id == Group.id,
                    and_(
                        Binding.group_id.is_(None),
                        Binding.group_name_key == Group.display_name_key,
                    ),
                ),
                or_(Binding.ends_at.is_(None), Binding.ends_at > now),
            ),
        )
        .outerjoin(Account, and_(Account.id == Binding.account_id, Account.deleted_at.is_(None)))
        .outerjoin(Role, Role.id == Binding.role_id)
        .where(column.in_(bindparam(f"values_{attribute}", expanding=True)))
    )


# The claim grants shaped like _person_grants rows (no user, no group, no name answered).
_CLAIM_ROWS = _claim_bindings(
    # Labelled: equal NULL expressions in one select would be folded into one column.
    _typed_null(User.id).label("user_id"),
    _typed_null(User.user_name).label("user_name"),
    _typed_null(User.active).label("active"),
    Binding.account_id,
    Account.name,
    Role.name,
    Binding.id,
    _typed_null(Group.id).label("group_id"),
    _typed_null(Group.display_name).label("group_name"),
    Role.spec,
    Binding.claim_name,
    Binding.claim_value,
    _typed_null(User.user_name).label("attribute"),
    _typed_null(User.user_name).label("answers"),
)


@functools.cache
def _grants_statement(attributes: tuple[str, ...], with_claims: bool) -> Any:
    """The people named by ``attributes`` and (``with_claims``) the claim grants, as one
    statement: one round trip for a whole batch. Built once per shape."""
    parts = [_person_grants(attribute) for attribute in attributes]
    if with_claims:
        parts.append(_CLAIM_ROWS)
    return parts[0] if len(parts) == 1 else union_all(*parts)


def _user_key(identity: Identity) -> tuple[str, str] | None:
    """(attribute, value as stored) naming the identity's SCIM user; None for a workload."""
    value = identity.user_value
    if not value:
        return None
    attribute = identity.user_attribute
    if attribute == "userName":
        value = value.casefold()
    elif attribute == "email":
        value = value.lower()
    return attribute, value


def _claim_grant(identity: Identity, row: Any) -> Grant | None:
    """The grant of a claim binding's row (account, account name, role, binding, claim,
    value, spec), if the identity's token carries that value in that claim."""
    account_id, account_name, role, binding_id, claim, value, spec = row
    if value not in identity.claim_values(claim):
        return None
    group = CLAIM_GROUP_PREFIX + claim
    return Grant(account_id, account_name, role, binding_id, group, value, spec)


@dataclass
class GrantsMemo:
    """The people's rows of the read before the lock, kept from batch to batch while the
    database is as it was when they were read (SQLite; the issuer keeps one per connection).

    ``PRAGMA data_version`` tells: it changes whenever another connection commits (a SCIM
    change, a policy apply, another process), and the batch's own commits only add issued
    keys and audit rows, which no grant depends on (a batch that takes a rare path, which
    changes accounts, clears the memo). The one change no commit makes is time: a binding's
    ``ends_at`` passing. So the memo also ends when the first running binding ends. The
    re-read under the lock is unchanged: it is skipped only if nothing committed since.
    """

    #: ``data_version`` when the rows were read; None: nothing kept.
    version: int | None = None
    #: The earliest ``ends_at`` after the read of any binding (None: no binding ends).
    until: datetime | None = None
    #: (attribute, value as stored) → the rows of the users it names ([]: nobody).
    people: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    #: A token claim's name → the rows of the claim bindings on it ([]: none).
    claims: dict[str, list[Any]] = field(default_factory=dict)
    #: Role name → its spec as parsed from the rows kept (a role's change is a commit).
    roles: dict[str, RoleSpec] = field(default_factory=dict)
    #: Scoped key id → its seed, unsealed (a key's retirement is a commit; one made in a
    #: batch is a rare path). ``natsjwt.keys`` keeps the signers of these seeds anyway.
    seeds: dict[int, bytes] = field(default_factory=dict)

    def clear(self) -> None:
        self.version = None
        self.people.clear()
        self.claims.clear()
        self.roles.clear()
        self.seeds.clear()

    def holds(self, version: int, now: datetime) -> bool:
        return (
            self.version == version
            and (self.until is None or now < self.until)
            and len(self.people) + len(self.claims) < MEMO_MAX_ENTRIES
        )


#: People and claim names kept in a memo at most; past that it starts over (a bound on
#: memory, not a cache policy: one entry per person who asked since the last change).
MEMO_MAX_ENTRIES = 10_000

_NEXT_END = select(func.min(Binding.ends_at)).where(Binding.ends_at > bindparam("now"))


async def _identities_grants(
    db: Statements,
    identities: list[Identity],
    now: datetime,
    memo: GrantsMemo | None = None,
    version: int | None = None,
) -> list[tuple[Person | None, list[Grant]] | ResolverError]:
    """For each identity: the SCIM user it names (None: a workload, or never provisioned),
    the grants their groups give them (none when inactive) and the grants of claim bindings
    its token's claims match, sorted by account, role and binding. One statement for all,
    for the people not in ``memo`` (valid at ``version``) and the claims."""
    keys = [_user_key(identity) for identity in identities]
    claimed = {name for identity in identities for name in identity.claims}
    kept: GrantsMemo | None = None
    if memo is not None and version is not None:
        if not memo.holds(version, now):
            memo.clear()
            ends = await db.rows(_NEXT_END, {"now": now})
            memo.version, memo.until = version, ends[0][0] if ends else None
        kept = memo
    values: dict[str, set[str]] = {}
    for key in keys:
        if key is not None and (kept is None or key not in kept.people):
            values.setdefault(key[0], set()).add(key[1])
    names = sorted(claimed if kept is None else claimed - set(kept.claims))
    attributes = tuple(sorted(values))
    if not attributes and not names:
        rows: list[Any] = []
    else:
        params: dict[str, Any] = {"now": now, "names": names}
        params |= {f"values_{a}": sorted(v) for a, v in values.items()}
        rows = await db.rows(_grants_statement(attributes, bool(names)), params)
    person_rows: dict[tuple[str, str], list[Any]] = {}
    claim_rows = []
    for row in rows:
        if row[0] is None:
            claim_rows.append((*row[3:7], row[10], row[11], row[9]))
        else:
            person_rows.setdefault((row[12], row[13]), []).append(row)
    if kept is not None:
        for attribute, asked in values.items():
            for value in asked:
                kept.people[(attribute, value)] = person_rows.get((attribute, value), [])
        for name in names:
            kept.claims[name] = [row for row in claim_rows if row[4] == name]
        person_rows = kept.people
        claim_rows = [row for name in sorted(claimed) for row in kept.claims[name]]
    found: list[tuple[Person | None, list[Grant]] | ResolverError] = []
    for identity, key in zip(identities, keys, strict=True):
        grants = [g for r in claim_rows if (g := _claim_grant(identity, r)) is not None]
        mine = person_rows.get(key, []) if key is not None else []
        if key is not None and len({row[0] for row in mine}) > 1:
            # Two SCIM users share that email or externalId: picking one would be a guess.
            attribute, value = key
            found.append(
                PermissionDeniedError(
                    f"more than one SCIM user has {attribute} {value!r}; "
                    "ask an admin to fix the IdP"
                )
            )
            continue
        person = None
        for row in mine:
            person = Person(row[0], row[1], bool(row[2]))
            if row[3] is not None and row[4] is not None and row[5] is not None:
                grants.append(Grant(*row[3:10]))
        if person is not None and not person.active:
            grants = []
        grants.sort(key=lambda g: (g.account_name, g.role, g.binding_id))
        found.append((person, grants))
    return found


# -- the decision before the lock ------------------------------------------------------------


@dataclass
class _Plan:
    """What one ask will get if the re-read under the account lock agrees."""

    ask: Ask
    person: Person | None
    name: str
    account_id: int
    wanted_account: str
    role_names: list[str]
    roles: list[RoleSpec]
    lifetime: int
    from_scim: bool
    from_claims: bool
    #: Every grant the read before the lock found for this identity, in every account.
    read_before_lock: list[Grant]


def _check_request(request: CredentialRequest, identity: Identity, when: int) -> None:
    if request.public_key is not None and not is_public_key(request.public_key, "user"):
        raise ValidationError("public_key must be a user public key (U...)")
    if request.ttl_seconds is not None and (
        isinstance(request.ttl_seconds, bool)
        or not isinstance(request.ttl_seconds, int)
        or request.ttl_seconds < MIN_CREDS_TTL
    ):
        raise ValidationError(f"ttl must be a whole number of seconds, at least {MIN_CREDS_TTL}")
    if identity.expires_at is not None and identity.expires_at <= when:
        # Accepted within the IdP's clock-skew leeway, but nothing is left to issue for.
        raise AuthenticationError("the token has expired")


def _choose_account(grants: list[Grant], wanted: str | None, who: str) -> str:
    names = sorted({g.account_name for g in grants})
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise ValidationError(
            f"{who} reaches accounts {', '.join(names)}: say which one with account"
        )
    return wanted


def _role_set(
    grants: list[Grant], wanted: tuple[str, ...] | None, name: str, account: str
) -> tuple[list[str], list[Grant]]:
    """The role set to sign for (all held, or the asked subset) and the grants giving it."""
    if not grants:
        raise PermissionDeniedError(f"{name} has no binding to account {account!r}")
    held = {g.role for g in grants}
    if wanted is not None:
        asked = set(wanted)
        if not asked:
            raise ValidationError("roles, when given, must name at least one role")
        if missing := sorted(asked - held):
            raise PermissionDeniedError(
                f"{name} does not hold {', '.join(missing)} in account {account!r} "
                f"(holds {', '.join(sorted(held))})"
            )
        held = asked
    return sorted(held), [g for g in grants if g.role in held]


def _parsed_role(memo: GrantsMemo | None, name: str, spec: Mapping[str, Any]) -> RoleSpec:
    """``parse_role``, once per role while ``memo`` holds (its rows carry the spec)."""
    if memo is None or memo.version is None:
        return parse_role(name, spec)
    parsed = memo.roles.get(name)
    if parsed is None:
        parsed = memo.roles[name] = parse_role(name, spec)
    return parsed


async def _plan(
    batch: Batch,
    settings: Settings,
    ask: Ask,
    person: Person | None,
    grants: list[Grant],
    when: int,
) -> _Plan:
    """Who is asking, for which account and role set, for how long; raises the refusal."""
    identity, request = ask.identity, ask.request
    if person is not None and not person.active:
        raise PermissionDeniedError(f"user {person.user_name!r} is inactive")
    if person is not None:
        name = person.user_name
    else:
        name = identity.workload_name or f"{identity.idp}:{identity.subject}"
    if not grants:
        if person is None and identity.user_value:
            raise PermissionDeniedError(
                f"no SCIM user has {identity.user_attribute} {identity.user_value!r}, "
                "and no binding matches the token's claims"
            )
        if person is None:
            raise PermissionDeniedError(
                f"{name} is not a provisioned user and no binding matches its token's claims"
            )
        raise PermissionDeniedError(f"user {name!r} has no binding to any account")

    read_before_lock = grants
    wanted_account = _choose_account(grants, request.account, name)
    account_id = {g.account_name: g.account_id for g in grants}.get(wanted_account)
    if account_id is None and is_public_key(wanted_account, "account"):
        try:
            account_id = (await get_account(await batch.session(), wanted_account)).id
        except NotFoundError:
            pass
    # An unknown account gets the same answer as one they are not bound to: callers who
    # are not admins learn nothing about which accounts exist.
    grants = [g for g in grants if g.account_id == account_id]
    role_names, used = _role_set(grants, request.roles, name, wanted_account)
    assert account_id is not None  # _role_set refused an empty grant list
    specs = {g.role: g.role_spec for g in used if g.role_spec is not None}
    roles = (
        [_parsed_role(batch.memo, role, specs[role]) for role in role_names]
        if set(specs) == set(role_names)
        else await load_roles(await batch.session(), role_names)
    )
    lifetime = min(
        settings.credentials.default_ttl_seconds
        if request.ttl_seconds is None
        else request.ttl_seconds,
        max_ttl(roles),
    )
    from_scim = any(not g.group_id.startswith(CLAIM_GROUP_PREFIX) for g in used)
    from_claims = any(g.group_id.startswith(CLAIM_GROUP_PREFIX) for g in used)
    if identity.expires_at is not None:
        # SCIM-granted access of a person is revoked by SCIM; claim-granted access has no
        # such path, so it ends with the token.
        grace = 0 if from_claims or person is None else identity.grace_seconds
        lifetime = min(lifetime, identity.expires_at + grace - when)
    return _Plan(
        ask,
        person,
        name,
        account_id,
        wanted_account,
        role_names,
        roles,
        lifetime,
        from_scim,
        from_claims,
        read_before_lock,
    )


# -- under the lock ---------------------------------------------------------------------------


@dataclass
class _Locked:
    """What the decision needs of a locked account (a row, not an ORM object: cheaper)."""

    id: int
    name: str
    public_key: str
    jti: str | None
    managed_here: bool


# Built once. A no-op UPDATE: the row lock on PostgreSQL, the write lock on SQLite (see
# resolver.accounts.service.lock_account), and the account's fields in the same statement.
_LOCK = (
    update(Account)
    .where(Account.id == bindparam("account_id"), Account.deleted_at.is_(None))
    .values(updated_at=Account.updated_at)
    .returning(Account.id, Account.name, Account.public_key, Account.jti, Account.seed_sealed)
)


async def _lock_accounts(
    db: Statements, plans: dict[int, _Plan], outcomes: dict[int, Outcome]
) -> dict[int, _Locked]:
    """Lock every account the plans want (in id order, so two batches cannot deadlock);
    plans whose account is gone or not managed here are refused in ``outcomes``."""
    accounts: dict[int, _Locked] = {}
    for account_id in sorted({plan.account_id for plan in plans.values()}):
        for row in await db.rows(_LOCK, {"account_id": account_id}):
            accounts[account_id] = _Locked(*row[:4], managed_here=row[4] is not None)
    for index, plan in plans.items():
        account = accounts.get(plan.account_id)
        if account is None:
            outcomes[index] = PermissionDeniedError(
                f"{plan.name} has no binding to account {plan.wanted_account!r}"
            )
        elif not account.managed_here:
            # Uploaded with nsc push: the keys are not ours (same rule as is_managed_here).
            outcomes[index] = ConflictError(f"account {account.name!r} is managed elsewhere (nsc)")
    return accounts


async def _current_grants(
    conn: AsyncConnection, db: Statements, plans: list[_Plan], now: datetime
) -> list[list[Grant]]:
    """What grants each plan's roles now, read under the lock: a removal committing
    meanwhile either comes before this read (and the access is gone) or after (and finds
    the key issued here to revoke). Two statements at most for the whole batch."""
    account_ids = sorted({plan.account_id for plan in plans})
    user_ids = sorted(
        {plan.person.id for plan in plans if plan.from_scim and plan.person is not None}
    )
    people = await grants_of_users(conn, user_ids, account_ids, now=now) if user_ids else {}
    names = sorted(
        {name for plan in plans if plan.from_claims for name in plan.ask.identity.claims}
    )
    claim_rows: list[Any] = []
    if names:
        params = {"names": names, "now": now, "account_ids": account_ids}
        claim_rows = await db.rows(_CLAIM_GRANTS_IN_ACCOUNTS, params)
    current = []
    for plan in plans:
        grants: list[Grant] = []
        if plan.from_scim and plan.person is not None:
            grants += [g for g in people.get(plan.person.id, []) if g.account_id == plan.account_id]
        if plan.from_claims:
            for row in claim_rows:
                grant = _claim_grant(plan.ask.identity, row)
                if grant is not None and grant.account_id == plan.account_id:
                    grants.append(grant)
        current.append(grants)
    return current


def _as_reread(plan: _Plan) -> list[Grant]:
    """What ``_current_grants`` would find for ``plan``, from the read before the lock."""
    return [
        g
        for g in plan.read_before_lock
        if g.account_id == plan.account_id
        and (
            plan.from_claims
            if g.group_id.startswith(CLAIM_GROUP_PREFIX)
            else plan.from_scim and plan.person is not None
        )
    ]


@dataclass(frozen=True)
class _Key:
    """A scoped signing key, as signing needs it."""

    id: int
    public_key: str
    seed_sealed: bytes


def _keys_row(kind: str, *columns: Any) -> Select[Any]:
    labels = ("account_id", "key", "other", "name", "key_id", "seed")
    return select(
        literal(kind, String).label("kind"),
        *(column.label(label) for column, label in zip(columns, labels, strict=True)),
    )


# Read under the lock, one statement for the batch: what is known here about the callers'
# own public keys in these accounts (revoked; issued, to whom), and the accounts' live
# scoped keys for the role sets asked for. Columns: kind, account, public key or role set,
# the issued key's user or the scoped key's public key, the issued key's name, the scoped
# key's id and sealed seed.
_KEYS_UNDER_LOCK = union_all(
    _keys_row(
        "revoked",
        Revocation.account_id,
        Revocation.public_key,
        _typed_null(IssuedUserKey.user_id),
        _typed_null(IssuedUserKey.name),
        _typed_null(AccountSigningKey.id),
        _typed_null(AccountSigningKey.seed_sealed),
    ).where(
        Revocation.account_id.in_(bindparam("account_ids", expanding=True)),
        Revocation.public_key.in_(bindparam("public_keys", expanding=True)),
    ),
    _keys_row(
        "issued",
        IssuedUserKey.account_id,
        IssuedUserKey.public_key,
        IssuedUserKey.user_id,
        IssuedUserKey.name,
        _typed_null(AccountSigningKey.id),
        _typed_null(AccountSigningKey.seed_sealed),
    )
    .where(
        IssuedUserKey.public_key.in_(bindparam("public_keys", expanding=True)),
        IssuedUserKey.account_id.in_(bindparam("account_ids", expanding=True)),
    )
    .distinct(),
    _keys_row(
        "scoped",
        AccountSigningKey.account_id,
        AccountSigningKey.role_set,
        AccountSigningKey.public_key,
        _typed_null(IssuedUserKey.name),
        AccountSigningKey.id,
        AccountSigningKey.seed_sealed,
    ).where(
        AccountSigningKey.account_id.in_(bindparam("account_ids", expanding=True)),
        AccountSigningKey.role_set.in_(bindparam("role_sets", expanding=True)),
        # Rotated keys sign nothing new (see ``resolver.accounts.rotation``).
        AccountSigningKey.superseded_at.is_(None),
        AccountSigningKey.retired_at.is_(None),
    ),
)


@dataclass
class _KnownKeys:
    revoked: set[tuple[int, str]] = field(default_factory=set)
    #: (account, public key) → who it was issued to: (user id, None) or (None, workload).
    owners: dict[tuple[int, str], set[tuple[str | None, str | None]]] = field(default_factory=dict)
    #: (account, role set) → its live scoped key.
    scoped: dict[tuple[int, str], _Key] = field(default_factory=dict)


async def _read_keys(db: Statements, plans: dict[int, _Plan]) -> _KnownKeys:
    params = {
        "account_ids": sorted({p.account_id for p in plans.values()}),
        "public_keys": sorted(
            {p.ask.request.public_key for p in plans.values() if p.ask.request.public_key}
        ),
        "role_sets": sorted({role_set_name(p.roles) for p in plans.values()}),
    }
    known = _KnownKeys()
    for kind, account_id, key, other, name, key_id, seed in await db.rows(_KEYS_UNDER_LOCK, params):
        if kind == "revoked":
            known.revoked.add((account_id, key))
        elif kind == "issued":
            # A person's row is theirs whatever its name; a workload's is known by name.
            known.owners.setdefault((account_id, key), set()).add(
                (other, None) if other is not None else (None, name)
            )
        else:
            known.scoped[(account_id, key)] = _Key(key_id, other, seed)
    return known


def _owner(plan: _Plan) -> tuple[str | None, str | None]:
    # A person is known by their SCIM id; a workload by its name.
    if plan.person is not None:
        return plan.person.id, None
    return None, plan.name


def _refuse_known_keys(
    plans: dict[int, _Plan], outcomes: dict[int, Outcome], known: _KnownKeys
) -> None:
    """Refuse a caller's public key revoked in the account or issued there to someone else
    (``check_public_key``'s rule), including to someone else earlier in this batch."""
    owners = known.owners
    for index, plan in plans.items():
        if plan.ask.request.public_key is None:
            continue  # a key pair made here: nobody else can hold it
        where = (plan.account_id, plan.ask.request.public_key)
        mine = _owner(plan)
        holders = owners.setdefault(where, set())
        try:
            refuse_public_key(revoked=where in known.revoked, taken=bool(holders - {mine}))
        except ConflictError as refusal:
            outcomes[index] = refusal
        else:
            holders.add(mine)  # later asks in this batch see it as issued


async def exchange_many(
    batch: Batch,
    sealer: Sealer,
    settings: Settings,
    asks: list[Ask],
    *,
    now: int | None = None,
) -> list[Outcome]:
    """Decide, sign and record the user JWTs of several asks in one transaction.

    Every ask is decided on its own (one's refusal changes nothing for another); what they
    share is the statements: one read of grants before the lock, each account locked once,
    one re-read under the lock, one flush. A refusal is a ``PermissionDeniedError`` (who
    they are is known, what they want is not theirs), ``AuthenticationError`` (the token
    ran out), ``ConflictError`` (a key that cannot be used) or ``ValidationError`` (a bad
    request) in the ask's place; nothing is written for a refused ask. The caller owns the
    transaction (``batch``).
    """
    when = int(time.time()) if now is None else now
    moment = datetime.now(UTC)
    outcomes: dict[int, Outcome] = {}
    for index, ask in enumerate(asks):
        try:
            _check_request(ask.request, ask.identity, when)
        except ResolverError as exc:
            outcomes[index] = exc
    # Everything that can be read before the account lock is read here: on SQLite the lock
    # is the database's one write lock, so what happens under it decides the throughput.
    pending = [i for i in range(len(asks)) if i not in outcomes]
    # Core, not the ORM: the ORM's per-statement work (more than the statement's own, on
    # this path) buys nothing for rows that are read, not mapped. On SQLite they skip
    # SQLAlchemy's execution layer too (resolver.db.statements).
    db = batch.statements
    version = db.data_version()  # before the read: a commit after it changes it
    identities = [asks[i].identity for i in pending]
    found = await _identities_grants(db, identities, moment, batch.memo, version)
    plans: dict[int, _Plan] = {}
    for index, grants in zip(pending, found, strict=True):
        try:
            if isinstance(grants, ResolverError):
                raise grants
            plans[index] = await _plan(batch, settings, asks[index], *grants, when)
        except ResolverError as exc:
            outcomes[index] = exc
    if not plans:
        return [outcomes[i] for i in range(len(asks))]

    accounts = await _lock_accounts(db, plans, outcomes)
    plans = {i: p for i, p in plans.items() if i not in outcomes}
    if version is not None and version == db.data_version():
        # SQLite, and no other connection committed since before the first read (the lock
        # now stops anyone from doing so): a re-read would read the same rows.
        current = [_as_reread(plan) for plan in plans.values()]
    else:
        conn = await (await batch.session()).connection()
        current = await _current_grants(conn, db, list(plans.values()), moment)
    used: dict[int, list[Grant]] = {}
    for (index, plan), grants in zip(plans.items(), current, strict=True):
        if not set(plan.role_names) <= {g.role for g in grants}:
            account = accounts[plan.account_id]
            outcomes[index] = PermissionDeniedError(
                f"{plan.name} has no binding to account {account.name!r}"
            )
        else:
            used[index] = [g for g in grants if g.role in plan.role_names]
    plans = {i: p for i, p in plans.items() if i in used}
    known = await _read_keys(db, plans) if plans else _KnownKeys()
    _refuse_known_keys(plans, outcomes, known)
    plans = {i: p for i, p in plans.items() if i not in outcomes}
    if plans:
        keys = await _scoped_keys(batch, sealer, settings, plans, accounts, known.scoped)
        seeds = batch.memo.seeds if batch.memo is not None else {}
        outcomes |= await _sign_and_record(
            db, sealer, plans, used, accounts, keys, when, seeds=seeds
        )
    return [outcomes[i] for i in range(len(asks))]


async def _scoped_keys(
    batch: Batch,
    sealer: Sealer,
    settings: Settings,
    plans: dict[int, _Plan],
    accounts: dict[int, _Locked],
    live: dict[tuple[int, str], _Key],
) -> dict[tuple[int, str], tuple[_Key, bool]]:
    """(account, role set) → (its scoped key, made now). A set's first issue makes its key
    here, under the lock, so two first issues cannot both make one; an account that got
    one is re-signed (once), because a user JWT signed by a key the served account JWT
    does not list cannot connect."""
    wanted = {(p.account_id, role_set_name(p.roles)): p for p in plans.values()}
    found = {where: (live[where], False) for where in wanted if where in live}
    changed: dict[int, Account] = {}
    for where, plan in wanted.items():
        if where not in found:
            # The rare path (a role set's first issue in an account): the ORM's.
            session = await batch.session()
            account = changed.get(plan.account_id) or await session.get_one(
                Account, plan.account_id
            )
            key, created = await scoped_key_for(
                session, sealer, account, plan.role_names, roles=plan.roles
            )
            found[where] = (_Key(key.id, key.public_key, key.seed_sealed), created)
            if created:
                changed[account.id] = account
    for account in changed.values():
        await resign_account(await batch.session(), sealer, settings, account, force=True)
        accounts[account.id].jti = account.jti  # what the answer says to wait for
    return found


async def _sign_and_record(
    db: Statements,
    sealer: Sealer,
    plans: dict[int, _Plan],
    used: dict[int, list[Grant]],
    accounts: dict[int, _Locked],
    keys: dict[tuple[int, str], tuple[_Key, bool]],
    when: int,
    *,
    seeds: dict[int, bytes],
) -> dict[int, IssuedCredentials]:
    """Sign each plan's user JWT with its scoped key; record the issued keys, the links
    of claim-granted ones and the audit rows, each kind in one statement."""
    done: dict[int, IssuedCredentials] = {}
    rows, audit, claim_bindings = [], [], []
    for index, plan in plans.items():
        account = accounts[plan.account_id]
        key, created = keys[(plan.account_id, role_set_name(plan.roles))]
        if key.id not in seeds:
            seeds[key.id] = sealer.open(key.seed_sealed)
        groups = tuple(sorted({g.group_name for g in used[index]}))
        ask = plan.ask
        user_id = plan.person.id if plan.person is not None else None
        signed = sign_scoped(
            seeds[key.id],
            account.public_key,
            name=plan.name,
            tags=[group_tag(g) for g in groups],
            public_key=ask.request.public_key,
            expires_at=when + plan.lifetime,
            now=when,
        )
        row = issued_key_row(
            account.id, signed.payload, name=plan.name, signing_key=key.public_key, user_id=user_id
        )
        rows.append(row)
        # SCIM has no members for a claim binding: this link is how ending it finds the key.
        claim_bindings.append(
            sorted({g.binding_id for g in used[index] if g.group_id.startswith(CLAIM_GROUP_PREFIX)})
        )
        actor = Actor(name=plan.name, request_id=ask.request_id, source=ask.source)
        details = {
            "via": ask.via,
            "idp": ask.identity.idp,
            "subject": ask.identity.subject,
            "user_id": user_id,
            "account": account.name,
            "user_key": row["public_key"],
            "roles": plan.role_names,
            "groups": list(groups),
            "bindings": sorted({g.binding_id for g in used[index]}),
            "signing_key": key.public_key,
            "expires_at": row["expires_at"],
        }
        audit.append(
            AuditRow(
                actor,
                "credentials.issue",
                account.public_key,
                details,
                plan.name,
                account.public_key,
            )
        )
        done[index] = IssuedCredentials(
            jwt=signed.jwt,
            creds=signed.creds,
            account_name=account.name,
            account_public_key=account.public_key,
            account_jti=account.jti or "",
            name=plan.name,
            roles=tuple(plan.role_names),
            groups=groups,
            expires_at=int(row["expires_at"] or when + plan.lifetime),
            new_signing_key=created,
            user_public_key=row["public_key"],
        )
    ids = await record_issued_keys(db, rows, ids=any(claim_bindings))
    links = [
        {"issued_key_id": issued_id, "binding_id": binding}
        for issued_id, bindings in zip(ids, claim_bindings, strict=False)
        for binding in bindings
    ]
    if links:
        await db.execute_many(_INSERT_LINKS, links)
    await record_all(db, audit)
    return done


_INSERT_LINKS = insert(IssuedKeyClaim)


def refusal_actor(
    identity: Identity | None, *, source: str | None, request_id: str | None
) -> Actor:
    """Who to name in the audit row of a refused request: the identity if it verified."""
    if identity is None:
        return Actor(name="anonymous", request_id=request_id, source=source)
    return Actor(
        name=identity.user_value or identity.workload_name or f"{identity.idp}:{identity.subject}",
        request_id=request_id,
        source=source,
    )


async def refused_user(session: AsyncSession, identity: Identity | None) -> str | None:
    """The ``user`` of a refusal's audit row: the SCIM userName of the person the token
    names (so ``?user=alice`` finds her refusals next to her credentials, whichever claim
    the IdP maps), else the token's own value, or the workload's name. One read, on the
    refusal path only."""
    if identity is None:
        return None
    named = _user_key(identity)
    if named is None:
        return identity.workload_name
    attribute, value = named
    found = await session.scalar(
        select(User.user_name).where(_PERSON_COLUMNS[attribute] == value).limit(1)
    )
    return found or identity.user_value
