"""encode/decode: round trips, tampering, rejections, jti, Go escaping."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from resolver.natsjwt import (
    ALGORITHM,
    HEADER_JSON,
    MAX_TOKEN_SIZE,
    JWTClaimsError,
    JWTClaimTypeError,
    JWTError,
    JWTExpiredError,
    JWTFormatError,
    JWTKeyTypeError,
    JWTSignatureError,
    JWTTooLargeError,
    JWTVersionError,
    account_claims,
    compute_jti,
    decode,
    encode,
    go_json_dumps,
    new_keypair,
    operator_claims,
    prepare_claims,
    public_key_of,
    sign_payload,
    user_claims,
)

IAT = 1_700_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, bytes]]:
    return {kind: new_keypair(kind) for kind in ("operator", "account", "user", "server")} | {
        "signer": new_keypair("operator"),
        "account_signer": new_keypair("account"),
    }


def _user_token(keys: dict[str, tuple[str, bytes]], **kwargs: object) -> str:
    upk, _ = keys["user"]
    _, aseed = keys["account"]
    return encode(user_claims("alice", upk, **kwargs), aseed, iat=IAT)  # type: ignore[arg-type]


def _resign(token: str, seed: bytes, edit: object) -> str:
    """Decode a token's payload, let ``edit`` change it, sign it again unchecked."""
    claims = json.loads(_unb64(token.split(".")[1]))
    edit(claims)  # type: ignore[operator]
    return sign_payload(go_json_dumps(claims), seed)


def test_encode_sets_iss_iat_jti_and_standard_order(keys) -> None:
    upk, _ = keys["user"]
    apk, aseed = keys["account"]
    token = encode(
        {"sub": upk, "name": "alice", "exp": IAT + 60, "nats": {"type": "user"}}, aseed, iat=IAT
    )
    decoded = decode(token, expected_type="user")
    assert list(decoded.claims) == ["exp", "jti", "iat", "iss", "name", "sub", "nats"]
    assert decoded.issuer == apk == public_key_of(aseed)
    assert decoded.iat == IAT
    assert decoded.exp == IAT + 60
    assert decoded.subject == upk
    assert decoded.name == "alice"
    assert decoded.jti == compute_jti(decoded.claims)
    assert decoded.claims["nats"] == {"type": "user", "version": 2}
    assert decoded.header == {"typ": "JWT", "alg": "ed25519-nkey"}


def test_header_bytes_are_exactly_nats(keys) -> None:
    token = _user_token(keys)
    assert _unb64(token.split(".")[0]) == HEADER_JSON == b'{"typ":"JWT","alg":"ed25519-nkey"}'
    assert "=" not in token


def test_iat_defaults_to_now(keys) -> None:
    import time

    upk, _ = keys["user"]
    _, aseed = keys["account"]
    before = int(time.time())
    decoded = decode(encode(user_claims("a", upk), aseed))
    assert before <= decoded.iat <= int(time.time())


def test_jti_is_stable_and_covers_only_standard_fields(keys) -> None:
    one = decode(_user_token(keys))
    two = decode(_user_token(keys))
    # Ed25519 is deterministic: same claims + same iat give the same token.
    assert one.token == two.token
    other_nats = decode(_user_token(keys, bearer_token=True))
    assert other_nats.jti == one.jti  # ClaimsData.hash() does not cover "nats"
    upk, _ = keys["user"]
    _, aseed = keys["account"]
    later = decode(encode(user_claims("alice", upk), aseed, iat=IAT + 1))
    assert later.jti != one.jti


def test_compute_jti_matches_manual_hash() -> None:
    import hashlib

    claims = {"iat": 5, "iss": "I", "name": "n<", "sub": "S", "jti": "ignored", "nats": {"x": 1}}
    data = b'{"iat":5,"iss":"I","name":"n\\u003c","sub":"S"}'
    expected = base64.b32encode(hashlib.new("sha512_256", data).digest()).decode().rstrip("=")
    assert compute_jti(claims) == expected


