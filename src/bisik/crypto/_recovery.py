"""The account recovery key and the server-side key backup it encrypts.

The user writes the recovery key down once. From it HKDF derives two things:
the AES-256-GCM key that encrypts the backup, and an Ed25519 key whose public
half the server stores so that only a holder of the recovery key can replace
or fetch the backup (challenge-response, like device authentication).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bisik.crypto._encoding import b64decode, b64encode
from bisik.crypto._errors import BackupDecryptError, CryptoError, RecoveryKeyError

_SECRET_LEN = 28
_CHECKSUM_LEN = 2
_TEXT_LEN = 48  # base32 of 30 bytes, no padding
_GROUP = 4
_BASE32 = re.compile(r"[A-Z2-7]*")
_SEPARATORS = re.compile(r"[\s\-]+")

BACKUP_VERSION = 1
_NONCE_LEN = 12
_TAG_LEN = 16


def _checksum(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()[:_CHECKSUM_LEN]


class RecoveryKey:
    """224 random bits shown as 12 groups of 4 base32 characters.

    The last 16 bits of the displayed form are a checksum, so a mistyped
    character is caught before any decryption is tried. The ``repr`` shows only
    the public backup-auth key.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != _SECRET_LEN:
            raise RecoveryKeyError(f"recovery key secret must be {_SECRET_LEN} bytes")
        self._secret = secret

    @classmethod
    def generate(cls) -> RecoveryKey:
        return cls(os.urandom(_SECRET_LEN))

    @classmethod
    def from_text(cls, text: str) -> RecoveryKey:
        """Parse the displayed form; case, spaces and dashes do not matter.

        Raises:
            RecoveryKeyError: wrong length, a character outside A-Z and 2-7, or a
                checksum mismatch (a mistyped character).
        """
        compact = _SEPARATORS.sub("", text).upper()
        if len(compact) != _TEXT_LEN:
            raise RecoveryKeyError(
                f"a recovery key has {_TEXT_LEN} characters, this has {len(compact)}"
            )
        if not _BASE32.fullmatch(compact):
            bad = sorted({c for c in compact if not _BASE32.fullmatch(c)})
            raise RecoveryKeyError(f"a recovery key uses only A-Z and 2-7; found {''.join(bad)!r}")
        # 48 characters of the alphabet always decode (48 * 5 bits = 30 whole bytes).
        raw = base64.b32decode(compact)
        secret, checksum = raw[:_SECRET_LEN], raw[_SECRET_LEN:]
        if not hmac.compare_digest(checksum, _checksum(secret)):
            raise RecoveryKeyError("recovery key checksum does not match: check for a typo")
        return cls(secret)

    def to_text(self) -> str:
        """``ABCD EFGH ...``: 48 base32 characters in 12 groups of 4."""
        compact = base64.b32encode(self._secret + _checksum(self._secret)).decode("ascii")
        return " ".join(compact[i : i + _GROUP] for i in range(0, _TEXT_LEN, _GROUP))

    def _derive(self, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._secret)

    def backup_key(self) -> bytes:
        """The 32-byte AES-256-GCM key of the key backup."""
        return self._derive(b"bisik/backup/v1/encrypt")

    def auth_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that proves to the server we hold this recovery key."""
        return Ed25519PrivateKey.from_private_bytes(self._derive(b"bisik/backup/v1/auth"))

    def auth_public_key(self) -> str:
        """The public half of ``auth_key()``, unpadded base64 (for the server)."""
        raw = (
            self.auth_key()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return b64encode(raw)

    def sign_auth(self, message: bytes) -> str:
        """Sign ``message`` with ``auth_key()``; unpadded base64."""
        return b64encode(self.auth_key().sign(message))

    def __repr__(self) -> str:
        return f"RecoveryKey(auth_public_key={self.auth_public_key()})"


def _backup_aad(username: str) -> bytes:
    # Binding the username stops a server handing one account's backup to another.
    return b"bisik/backup/v1|" + username.encode()


def encrypt_backup(key: RecoveryKey, payload: str, *, username: str) -> str:
    """Encrypt a JSON object's text for the server-side key backup.

    Returns:
        unpadded base64 of ``0x01 || nonce(12) || AES-256-GCM ciphertext``.
    """
    nonce = os.urandom(_NONCE_LEN)
    plaintext = payload.encode()
    sealed = AESGCM(key.backup_key()).encrypt(nonce, plaintext, _backup_aad(username))
    return b64encode(bytes([BACKUP_VERSION]) + nonce + sealed)


def decrypt_backup(key: RecoveryKey, blob: str, *, username: str) -> dict[str, Any]:
    """Decrypt what ``encrypt_backup`` made for the same username.

    Raises:
        BackupDecryptError: wrong recovery key, wrong username, tampered, truncated
            or of an unknown version.
    """
    try:
        raw = b64decode(blob)
    except CryptoError:
        raise BackupDecryptError("backup is not valid base64") from None
    if len(raw) < 1 + _NONCE_LEN + _TAG_LEN:
        raise BackupDecryptError("backup is truncated")
    if raw[0] != BACKUP_VERSION:
        raise BackupDecryptError(f"unsupported backup version {raw[0]}")
    nonce, sealed = raw[1 : 1 + _NONCE_LEN], raw[1 + _NONCE_LEN :]
    try:
        plaintext = AESGCM(key.backup_key()).decrypt(nonce, sealed, _backup_aad(username))
    except InvalidTag:
        raise BackupDecryptError(
            "backup does not decrypt: wrong recovery key, or it was tampered with"
        ) from None
    try:
        payload = json.loads(plaintext)
    except ValueError:
        raise BackupDecryptError("backup payload is not JSON") from None
    if not isinstance(payload, dict):
        raise BackupDecryptError("backup payload is not a JSON object")
    return payload
