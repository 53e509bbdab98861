from __future__ import annotations

import pytest

from bisik.crypto import (
    MAX_DEVICE_NAME_CHARS,
    CryptoError,
    DeviceNameError,
    IdentityKey,
    b64decode,
    b64encode,
    decrypt_device_name,
    encrypt_device_name,
)


@pytest.mark.parametrize(
    "name",
    ["Laptop", "", "Zoë's phone \U0001f4f1", "a" * MAX_DEVICE_NAME_CHARS, "\u6f22" * 53],
)
def test_round_trip(name: str) -> None:
    identity = IdentityKey.generate()
    blob = encrypt_device_name(identity, name)
    assert decrypt_device_name(identity, blob) == name
    # Another device of the same account holds the same identity key.
    twin = IdentityKey.from_private_bytes(identity.private_bytes())
    assert decrypt_device_name(twin, blob) == name


def test_blob_is_short_base64_and_hides_length() -> None:
    identity = IdentityKey.generate()
    short = encrypt_device_name(identity, "a")
    long = encrypt_device_name(identity, "a" * MAX_DEVICE_NAME_CHARS)
    assert len(short) == len(long) < 256
    assert "=" not in short
    b64decode(short)


def test_nonce_is_random() -> None:
    identity = IdentityKey.generate()
    assert encrypt_device_name(identity, "Laptop") != encrypt_device_name(identity, "Laptop")


@pytest.mark.parametrize(
    "name", ["a" * (MAX_DEVICE_NAME_CHARS + 1), "\U0001f4f1" * MAX_DEVICE_NAME_CHARS]
)
def test_too_long_rejected(name: str) -> None:
    with pytest.raises(CryptoError, match="too long"):
        encrypt_device_name(IdentityKey.generate(), name)


def test_other_account_cannot_decrypt() -> None:
    blob = encrypt_device_name(IdentityKey.generate(), "Laptop")
    with pytest.raises(CryptoError, match="does not decrypt"):
        decrypt_device_name(IdentityKey.generate(), blob)


@pytest.mark.parametrize("index", [1, 12, 13, 100, -1])
def test_tampering_rejected(index: int) -> None:
    identity = IdentityKey.generate()
    raw = bytearray(b64decode(encrypt_device_name(identity, "Laptop")))
    raw[index] ^= 0x01
    with pytest.raises(CryptoError):
        decrypt_device_name(identity, b64encode(bytes(raw)))


def test_malformed_rejected() -> None:
    identity = IdentityKey.generate()
    raw = b64decode(encrypt_device_name(identity, "Laptop"))
    with pytest.raises(DeviceNameError, match="version"):
        decrypt_device_name(identity, b64encode(b"\x09" + raw[1:]))
    with pytest.raises(DeviceNameError, match="length"):
        decrypt_device_name(identity, b64encode(raw[:-1]))
    with pytest.raises(DeviceNameError, match="base64"):
        decrypt_device_name(identity, "Laptop!")
