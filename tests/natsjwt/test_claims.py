"""Claim builders: Go struct field order, omitempty, defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver.natsjwt import (
    JWTClaimsError,
    JWTKeyTypeError,
    account_claims,
    account_limits,
    decode,
    encode,
    go_json_dumps,
    new_keypair,
    operator_claims,
    scoped_signing_key,
    user_claims,
)

IAT = 1_700_000_000
VECTORS = Path("/work/shared/vectors/nsc-generated-v2.jwt")


def _vector(claim_type: str, name: str):
    for line in VECTORS.read_text().splitlines():
        if line.strip():
            decoded = decode(line)
            if decoded.type == claim_type and decoded.name == name:
                return decoded
    raise AssertionError(f"no {claim_type} vector named {name}")


def _nats_json(claims: dict) -> bytes:
    return go_json_dumps(claims["nats"])


def test_default_account_limits_match_nsc() -> None:
    nsc = _vector("account", "sys").claims["nats"]["limits"]
    assert go_json_dumps(account_limits()) == go_json_dumps(nsc)
    apk, _ = new_keypair("account")
    assert go_json_dumps(account_claims("sys", apk)["nats"]["limits"]) == go_json_dumps(nsc)


def test_jetstream_limits_match_nsc() -> None:
    nsc = _vector("account", "one").claims["nats"]["limits"]
    ours = account_limits(mem_storage=1073741824, disk_storage=10737418240, streams=100)
    assert go_json_dumps(ours) == go_json_dumps(nsc)


def test_account_limit_overrides_keep_the_rest_unlimited() -> None:
    apk, _ = new_keypair("account")
    limits = account_claims("a", apk, limits={"conn": 5, "wildcards": False})["nats"]["limits"]
    assert go_json_dumps(limits) == (
        b'{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"conn":5,"leaf":-1}'
    )
    with pytest.raises(JWTClaimsError, match="unknown account limit"):
        account_claims("a", apk, limits={"connections": 5})


def test_tiered_limits_sorted_and_exclusive() -> None:
    limits = account_limits(tiered_limits={"R3": {"disk_storage": -1}, "R1": {"mem_storage": 1}})
    assert list(limits["tiered_limits"]) == ["R1", "R3"]
    assert limits["tiered_limits"]["R3"] == {"disk_storage": -1}
    with pytest.raises(JWTClaimsError, match="exclusive"):
        account_limits(mem_storage=-1, tiered_limits={"R1": {"mem_storage": 1}})


def test_default_account_nats_section_order() -> None:
    apk, _ = new_keypair("account")
    claims = account_claims("sys", apk)
    assert claims == {"name": "sys", "sub": apk, "nats": claims["nats"]}
    # Like the nsc vector, plus "authorization":{} which nats-io/jwt added later (a struct
    # field, so Go writes it even though it is tagged omitempty).
    vector = _vector("account", "sys").claims["nats"]
    expected = dict(vector)
    expected.pop("type")
    expected.pop("version")
    expected["authorization"] = {}
    expected["type"] = "account"
    expected["version"] = 2
    assert _nats_json(claims) == go_json_dumps(expected)


def test_default_user_nats_matches_nsc() -> None:
    upk, _ = new_keypair("user")
    vector = _vector("user", "one").claims["nats"]
    assert _nats_json(user_claims("one", upk)) == go_json_dumps(vector)


def test_operator_field_order() -> None:
    opk, _ = new_keypair("operator")
    spk, _ = new_keypair("operator")
    sys_pk, _ = new_keypair("account")
    claims = operator_claims(
        "op",
        opk,
        signing_keys=[spk, spk],
        system_account=sys_pk,
        account_server_url="http://localhost:8080/jwt/v1",
        strict_signing_key_usage=True,
        tags=[" Env:Prod ", "env:prod"],
    )
    assert (
        _nats_json(claims)
        == (
            f'{{"signing_keys":["{spk}"],"account_server_url":"http://localhost:8080/jwt/v1",'
            f'"system_account":"{sys_pk}","strict_signing_key_usage":true,"tags":["env:prod"],'
            f'"type":"operator","version":2}}'
        ).encode()
    )


def test_operator_matches_nsc_vector() -> None:
    vector = _vector("operator", "op2")
    nats = vector.claims["nats"]
    ours = operator_claims(
        "op2",
        vector.subject,
        signing_keys=nats["signing_keys"],
        system_account=nats["system_account"],
    )
    assert _nats_json(ours) == go_json_dumps(nats)


def test_operator_validation() -> None:
    apk, _ = new_keypair("account")
    opk, _ = new_keypair("operator")
    with pytest.raises(JWTKeyTypeError):
        operator_claims("op", apk)
    with pytest.raises(JWTKeyTypeError):
        operator_claims("op", opk, signing_keys=[apk])
    with pytest.raises(JWTKeyTypeError):
        operator_claims("op", opk, system_account=opk)
    with pytest.raises(JWTClaimsError, match="protocol"):
        operator_claims("op", opk, account_server_url="localhost:8080")


def test_scoped_signing_key_shape() -> None:
    spk, _ = new_keypair("account")
    key = scoped_signing_key(
        spk,
        "dev",
        {"sub": {"allow": ["_INBOX.>"]}, "pub": {"allow": ["{{account-name()}}.>"]}},
    )
    assert (
        go_json_dumps(key)
        == (
            f'{{"kind":"user_scope","key":"{spk}","role":"dev","template":'
            '{"pub":{"allow":["{{account-name()}}.\\u003e"]},"sub":{"allow":["_INBOX.\\u003e"]},'
            '"subs":-1,"data":-1,"payload":-1},"description":""}'
        ).encode()
    )
    with pytest.raises(JWTClaimsError, match="unknown template fields"):
        scoped_signing_key(spk, "dev", {"publish": {}})
    with pytest.raises(JWTKeyTypeError):
        scoped_signing_key(new_keypair("user")[0], "dev", {})


def test_full_template_order() -> None:
    spk, _ = new_keypair("account")
    template = {
        "allowed_connection_types": ["STANDARD", "WEBSOCKET"],
        "bearer_token": True,
        "payload": 1024,
        "times": [{"end": "17:00:00", "start": "09:00:00"}],
        "src": ["10.0.0.0/8"],
        "resp": {"ttl": 5_000_000_000, "max": 1},
        "sub": {"deny": ["secret.>"], "allow": [">"]},
        "pub": {},
        "times_location": "Europe/Berlin",
        "proxy_required": True,
    }
    key = scoped_signing_key(spk, "ops", template, "operators")
    assert go_json_dumps(key["template"]) == (
        b'{"pub":{},"sub":{"allow":["\\u003e"],"deny":["secret.\\u003e"]},'
        b'"resp":{"max":1,"ttl":5000000000},"src":["10.0.0.0/8"],'
        b'"times":[{"start":"09:00:00","end":"17:00:00"}],"times_location":"Europe/Berlin",'
        b'"subs":-1,"data":-1,"payload":1024,"bearer_token":true,"proxy_required":true,'
        b'"allowed_connection_types":["STANDARD","WEBSOCKET"]}'
    )
    assert key["description"] == "operators"


def test_account_signing_keys_sorted_mixed() -> None:
    keys = sorted(new_keypair("account")[0] for _ in range(3))
    apk, _ = new_keypair("account")
    scoped = scoped_signing_key(keys[1], "dev", {})
    claims = account_claims("a", apk, signing_keys=[keys[2], scoped, keys[0]])
    assert claims["nats"]["signing_keys"] == [keys[0], scoped, keys[2]]
    with pytest.raises(JWTClaimsError, match="twice"):
        account_claims("a", apk, signing_keys=[keys[0], keys[0]])
    with pytest.raises(JWTKeyTypeError):
        account_claims("a", apk, signing_keys=[new_keypair("operator")[0]])


def test_account_full_field_order() -> None:
    apk, _ = new_keypair("account")
    other, _ = new_keypair("account")
    upk, _ = new_keypair("user")
    xpk, _ = new_keypair("curve")
    claims = account_claims(
        "a",
        apk,
        exp=IAT,
        revocations={upk: 5, "*": 3},
        exports=[
            {"subject": "z.>", "type": "stream"},
            {"type": "service", "subject": "a.req", "response_type": "Stream", "name": "svc"},
        ],
        imports=[
            {"type": "stream", "account": other, "subject": "feed.>", "local_subject": "in.>"}
        ],
        description="Team A",
        tags=["B", "a"],
        mappings={"q": [{"weight": 50, "subject": "q.1"}, {"subject": "q.2", "cluster": "c"}]},
        authorization={"xkey": xpk, "allowed_accounts": ["*"], "auth_users": [upk]},
    )
    assert list(claims) == ["exp", "name", "sub", "nats"]
    assert list(claims["nats"]) == [
        "imports", "exports", "limits", "revocations", "default_permissions", "mappings",
        "authorization", "description", "tags", "type", "version",
    ]  # fmt: skip
    nats = claims["nats"]
    assert [e["subject"] for e in nats["exports"]] == ["a.req", "z.>"]
    assert list(nats["exports"][0]) == ["name", "subject", "type", "response_type"]
    assert list(nats["imports"][0]) == ["subject", "account", "local_subject", "type"]
    assert list(nats["revocations"]) == ["*", upk]
    assert nats["mappings"] == {
        "q": [{"subject": "q.1", "weight": 50}, {"subject": "q.2", "cluster": "c"}]
    }
    assert list(nats["authorization"]) == ["auth_users", "allowed_accounts", "xkey"]
    assert nats["tags"] == ["b", "a"]
    assert nats["default_permissions"] == {"pub": {}, "sub": {}}


def test_account_validation() -> None:
    apk, _ = new_keypair("account")
    with pytest.raises(JWTKeyTypeError):
        account_claims("a", new_keypair("user")[0])
    with pytest.raises(JWTKeyTypeError):
        account_claims("a", apk, revocations={apk: 1})
    with pytest.raises(JWTClaimsError, match="stream"):
        account_claims("a", apk, exports=[{"subject": "x", "type": "events"}])
    with pytest.raises(JWTClaimsError, match="unknown export fields"):
        account_claims("a", apk, exports=[{"subject": "x", "type": "stream", "tok": 1}])
    with pytest.raises(JWTKeyTypeError):
        account_claims("a", apk, imports=[{"subject": "x", "type": "stream", "account": "A"}])


def test_user_with_permissions_and_limits() -> None:
    upk, _ = new_keypair("user")
    apk, _ = new_keypair("account")
    claims = user_claims(
        "u",
        upk,
        issuer_account=apk,
        permissions={"sub": {"allow": ["b"]}, "pub": {"allow": ["a"], "deny": ["a.x"]}},
        limits={"subs": 10, "src": ["192.168.0.0/16"]},
        bearer_token=True,
        allowed_connection_types=["STANDARD"],
        tags=["T"],
        exp=IAT,
    )
    assert (
        _nats_json(claims)
        == (
            '{"pub":{"allow":["a"],"deny":["a.x"]},"sub":{"allow":["b"]},"src":["192.168.0.0/16"],'
            '"subs":10,"data":-1,"payload":-1,"bearer_token":true,'
            f'"allowed_connection_types":["STANDARD"],"issuer_account":"{apk}","tags":["t"],'
            '"type":"user","version":2}'
        ).encode()
    )
    with pytest.raises(JWTClaimsError, match="connection types"):
        user_claims("u", upk, allowed_connection_types=["TCP"])


def test_scoped_user_carries_nothing_of_its_own() -> None:
    upk, _ = new_keypair("user")
    apk, _ = new_keypair("account")
    claims = user_claims("u", upk, issuer_account=apk, scoped=True)
    assert (
        _nats_json(claims)
        == (
            f'{{"pub":{{}},"sub":{{}},"issuer_account":"{apk}","type":"user","version":2}}'
        ).encode()
    )
    with pytest.raises(JWTClaimsError, match="issuer_account"):
        user_claims("u", upk, scoped=True)
    with pytest.raises(JWTClaimsError, match="cannot carry"):
        user_claims("u", upk, issuer_account=apk, scoped=True, permissions={"pub": {}})
    with pytest.raises(JWTClaimsError, match="cannot carry"):
        user_claims("u", upk, issuer_account=apk, scoped=True, bearer_token=True)


def test_builders_round_trip_through_encode_decode() -> None:
    opk, oseed = new_keypair("operator")
    osk, osk_seed = new_keypair("operator")
    apk, aseed = new_keypair("account")
    ask, ask_seed = new_keypair("account")
    upk, _ = new_keypair("user")

    op = decode(encode(operator_claims("op", opk, signing_keys=[osk]), oseed, iat=IAT))
    acct_claims = account_claims(
        "acct", apk, signing_keys=[scoped_signing_key(ask, "dev", {"pub": {"allow": ["x"]}})]
    )
    acct = decode(encode(acct_claims, osk_seed, iat=IAT), expected_type="account")
    user = decode(
        encode(user_claims("u", upk, issuer_account=apk, scoped=True), ask_seed, iat=IAT),
        expected_type="user",
    )
    direct = decode(encode(user_claims("u2", upk), aseed, iat=IAT), expected_type="user")

    assert acct.issuer in op.claims["nats"]["signing_keys"]
    assert acct.claims["nats"] == acct_claims["nats"]
    assert user.issuer == ask and user.issuer_account == apk == acct.subject
    assert direct.issuer == apk and direct.issuer_account is None
    for decoded in (op, acct, user, direct):
        assert go_json_dumps(decoded.claims) == decoded.payload_bytes
