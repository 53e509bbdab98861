from __future__ import annotations

import hashlib
import re

import pytest

from bisik.crypto import CryptoError, IdentityKey, b64decode, b64encode, safety_number

ALICE = IdentityKey.from_private_bytes(bytes(32))
BOB = IdentityKey.from_private_bytes(bytes([1]) * 32)


def signal_style_half(username: str, identity_key: str) -> str:
    """An independent transcription of Signal's NumericFingerprintGenerator."""
    key = b64decode(identity_key)
    current = (0).to_bytes(2, "big") + key + username.encode()
    for _ in range(5200):
        digest = hashlib.sha512()
        digest.update(current)
        digest.update(key)
        current = digest.digest()
    return "".join(
        str(int.from_bytes(current[i : i + 5], "big") % 100000).zfill(5) for i in range(0, 30, 5)
    )


def test_format() -> None:
    number = safety_number("alice", ALICE.public_key, "bob", BOB.public_key)
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", number)


def test_matches_signal_construction_and_pinned_vector() -> None:
    number = safety_number("alice", ALICE.public_key, "bob", BOB.public_key)
    expected = signal_style_half("alice", ALICE.public_key) + signal_style_half(
        "bob", BOB.public_key
    )
    assert number.replace(" ", "") == expected
    # Pinned so a change to the construction is noticed: users compare these.
    assert number == "76400 42704 85904 12821 92519 04517 73062 75349 98109 09478 30156 51938"


def test_both_sides_see_the_same_number() -> None:
    mine = safety_number("alice", ALICE.public_key, "bob", BOB.public_key)
    theirs = safety_number("bob", BOB.public_key, "alice", ALICE.public_key)
    assert mine == theirs


def test_halves_are_ordered_by_username() -> None:
    number = safety_number("zed", ALICE.public_key, "amy", BOB.public_key).replace(" ", "")
    assert number[:30] == signal_style_half("amy", BOB.public_key)
    assert number[30:] == signal_style_half("zed", ALICE.public_key)


def test_different_keys_give_different_numbers() -> None:
    base = safety_number("alice", ALICE.public_key, "bob", BOB.public_key)
    mallory = IdentityKey.generate().public_key
    changed = safety_number("alice", ALICE.public_key, "bob", mallory)
    assert changed != base
    # Only bob's half changes when bob's key changes.
    assert changed.replace(" ", "")[:30] == base.replace(" ", "")[:30]
    assert changed.replace(" ", "")[30:] != base.replace(" ", "")[30:]


def test_username_is_bound() -> None:
    base = safety_number("alice", ALICE.public_key, "bob", BOB.public_key)
    assert safety_number("alice", ALICE.public_key, "bobby", BOB.public_key) != base


@pytest.mark.parametrize("bad", ["", "not base64!", b64encode(b"\x01" * 31), b64encode(bytes(33))])
def test_bad_identity_key_rejected(bad: str) -> None:
    with pytest.raises(CryptoError):
        safety_number("alice", ALICE.public_key, "bob", bad)


def test_empty_username_rejected() -> None:
    with pytest.raises(CryptoError, match="username"):
        safety_number("", ALICE.public_key, "bob", BOB.public_key)
