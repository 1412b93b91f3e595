"""IdP token and proxy assertion verification against local IdP stand-ins (real keys, real
JWKS over HTTP): what verifies, what is refused and why, how keys are fetched and cached."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest

from resolver.config import CredentialSettings, FrontProxySettings, Settings
from resolver.credentials.identity import PROXY_IDP, IdentityVerifier, InvalidTokenError
from resolver.errors import AuthenticationError, ConfigError
from tests.credentials.conftest import (
    ALB_HEADER,
    ALB_SIGNER,
    PROXY_HEADER,
    alb_settings,
    idp_settings,
)
from tests.support.idp import IdpStandIn, make_key


def verifier_for(*idps: object, refetch: int = 0, **proxy: object) -> IdentityVerifier:
    settings = Settings(
        idp=tuple(idps),  # type: ignore[arg-type]
        credentials=CredentialSettings(jwks_refetch_seconds=refetch, jwks_timeout=2.0),
        front_proxy=FrontProxySettings(**proxy),  # type: ignore[arg-type]
    )
    return IdentityVerifier(settings)


@pytest.fixture
def verifier(idp: IdpStandIn, other_idp: IdpStandIn) -> IdentityVerifier:
    return verifier_for(idp_settings(idp, grace_seconds=60), idp_settings(other_idp))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_valid_token_names_the_person(
    verifier: IdentityVerifier, idp: IdpStandIn, algorithm: str
) -> None:
    token = idp.token("00u1", algorithm=algorithm, email="Alice@Example.com", ttl=300)
    identity = await verifier.verify_token(token)
    assert identity.idp == "corp"
    assert identity.subject == "00u1"
    assert identity.user_value == "Alice@Example.com"
    assert identity.user_attribute == "email"
    assert identity.grace_seconds == 60
    assert abs(identity.expires_at - (time.time() + 300)) < 5
    assert identity.claims["email"] == "Alice@Example.com"


async def test_tokens_go_to_the_issuer_they_name(
    verifier: IdentityVerifier, idp: IdpStandIn, other_idp: IdpStandIn
) -> None:
    identity = await verifier.verify_token(other_idp.token("p-7", email="x@partner.example"))
    assert identity.idp == "partner"
    # A token naming one trusted issuer but signed by another is refused.
    forged = idp.token("p-7", issuer=other_idp.issuer)
    with pytest.raises(InvalidTokenError, match="signing key"):
        await verifier.verify_token(forged)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ({"ttl": -120}, "expired"),
        ({"now": int(time.time()) + 3_600}, "not valid yet"),
        ({"audience": "api://someone-else"}, "audience"),
        ({"audience": None}, "lacks a required claim|audience"),
        ({"issuer": "https://evil.example"}, "not a trusted IdP"),
        ({"subject": None}, "lacks a required claim"),
    ],
)
async def test_tokens_that_do_not_verify_are_refused_with_the_reason(
    verifier: IdentityVerifier, idp: IdpStandIn, spoil: dict[str, object], message: str
) -> None:
    token = idp.token(**{"subject": "00u1", **spoil})  # type: ignore[arg-type]
    with pytest.raises(InvalidTokenError, match=message) as info:
        await verifier.verify_token(token)
    assert token not in str(info.value)


async def test_leeway_tolerates_small_clock_skew(
    verifier: IdentityVerifier, idp: IdpStandIn
) -> None:
    # Expired 10 s ago, leeway 30 s: accepted (the exchange then refuses to issue on it).
    identity = await verifier.verify_token(idp.token("00u1", ttl=-10))
    assert identity.expires_at < time.time()


async def test_a_key_the_idp_never_published_is_refused(
    verifier: IdentityVerifier, idp: IdpStandIn
) -> None:
    rogue = make_key("RS256")
    with pytest.raises(InvalidTokenError, match="not published"):
        await verifier.verify_token(idp.token("00u1", key=rogue))
    # The same kid as a real key, signed by another key: the signature fails.
    real = idp.key("RS256")
    impostor = make_key("RS256", kid=real.kid)
    with pytest.raises(InvalidTokenError, match="signature"):
        await verifier.verify_token(idp.token("00u1", key=impostor))


async def test_algorithm_confusion_is_refused(verifier: IdentityVerifier, idp: IdpStandIn) -> None:
    real = idp.key("RS256")
    # HS256 "signed" with the RSA public key as the secret: the classic confusion attack.
    payload = {"iss": idp.issuer, "sub": "00u1", "aud": "api://nats-iam-resolver"}
    payload["exp"] = int(time.time()) + 60
    token = jwt.encode(
        payload,
        "a-shared-secret-long-enough-for-hs256",
        algorithm="HS256",
        headers={"kid": real.kid},
    )
    with pytest.raises(InvalidTokenError, match="algorithm"):
        await verifier.verify_token(token)
    unsigned = jwt.encode(payload, None, algorithm="none", headers={"kid": real.kid})
    with pytest.raises(InvalidTokenError, match="algorithm"):
        await verifier.verify_token(unsigned)


async def test_an_algorithm_outside_the_idps_list_is_refused(idp: IdpStandIn) -> None:
    only_rs = verifier_for(idp_settings(idp, algorithms=("RS256",)))
    with pytest.raises(InvalidTokenError, match="algorithm"):
        await only_rs.verify_token(idp.token("00u1", algorithm="ES256"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-jwt",
        "a.b.c",
        "x" * 20_000,
        "a.b",
        "a.b.c.d",
        "e30.e30!.c2ln",  # a character outside base64url
        "e30.e.c2ln",  # a segment of impossible length
        f"{_b64(b'[1]')}.e30.c2ln",  # a header that is not an object
        f"e30.{_b64(b'{')}.c2ln",  # claims that are not JSON
        f"e30.{_b64(bytes([0xFF, 0xFE]))}.c2ln",  # not UTF-8
        f"e30.{_b64(b'[' * 5000 + b']' * 5000)}.c2ln",  # nested deeper than json allows
    ],
)
async def test_garbage_is_refused(verifier: IdentityVerifier, garbage: str) -> None:
    with pytest.raises(InvalidTokenError):
        await verifier.verify_token(garbage)


async def test_keys_are_cached_and_a_rotation_is_picked_up(idp: IdpStandIn) -> None:
    verifier = verifier_for(idp_settings(idp), refetch=0)
    await verifier.verify_token(idp.token("00u1"))
    fetched = idp.fetches
    for _ in range(5):
        await verifier.verify_token(idp.token("00u1"))
    assert idp.fetches == fetched, "a cached JWKS is not fetched again"
    rotated = idp.rotate("RS256")
    identity = await verifier.verify_token(idp.token("00u2", key=rotated))
    assert identity.subject == "00u2"
    assert idp.fetches == fetched + 1, "an unknown kid refetches once"


async def test_unknown_kids_refetch_at_most_once_per_interval(idp: IdpStandIn) -> None:
    verifier = verifier_for(idp_settings(idp), refetch=3_600)
    await verifier.verify_token(idp.token("00u1"))
    fetched = idp.fetches
    for _ in range(10):
        with pytest.raises(InvalidTokenError, match="not published"):
            await verifier.verify_token(idp.token("00u1", key=make_key("RS256")))
    # The first fetch started the cooldown: forged kids cause no requests to the IdP.
    assert idp.fetches == fetched


async def test_known_keys_keep_working_while_the_idp_is_down(tmp_path: Path) -> None:
    flaky = IdpStandIn(name="flaky").start()
    try:
        settings = Settings(
            idp=(idp_settings(flaky),),
            credentials=CredentialSettings(
                jwks_cache_seconds=1, jwks_refetch_seconds=0, jwks_timeout=1.0
            ),
        )
        verifier = IdentityVerifier(settings)
        await verifier.verify_token(flaky.token("00u1"))
        token = flaky.token("00u1")
    finally:
        flaky.stop()
    await asyncio.sleep(1.1)
    # The cache has expired and the JWKS cannot be fetched: the known key still works.
    identity = await verifier.verify_token(token)
    assert identity.subject == "00u1"
    with pytest.raises(InvalidTokenError, match="could not be fetched"):
        await verifier.verify_token(flaky.token("00u1", key=make_key("RS256")))


async def test_alb_style_assertions_are_verified_from_their_header(alb: IdpStandIn) -> None:
    verifier = verifier_for(alb_settings(alb))
    assertion = alb.token(
        "alb-sub",
        algorithm="ES256",
        audience=None,
        email="alice@example.com",
        headers={"signer": ALB_SIGNER},
    )
    identity = await verifier.from_headers({ALB_HEADER: assertion}, "10.0.0.9", None)
    assert (identity.idp, identity.user_value) == ("alb", "alice@example.com")
    fetched = alb.pem_fetches
    await verifier.from_headers({ALB_HEADER: assertion}, "10.0.0.9", None)
    assert alb.pem_fetches == fetched, "a key id's PEM is fetched once"
    other_lb = alb.token(
        "alb-sub", algorithm="ES256", audience=None, headers={"signer": "arn:other"}
    )
    with pytest.raises(InvalidTokenError, match="signer"):
        await verifier.from_headers({ALB_HEADER: other_lb}, "10.0.0.9", None)
    # An invalid assertion is refused even when a bearer token is there too.
    with pytest.raises(InvalidTokenError):
        await verifier.from_headers({ALB_HEADER: "garbage"}, "10.0.0.9", "something")


async def test_a_pem_public_key_file_verifies_a_fixed_key_proxy(
    idp: IdpStandIn, pem_file: Path
) -> None:
    verifier = verifier_for(
        idp_settings(idp, jwks_url="", public_key_file=pem_file, header="X-Identity-Assertion")
    )
    token = idp.token("p1", algorithm="ES256", email="alice@example.com")
    identity = await verifier.from_headers({"x-identity-assertion": token}, None, None)
    assert identity.subject == "p1"
    with pytest.raises(InvalidTokenError, match="signature"):
        await verifier.from_headers(
            {"x-identity-assertion": idp.token("p1", key=make_key("ES256"), algorithm="ES256")},
            None,
            None,
        )


async def test_a_bad_pem_file_stops_startup(idp: IdpStandIn, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="PEM"):
        verifier_for(idp_settings(idp, jwks_url="", public_key_file=bad))
    with pytest.raises(ConfigError, match="cannot be read"):
        verifier_for(idp_settings(idp, jwks_url="", public_key_file=tmp_path / "missing.pem"))


async def test_plain_identity_header_only_from_trusted_proxies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verifier = verifier_for(identity_header=PROXY_HEADER, trusted_proxies=("10.1.0.0/16",))
    identity = await verifier.from_headers({PROXY_HEADER.lower(): "alice"}, "10.1.2.3", None)
    assert (identity.idp, identity.user_value, identity.expires_at) == (PROXY_IDP, "alice", None)
    with pytest.raises(AuthenticationError, match="token is required"):
        await verifier.from_headers({PROXY_HEADER.lower(): "alice"}, "192.0.2.7", None)
    assert "not a trusted proxy address" in caplog.text


async def test_plain_identity_header_is_off_by_default(idp: IdpStandIn) -> None:
    verifier = verifier_for(idp_settings(idp))
    with pytest.raises(AuthenticationError, match="token is required"):
        await verifier.from_headers({"x-forwarded-email": "alice"}, "127.0.0.1", None)


async def test_no_idp_configured_says_so() -> None:
    verifier = verifier_for()
    with pytest.raises(AuthenticationError, match="no identity provider"):
        await verifier.from_headers({}, "127.0.0.1", None)
    assert not verifier.configured


async def test_workload_name_comes_from_its_claim(idp: IdpStandIn) -> None:
    verifier = verifier_for(replace(idp_settings(idp), workload_name_claim="azp"))
    identity = await verifier.verify_token(idp.token("svc-1", azp="deploy-bot", roles=["a"]))
    assert identity.workload_name == "corp:deploy-bot"
    assert identity.claim_values("roles") == {"a"}
    assert identity.user_value is None