def test_go_escaping_in_token(keys) -> None:
    upk, _ = keys["user"]
    _, aseed = keys["account"]
    token = encode(user_claims("a<b>&c\u2028d\u2029é", upk), aseed, iat=IAT)
    payload = _unb64(token.split(".")[1])
    assert b'"name":"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029\xc3\xa9"' in payload
    assert decode(token).name == "a<b>&c\u2028d\u2029é"


def test_go_json_dumps_matches_go() -> None:
    value = {"b": [1, -1, True, False, None], "a": '\n\t"\\\x01\x7f<>&', "é": {}}
    assert go_json_dumps(value) == (
        b'{"b":[1,-1,true,false,null],"a":"\\n\\t\\"\\\\\\u0001\x7f\\u003c\\u003e\\u0026",'
        b'"\xc3\xa9":{}}'
    )
    with pytest.raises(ValueError, match="floats"):
        go_json_dumps({"a": 1.5})


def test_round_trip_preserves_builder_output(keys) -> None:
    opk, oseed = keys["operator"]
    apk, _ = keys["account"]
    claims = account_claims("acme", apk, tags=["Prod"], description="Acme & co")
    decoded = decode(encode(claims, oseed, iat=IAT), expected_type="account")
    assert decoded.claims["nats"] == claims["nats"]
    assert list(decoded.claims["nats"]) == list(claims["nats"])
    assert decoded.issuer == opk


def test_flipped_payload_byte_fails_signature(keys) -> None:
    token = _user_token(keys)
    header, payload, sig = token.split(".")
    raw = bytearray(_unb64(payload))
    at = raw.index(b'"alice"') + 1
    raw[at] ^= 0x01  # "alice" -> "`lice": still valid JSON, different bytes
    with pytest.raises(JWTSignatureError, match="signature"):
        decode(f"{header}.{_b64(bytes(raw))}.{sig}")


def test_flipped_signature_byte_fails_signature(keys) -> None:
    token = _user_token(keys)
    header, payload, sig = token.split(".")
    raw = bytearray(_unb64(sig))
    raw[10] ^= 0x80
    with pytest.raises(JWTSignatureError):
        decode(f"{header}.{payload}.{_b64(bytes(raw))}")


def test_signature_from_another_key_fails(keys) -> None:
    token = _user_token(keys)
    _, other_seed = new_keypair("account")
    forged = sign_payload(_unb64(token.split(".")[1]), other_seed)  # iss still names the account
    with pytest.raises(JWTSignatureError):
        decode(forged)


def test_user_issued_by_operator_is_key_type_error(keys) -> None:
    upk, _ = keys["user"]
    opk, oseed = keys["operator"]
    with pytest.raises(JWTKeyTypeError, match="issuer must be a account"):
        encode(user_claims("a", upk), oseed, iat=IAT)
    claims = prepare_claims(user_claims("a", upk), issuer=opk, iat=IAT)
    with pytest.raises(JWTKeyTypeError, match="user JWT issuer must be a account public key"):
        decode(sign_payload(go_json_dumps(claims), oseed))


@pytest.mark.parametrize(
    ("claim_type", "issuer_kind", "subject_kind"),
    [
        ("operator", "account", "operator"),
        ("operator", "operator", "account"),
        ("account", "account", "account"),  # self-signed accounts are refused
        ("account", "operator", "user"),
        ("user", "account", "account"),
        ("user", "user", "user"),
    ],
)
def test_wrong_issuer_or_subject_kind(claim_type, issuer_kind, subject_kind) -> None:
    ipk, iseed = new_keypair(issuer_kind)
    spk, _ = new_keypair(subject_kind)
    claims = prepare_claims({"sub": spk, "nats": {"type": claim_type}}, issuer=ipk, iat=IAT)
    with pytest.raises(JWTKeyTypeError):
        decode(sign_payload(go_json_dumps(claims), iseed))
    with pytest.raises(JWTKeyTypeError):
        encode({"sub": spk, "nats": {"type": claim_type}}, iseed, iat=IAT)


def test_issuer_account_must_be_account_key(keys) -> None:
    token = _user_token(keys)
    _, aseed = keys["account"]
    upk, _ = keys["user"]
    bad = _resign(token, aseed, lambda c: c["nats"].update(issuer_account=upk))
    with pytest.raises(JWTKeyTypeError, match="issuer_account"):
        decode(bad)


