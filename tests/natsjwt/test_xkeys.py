"""xkey seal/open, byte for byte as the Go nkeys package (``xkeys.go``) does it.

The fixed vector is the NaCl ``crypto_box`` test vector (Alice's secret key, Bob's public
key, the nonce, a 131-byte message and its 147-byte box, from NaCl's ``tests/box.c``, also
in libsodium and PyNaCl's own tests), wrapped in nkeys' format: ``"xkv1" + nonce + box``
with the keys written as nkeys curve seeds and public keys.
"""

from __future__ import annotations

import pytest

from resolver.natsjwt import (
    XKEY_VERSION,
    XKeyError,
    new_keypair,
    public_key_of,
    xkey_open,
    xkey_seal,
)
from resolver.natsjwt.keys import PREFIX_BYTE_CURVE, _encode_curve_seed, _encode_public
from resolver.natsjwt.xkeys import is_sealed

ALICE_SECRET = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SECRET = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
MESSAGE = bytes.fromhex(
    "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc"
    "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31"
    "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde"
    "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864"
    "5e0705"
)
BOXED = bytes.fromhex(
    "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce"
    "48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c972"
    "71d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae"
    "90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b3"
    "7973f622a43d14a6599b1f654cb45a74e355a5"
)

# A curve key pair from nats-server's auth_callout_test.go (curveSeed / curvePublic).
SERVER_TEST_SEED = b"SXAAXMRAEP6JWWHNB6IKFL554IE6LZVT6EY5MBRICPILTLOPHAG73I3YX4"
SERVER_TEST_PUBLIC = "XAB3NANV3M6N7AHSQP2U5FRWKKUT7EG2ZXXABV4XVXYQRJGM4S2CZGHT"

alice_seed = _encode_curve_seed(ALICE_SECRET)
bob_seed = _encode_curve_seed(BOB_SECRET)
alice_public = _encode_public(PREFIX_BYTE_CURVE, ALICE_PUBLIC)
bob_public = _encode_public(PREFIX_BYTE_CURVE, BOB_PUBLIC)


def test_vector_keys_are_the_nkeys_encoding_of_the_raw_keys() -> None:
    assert public_key_of(alice_seed) == alice_public
    assert public_key_of(bob_seed) == bob_public
    assert public_key_of(SERVER_TEST_SEED) == SERVER_TEST_PUBLIC


def test_seal_matches_the_nacl_vector_in_the_nkeys_format() -> None:
    sealed = xkey_seal(MESSAGE, alice_seed, bob_public, nonce=NONCE)
    assert sealed == b"xkv1" + NONCE + BOXED
    assert is_sealed(sealed)


def test_open_reads_the_vector() -> None:
    assert xkey_open(XKEY_VERSION + NONCE + BOXED, bob_seed, alice_public) == MESSAGE


def test_round_trip_with_random_nonces() -> None:
    sender_public, sender_seed = new_keypair("curve")
    recipient_public, recipient_seed = new_keypair("curve")
    one = xkey_seal(b"a request", sender_seed, recipient_public)
    two = xkey_seal(b"a request", sender_seed, recipient_public)
    assert one != two  # fresh nonce each time
    assert xkey_open(one, recipient_seed, sender_public) == b"a request"
    # Seeds may be given as text too (what a config or creds file holds).
    assert xkey_open(two, recipient_seed.decode(), sender_public) == b"a request"


def test_open_refuses_tampering_wrong_keys_and_bad_formats() -> None:
    sealed = XKEY_VERSION + NONCE + BOXED
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(XKeyError, match="could not be decrypted"):
        xkey_open(flipped, bob_seed, alice_public)
    other_public, _ = new_keypair("curve")
    with pytest.raises(XKeyError, match="could not be decrypted"):
        xkey_open(sealed, bob_seed, other_public)
    with pytest.raises(XKeyError, match="unknown version"):
        xkey_open(b"xkv2" + NONCE + BOXED, bob_seed, alice_public)
    with pytest.raises(XKeyError, match="too short"):
        xkey_open(XKEY_VERSION + NONCE, bob_seed, alice_public)


def test_keys_of_the_wrong_kind_are_refused_without_echoing_them() -> None:
    user_public, user_seed = new_keypair("user")
    with pytest.raises(XKeyError) as refused:
        xkey_seal(b"x", user_seed, bob_public)
    assert user_seed.decode() not in str(refused.value)
    with pytest.raises(XKeyError, match="recipient is not an xkey"):
        xkey_seal(b"x", alice_seed, user_public)
    with pytest.raises(XKeyError, match="sender is not an xkey"):
        xkey_open(XKEY_VERSION + NONCE + BOXED, bob_seed, user_public)
    with pytest.raises(XKeyError, match="not an xkey seed"):
        xkey_open(XKEY_VERSION + NONCE + BOXED, b"not a seed", alice_public)
    with pytest.raises(XKeyError, match="nonce must be 24 bytes"):
        xkey_seal(b"x", alice_seed, bob_public, nonce=b"short")
