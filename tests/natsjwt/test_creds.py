"""Creds files: exact nsc layout and round trip."""

from __future__ import annotations

import pytest

from resolver.natsjwt import (
    CredsError,
    account_claims,
    encode,
    format_creds,
    new_keypair,
    parse_creds,
    user_claims,
)


@pytest.fixture
def user() -> tuple[str, bytes]:
    upk, useed = new_keypair("user")
    _, aseed = new_keypair("account")
    return encode(user_claims("u", upk), aseed), useed


def test_format_is_exactly_nsc(user) -> None:
    token, seed = user
    assert format_creds(token, seed) == (
        "-----BEGIN NATS USER JWT-----\n"
        f"{token}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.decode()}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def test_round_trip(user) -> None:
    token, seed = user
    assert parse_creds(format_creds(token, seed)) == (token, seed)


def test_parse_accepts_crlf_and_bytes(user) -> None:
    token, seed = user
    text = format_creds(token, seed).replace("\n", "\r\n").encode()
    assert parse_creds(text) == (token, seed)


def test_format_refuses_mismatched_seed(user) -> None:
    token, _ = user
    _, other = new_keypair("user")
    with pytest.raises(CredsError, match="does not match") as info:
        format_creds(token, other)
    assert other.decode() not in str(info.value)


def test_format_refuses_non_user_seed_and_jwt(user) -> None:
    token, seed = user
    _, aseed = new_keypair("account")
    with pytest.raises(CredsError, match="not a user seed"):
        format_creds(token, aseed)
    _, oseed = new_keypair("operator")
    apk, _ = new_keypair("account")
    with pytest.raises(CredsError, match="expected a user JWT"):
        format_creds(encode(account_claims("a", apk), oseed), seed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-----BEGIN NATS USER JWT-----\nabc.def.ghi\n------END NATS USER JWT------\n",
        "-----BEGIN NATS USER JWT-----\nnotajwt\n------END NATS USER JWT------\n"
        "-----BEGIN USER NKEY SEED-----\nSUAAA\n------END USER NKEY SEED------\n",
    ],
)
def test_parse_rejects_incomplete(text) -> None:
    with pytest.raises(CredsError):
        parse_creds(text)


def test_parse_rejects_non_user_seed(user) -> None:
    _, aseed = new_keypair("account")
    text = format_creds(*user).replace(user[1].decode(), aseed.decode())
    with pytest.raises(CredsError, match="not a user seed") as info:
        parse_creds(text)
    assert aseed.decode() not in str(info.value)
