from __future__ import annotations

import re

from resolver.accounts.presenting import cache_control, decoded_text, if_none_match
from resolver.natsjwt import account_claims, encode, new_keypair


def test_cache_control_follows_exp_and_is_never_negative() -> None:
    assert cache_control(1_000 + 7_200, now=1_000).startswith("max-age=7200,")
    assert "stale-if-error=3600" in cache_control(1_000 + 7_200, now=1_000)
    # Shortly before expiry the stale allowance shrinks with it.
    assert cache_control(1_030, now=1_000) == (
        "max-age=30, stale-while-revalidate=30, stale-if-error=30"
    )
    for expired in (cache_control(999, now=1_000), cache_control(1_000, now=1_000)):
        assert expired == "max-age=0, must-revalidate"
    # No exp: revalidate every time (the legacy server sent a large negative max-age).
    assert cache_control(None, now=1_000) == "no-cache"
    for exp in (None, 0, 500, 1_000, 10**10):
        assert not re.search(r"-\d", cache_control(exp or None, now=1_000))


def test_if_none_match() -> None:
    assert if_none_match('"J1"', "J1")
    assert if_none_match('"J0", W/"J1"', "J1")
    assert if_none_match("*", "J1")
    assert not if_none_match('"J2"', "J1")
    assert not if_none_match("J1", "J1")  # an ETag is quoted
    assert not if_none_match(None, "J1")


def test_decoded_text_shows_header_claims_and_dates() -> None:
    key = new_keypair("account")[0]
    token = encode(
        account_claims("a <b>", key, exp=1_800_000_000),
        new_keypair("operator")[1],
        iat=1_700_000_000,
    )
    text = decoded_text(token)
    header, claims, signature = text.split("\r\n")
    assert '"typ": "JWT"' in header
    assert '"iat": 1700000000 (2023-11-14 22:13:20 UTC),' in claims
    assert '"exp": 1800000000 (2027-01-15 08:00:00 UTC),' in claims
    assert '"name": "a <b>"' in claims  # readable, not \u003c-escaped
    assert signature.strip() == token.split(".")[2]