def test_too_large(keys) -> None:
    _, oseed = keys["operator"]
    apk, _ = keys["account"]
    token = encode(account_claims("big", apk, description="x" * MAX_TOKEN_SIZE), oseed, iat=IAT)
    assert len(token) > MAX_TOKEN_SIZE
    with pytest.raises(JWTTooLargeError, match="exceeds 1048576"):
        decode(token)
    with pytest.raises(JWTTooLargeError):
        decode(token.encode())


def test_just_under_the_limit_decodes(keys) -> None:
    _, oseed = keys["operator"]
    apk, _ = keys["account"]
    # base64 inflates by 4/3; stay well below the limit.
    token = encode(account_claims("big", apk, description="x" * 700_000), oseed, iat=IAT)
    assert decode(token).claims["nats"]["description"] == "x" * 700_000


def test_version_3_is_rejected(keys) -> None:
    _, aseed = keys["account"]
    token = _resign(_user_token(keys), aseed, lambda c: c["nats"].update(version=3))
    with pytest.raises(JWTVersionError, match="newer than the supported version 2"):
        decode(token)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["nats"].pop("version"),
        lambda c: c.update(type="user"),
        lambda c: c.pop("nats"),
        lambda c: c["nats"].update(version=1),
    ],
)
def test_v1_tokens_are_rejected(keys, edit) -> None:
    _, aseed = keys["account"]
    token = _resign(_user_token(keys), aseed, edit)
    with pytest.raises(JWTVersionError, match="v1 tokens are not supported"):
        decode(token)


def test_v1_header_alg_is_rejected(keys) -> None:
    token = _user_token(keys)
    header = _b64(b'{"typ":"JWT","alg":"ed25519"}')
    with pytest.raises(JWTVersionError, match="v1 tokens are not supported"):
        decode(header + token[token.index(".") :])


@pytest.mark.parametrize("alg", ["HS256", "none", "EdDSA", "ED25519-NKEY", ""])
def test_wrong_alg_is_rejected(keys, alg) -> None:
    token = _user_token(keys)
    header = _b64(json.dumps({"typ": "JWT", "alg": alg}).encode())
    with pytest.raises(JWTFormatError, match="unsupported header alg"):
        decode(header + token[token.index(".") :])


def test_hs256_token_signed_with_public_key_is_rejected(keys) -> None:
    apk, _ = keys["account"]
    upk, _ = keys["user"]
    # Classic key-confusion attempt: HMAC keyed with the (public) issuer key.
    forged = jwt.encode(
        {"iss": apk, "sub": upk, "nats": {"type": "user", "version": 2}}, apk, algorithm="HS256"
    )
    with pytest.raises(JWTFormatError):
        decode(forged)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.rsplit(".", 1)[0],  # two segments
        lambda t: t + ".x",  # four segments
        lambda t: t.replace(".", "=.", 1),  # padding
        lambda t: "!" + t,  # bad character
        lambda t: t.split(".")[0] + "." + _b64(b"not json") + "." + t.split(".")[2],
        lambda t: t.split(".")[0] + "." + _b64(b"[1,2]") + "." + t.split(".")[2],
        lambda t: _b64(b"[]") + t[t.index(".") :],
        lambda t: _b64(b'{"typ":"XYZ","alg":"ed25519-nkey"}') + t[t.index(".") :],
        lambda t: t.rsplit(".", 1)[0] + "." + _b64(b"short"),
        lambda t: t.rsplit(".", 1)[0] + ".",
        lambda t: "é" + t,
        lambda t: t.split(".")[0] + "." + _b64(b'{"a":1,"a":2}') + "." + t.split(".")[2],
    ],
)
def test_malformed_tokens(keys, mangle) -> None:
    with pytest.raises(JWTFormatError):
        decode(mangle(_user_token(keys)))


def test_duplicate_iss_is_rejected(keys) -> None:
    token = _user_token(keys)
    payload = _unb64(token.split(".")[1])
    _, aseed = keys["account"]
    dup = payload.replace(b'"iss":', b'"iss":"' + new_keypair("account")[0].encode() + b'","iss":')
    with pytest.raises(JWTFormatError, match="duplicate"):
        decode(sign_payload(dup, aseed))


