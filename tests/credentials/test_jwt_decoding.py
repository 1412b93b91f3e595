"""The regex segment check gives PyJWT's answers, and is in use."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError

from resolver.credentials.jwt_decoding import DECODER, _RegexSegmentJWS, hook_in_place


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


SEGMENTS = [
    b"",
    b"e30",  # {}
    b"e30=",  # padded to a multiple of 4
    b"e30==",  # too much padding for its length
    b"eyJhIjoxfQ",
    b"eyJhIjoxfQ==",
    b"eyJhIjoxfQ===",  # three "="
    b"YQ",  # "a"
    b"YQ==",
    b"YR",  # not canonical: the last character carries bits that are not there
    b"Y",  # length 1 mod 4
    b"YWJjZA=",  # one "=" on a length that is not a multiple of 4
    b"!!!!",
    b"e30!",
    b"e3 0",
    b"e3\n0",
    b"e3+0",  # standard base64, not base64url
    b"e3/0",
    b"e3=0",  # "=" inside
    b"=",
    b"==",
    "é30".encode(),
    _b64(bytes(range(256))),
    _b64(b"\xff\xfe\xfd"),
]


@pytest.mark.parametrize("segment", SEGMENTS)
def test_same_answer_as_pyjwt(segment: bytes) -> None:
    try:
        expected: bytes | str = PyJWS._decode_base64url_segment(segment, "payload")
    except DecodeError as error:
        expected = str(error)
    try:
        got: bytes | str = _RegexSegmentJWS._decode_base64url_segment(segment, "payload")
    except DecodeError as error:
        got = str(error)
    assert got == expected


def test_the_hook_is_in_place_and_used() -> None:
    # If a PyJWT release drops the method, the decoder silently becomes plain PyJWT:
    # this fails so that someone looks again (the speed-up is gone, not the checks).
    assert hook_in_place()
    assert isinstance(DECODER._jws, _RegexSegmentJWS)
    assert DECODER._jws.options == jwt.PyJWT()._jws.options


def test_decodes_and_refuses_as_pyjwt() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {"iss": "https://idp.example", "sub": "s1", "aud": "nats", "exp": now + 60}
    token = jwt.encode(claims, key, algorithm="ES256")
    kwargs = {"algorithms": ["ES256"], "audience": "nats", "issuer": "https://idp.example"}
    assert DECODER.decode(token, key.public_key(), **kwargs) == claims
    header, payload, signature = token.split(".")
    for bad in (
        f"{header}.{payload}!.{signature}",  # junk in the payload
        f"{header}.{payload}.{signature[:-2]}",  # a cut signature
        f"{header}.{_b64(b'{}').decode()}.{signature}",  # another payload
    ):
        with pytest.raises(jwt.PyJWTError) as plain:
            jwt.decode(bad, key.public_key(), **kwargs)
        with pytest.raises(jwt.PyJWTError) as ours:
            DECODER.decode(bad, key.public_key(), **kwargs)
        assert type(ours.value) is type(plain.value)
        assert str(ours.value) == str(plain.value)
    expired = jwt.encode(claims | {"exp": now - 120}, key, algorithm="ES256")
    with pytest.raises(jwt.ExpiredSignatureError):
        DECODER.decode(expired, key.public_key(), **kwargs)
