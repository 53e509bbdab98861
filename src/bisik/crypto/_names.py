"""Device names, encrypted so the server stores them but cannot read them.

The key comes from the account's identity key, which every device of the
account holds and the server never sees. Names are padded to a fixed length
before encryption so the blob does not reveal how long the name is.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bisik.crypto._encoding import b64decode, b64encode
from bisik.crypto._errors import CryptoError, DeviceNameError
from bisik.crypto._identity import IdentityKey

MAX_DEVICE_NAME_CHARS = 64
# 1 length byte + name, zero-padded to 160 bytes: with the version byte, nonce
# and tag the blob is 189 bytes, 252 base64 characters (under the 256 limit).
_PADDED_LEN = 160
MAX_DEVICE_NAME_BYTES = _PADDED_LEN - 1
_VERSION = 1
_NONCE_LEN = 12
_TAG_LEN = 16
_INFO = b"bisik/device-name/v1"


def _key(identity: IdentityKey) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return AESGCM(hkdf.derive(identity.private_bytes()))


def encrypt_device_name(identity: IdentityKey, name: str) -> str:
    """Encrypt a device name under a key only the account's devices can derive.

    Args:
        identity: the account's identity key.
        name: at most 64 characters and 159 UTF-8 bytes.

    Returns:
        unpadded base64, always 252 characters.

    Raises:
        DeviceNameError: the name is too long.
    """
    encoded = name.encode()
    if len(name) > MAX_DEVICE_NAME_CHARS or len(encoded) > MAX_DEVICE_NAME_BYTES:
        raise DeviceNameError(
            f"device name is too long: at most {MAX_DEVICE_NAME_CHARS} characters "
            f"and {MAX_DEVICE_NAME_BYTES} UTF-8 bytes"
        )
    padded = bytes([len(encoded)]) + encoded.ljust(MAX_DEVICE_NAME_BYTES, b"\0")
    nonce = os.urandom(_NONCE_LEN)
    sealed = _key(identity).encrypt(nonce, padded, _INFO)
    return b64encode(bytes([_VERSION]) + nonce + sealed)


def decrypt_device_name(identity: IdentityKey, blob: str) -> str:
    """Decrypt what ``encrypt_device_name`` produced with the same identity key.

    Raises:
        DeviceNameError: another account's key, tampered, malformed or unknown version.
    """
    try:
        raw = b64decode(blob)
    except CryptoError:
        raise DeviceNameError("encrypted device name is not base64") from None
    if len(raw) != 1 + _NONCE_LEN + _PADDED_LEN + _TAG_LEN:
        raise DeviceNameError("encrypted device name has the wrong length")
    if raw[0] != _VERSION:
        raise DeviceNameError(f"unsupported device name version {raw[0]}")
    try:
        padded = _key(identity).decrypt(raw[1 : 1 + _NONCE_LEN], raw[1 + _NONCE_LEN :], _INFO)
    except InvalidTag:
        raise DeviceNameError("device name does not decrypt with this identity key") from None
    length = padded[0]
    if length > MAX_DEVICE_NAME_BYTES:
        raise DeviceNameError("encrypted device name is corrupt")
    try:
        return padded[1 : 1 + length].decode()
    except UnicodeDecodeError:
        raise DeviceNameError("encrypted device name is corrupt") from None