def test_expected_type_mismatch(keys) -> None:
    with pytest.raises(JWTClaimTypeError, match="expected a account JWT, got a user JWT"):
        decode(_user_token(keys), expected_type="account")


def test_unsupported_claim_type(keys) -> None:
    _, aseed = keys["account"]
    token = _resign(_user_token(keys), aseed, lambda c: c["nats"].update(type="cluster"))
    with pytest.raises(JWTClaimTypeError, match="unsupported claim type"):
        decode(token)


def test_expiry_is_checked_only_on_request(keys) -> None:
    token = _user_token(keys, exp=IAT + 10)
    decoded = decode(token)
    assert decoded.is_expired()
    assert not decoded.is_expired(now=IAT + 10)
    assert decoded.is_expired(now=IAT + 11)
    assert decode(token, check_expiry=True, now=IAT + 10).exp == IAT + 10
    with pytest.raises(JWTExpiredError, match="expired"):
        decode(token, check_expiry=True)
    assert not decode(_user_token(keys)).is_expired()


def test_trailing_newline_is_ignored(keys) -> None:
    token = _user_token(keys)
    assert decode(token + "\n").token == token


def test_encode_rejects_bad_claims(keys) -> None:
    upk, _ = keys["user"]
    _, aseed = keys["account"]
    with pytest.raises(JWTClaimsError, match="unknown top-level"):
        encode({"sub": upk, "foo": 1, "nats": {"type": "user"}}, aseed)
    with pytest.raises(JWTClaimsError, match="nats"):
        encode({"sub": upk}, aseed)
    with pytest.raises(JWTClaimsError, match="sub"):
        encode({"nats": {"type": "user"}}, aseed)
    with pytest.raises(JWTClaimsError, match="floats"):
        encode({"sub": upk, "nats": {"type": "user", "x": 0.5}}, aseed)


def test_curve_seed_cannot_sign(keys) -> None:
    upk, _ = keys["user"]
    _, xseed = new_keypair("curve")
    with pytest.raises(JWTKeyTypeError):
        encode(user_claims("a", upk), xseed)


def test_errors_do_not_leak_seeds(keys) -> None:
    _, aseed = keys["account"]
    broken = aseed[:-3] + b"AAA"
    for call in (
        lambda: encode(user_claims("a", keys["user"][0]), broken),
        lambda: public_key_of(broken),
    ):
        with pytest.raises(JWTError) as info:
            call()
        assert broken.decode() not in str(info.value)
        assert aseed.decode()[:20] not in repr(info.value)


def test_private_pyjws_leaves_pyjwt_global_alone() -> None:
    assert ALGORITHM not in jwt.api_jws._jws_global_obj.get_algorithms()
    from resolver.natsjwt.algorithm import NATS_JWS

    assert NATS_JWS.get_algorithms() == [ALGORITHM]


def test_operator_self_signed_round_trip(keys) -> None:
    opk, oseed = keys["operator"]
    spk, _ = keys["signer"]
    decoded = decode(encode(operator_claims("op", opk, signing_keys=[spk]), oseed, iat=IAT))
    assert decoded.type == "operator"
    assert decoded.issuer == decoded.subject == opk
    assert decoded.claims["nats"]["signing_keys"] == [spk]


def test_tokens_signed_by_hand_are_the_ones_pyjws_makes() -> None:
    # sign_payload writes the compact serialization itself (speed); Ed25519 is
    # deterministic, so PyJWS with the registered algorithm must give the same bytes.
    from resolver.natsjwt.algorithm import ALGORITHM, NATS_JWS
    from resolver.natsjwt.codec import sign_payload
    from resolver.natsjwt.keys import signing_keypair

    _apk, aseed = new_keypair("account")
    for payload in (b"{}", b'{"sub":"U","name":"\xc3\xa9"}', bytes(range(256))):
        ours = sign_payload(payload, aseed)
        pyjws = NATS_JWS.encode(
            payload, signing_keypair(aseed), algorithm=ALGORITHM, sort_headers=False
        )
        assert ours == pyjws
