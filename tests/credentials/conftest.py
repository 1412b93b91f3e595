"""Fixtures for credential tests: local IdP stand-ins, a service trusting them, a policy world.

The IdPs are the one fake (tests/support/idp.py): real keys made here, a real JWKS over
HTTP. Everything else is the product: real database, real nkeys, the real app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import create_account
from resolver.app import create_app
from resolver.config import CredentialSettings, FrontProxySettings, IdpSettings, Settings
from resolver.db.models import Binding, Group, GroupMember, Role, User
from resolver.sealing import Sealer
from tests.accounts.conftest import (  # noqa: F401  (fixtures)
    ADMIN,
    bearer,
    operator,
    sealer,
    sessions,
    tokens,
)
from tests.support.idp import AUDIENCE, IdpStandIn, running_idp

ALB_HEADER = "x-amzn-oidc-data"
ALB_SIGNER = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/nats/abc"
PROXY_HEADER = "X-Forwarded-Email"

WRITER = {"publish": ["orders.>"], "subscribe": ["orders.>"], "max_ttl": "2h"}
READER = {"subscribe": ["ops.>"], "max_ttl": "8h"}
DEPLOYER = {"publish": ["deploy.>"], "max_ttl": "1h"}


@pytest.fixture(scope="session")
def idp() -> Iterator[IdpStandIn]:
    with running_idp("corp") as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def other_idp() -> Iterator[IdpStandIn]:
    """A second trusted IdP (several may be configured), matching users by userName."""
    with running_idp("partner") as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def alb() -> Iterator[IdpStandIn]:
    """An AWS ALB look-alike: one PEM per kid at a key URL, ES256, assertions in a header."""
    with running_idp("alb") as stand_in:
        yield stand_in


def idp_settings(stand_in: IdpStandIn, **overrides: Any) -> IdpSettings:
    return replace(
        IdpSettings(
            name=stand_in.name,
            issuer=stand_in.issuer,
            audience=(AUDIENCE,),
            jwks_url=stand_in.jwks_url,
            algorithms=("RS256", "ES256"),
            user_claim="email",
            user_attribute="email",
        ),
        **overrides,
    )


def alb_settings(alb: IdpStandIn) -> IdpSettings:
    """How an AWS ALB is configured: its header, key URL, ES256 and its own ARN as signer."""
    return idp_settings(
        alb,
        jwks_url="",
        key_url=alb.key_url,
        audience=(),
        algorithms=("ES256",),
        header=ALB_HEADER,
        signer=ALB_SIGNER,
    )


@pytest.fixture
def settings(
    settings: Settings, idp: IdpStandIn, other_idp: IdpStandIn, alb: IdpStandIn
) -> Settings:
    """The shared settings, trusting three issuers and a plain header from 127.0.0.1."""
    return replace(
        settings,
        idp=(
            idp_settings(idp, grace_seconds=300),
            idp_settings(other_idp, user_claim="preferred_username", user_attribute="userName"),
            alb_settings(alb),
        ),
        credentials=CredentialSettings(jwks_refetch_seconds=0),
        front_proxy=FrontProxySettings(
            identity_header=PROXY_HEADER, trusted_proxies=("127.0.0.0/8",)
        ),
    )


@pytest.fixture
async def client(
    settings: Settings, operator: Any, aiohttp_client: Callable[..., Any]
) -> TestClient:
    return await aiohttp_client(create_app(settings))


@dataclass
class World:
    users: dict[str, str]
    groups: dict[str, str]


@pytest.fixture
async def world(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings, operator: Any
) -> World:
    """ORDERS and OPS; eng → ORDERS writer, ops → OPS reader, token claim
    ``roles=ci-deployer`` → ORDERS deployer. alice: eng; olga: eng and ops; dave: eng but
    inactive; carol: no group."""
    async with sessions() as session, session.begin():
        orders = await create_account(session, sealer, settings, name="ORDERS", actor=ADMIN)
        ops = await create_account(session, sealer, settings, name="OPS", actor=ADMIN)
        roles = {
            name: Role(name=name, spec=spec)
            for name, spec in (("writer", WRITER), ("reader", READER), ("deployer", DEPLOYER))
        }
        users = {
            name: User(
                user_name=name,
                user_name_key=name.casefold(),
                email=f"{name}@example.com",
                active=name != "dave",
                resource={
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": name,
                    "emails": [{"value": f"{name}@example.com", "primary": True}],
                    "active": name != "dave",
                },
            )
            for name in ("alice", "olga", "dave", "carol")
        }
        groups = {name: Group(display_name=name, display_name_key=name) for name in ("eng", "ops")}
        session.add_all([*roles.values(), *users.values(), *groups.values()])
        await session.flush()
        members = [("eng", "alice"), ("eng", "olga"), ("ops", "olga"), ("eng", "dave")]
        session.add_all(GroupMember(group_id=groups[g].id, user_id=users[u].id) for g, u in members)
        session.add_all(
            [
                Binding(
                    account_id=orders.id, role_id=roles["writer"].id, group_id=groups["eng"].id
                ),
                Binding(account_id=ops.id, role_id=roles["reader"].id, group_id=groups["ops"].id),
                Binding(
                    account_id=orders.id,
                    role_id=roles["deployer"].id,
                    claim_name="roles",
                    claim_value="ci-deployer",
                ),
            ]
        )
    return World(
        users={name: user.id for name, user in users.items()},
        groups={name: group.id for name, group in groups.items()},
    )


@pytest.fixture
def pem_file(tmp_path: Path, idp: IdpStandIn) -> Path:
    path = tmp_path / "proxy.pem"
    path.write_bytes(idp.key("ES256").public_pem())
    return path
