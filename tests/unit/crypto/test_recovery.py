from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from bisik.crypto import (
    BackupDecryptError,
    CryptoError,
    RecoveryKey,
    RecoveryKeyError,
    SignatureError,
    b64decode,
    b64encode,
    decrypt_backup,
    encrypt_backup,
    verify_ed25519,
)

FIXED = RecoveryKey(bytes(range(28)))
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
PAYLOAD = {"identity": "c2VjcmV0", "devices": ["a", "b"], "n": 3, "name": "Zoë"}
PAYLOAD_JSON = json.dumps(PAYLOAD)


def test_text_form() -> None:
    text = RecoveryKey.generate().to_text()
    assert re.fullmatch(r"([A-Z2-7]{4} ){11}[A-Z2-7]{4}", text)


def test_generate_is_random() -> None:
    assert RecoveryKey.generate().to_text() != RecoveryKey.generate().to_text()


@pytest.mark.parametrize(
    "transform",
    [
        lambda t: t,
        lambda t: t.lower(),
        lambda t: t.replace(" ", ""),
        lambda t: t.replace(" ", "-"),
        lambda t: f"  {t.replace(' ', '  ').lower()}\n",
    ],
)
def test_text_round_trip(transform: Callable[[str], str]) -> None:
    key = RecoveryKey.generate()
    again = RecoveryKey.from_text(transform(key.to_text()))
    assert again.to_text() == key.to_text()
    assert again.backup_key() == key.backup_key()
    assert again.auth_public_key() == key.auth_public_key()


def test_every_single_character_typo_is_detected() -> None:
    compact = FIXED.to_text().replace(" ", "")
    for i, char in enumerate(compact):
        typo = BASE32[(BASE32.index(char) + 1) % 32]
        with pytest.raises(RecoveryKeyError, match="checksum"):
            RecoveryKey.from_text(compact[:i] + typo + compact[i + 1 :])


def test_swapped_characters_are_detected() -> None:
    compact = FIXED.to_text().replace(" ", "")
    for i in range(len(compact) - 1):
        if compact[i] == compact[i + 1]:
            continue
        swapped = compact[:i] + compact[i + 1] + compact[i] + compact[i + 2 :]
        with pytest.raises(RecoveryKeyError, match="checksum"):
            RecoveryKey.from_text(swapped)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "48 characters, this has 0"),
        ("ABCD EFGH", "48 characters, this has 8"),
        ("A" * 49, "48 characters, this has 49"),
        ("0" + "A" * 47, "found '0'"),
        ("A" * 44 + "18!?", "found '!18\\?'"),
    ],
)
def test_bad_text_rejected(text: str, message: str) -> None:
    with pytest.raises(RecoveryKeyError, match=message):
        RecoveryKey.from_text(text)


def test_recovery_key_error_is_crypto_error() -> None:
    with pytest.raises(CryptoError):
        RecoveryKey.from_text("nope")
    with pytest.raises(RecoveryKeyError):
        RecoveryKey(b"short")


def test_derived_keys() -> None:
    key = RecoveryKey.generate()
    assert len(key.backup_key()) == 32
    assert key.backup_key() == key.backup_key()
    assert key.auth_public_key() == key.auth_public_key()
    assert len(b64decode(key.auth_public_key())) == 32
    other = RecoveryKey.generate()
    assert other.backup_key() != key.backup_key()
    assert other.auth_public_key() != key.auth_public_key()


def test_auth_signature_verifies_with_public_key() -> None:
    key = RecoveryKey.generate()
    restored = RecoveryKey.from_text(key.to_text())
    signature = restored.sign_auth(b"challenge")
    verify_ed25519(key.auth_public_key(), b"challenge", signature)
    with pytest.raises(SignatureError):
        verify_ed25519(key.auth_public_key(), b"other challenge", signature)
    with pytest.raises(SignatureError):
        verify_ed25519(RecoveryKey.generate().auth_public_key(), b"challenge", signature)


def test_backup_round_trip() -> None:
    key = RecoveryKey.generate()
    blob = encrypt_backup(key, PAYLOAD_JSON, username="alice")
    restored = RecoveryKey.from_text(key.to_text())
    assert decrypt_backup(restored, blob, username="alice") == PAYLOAD
    assert b64decode(blob)[0] == 1
    assert "c2VjcmV0" not in blob


def test_backup_nonce_is_random() -> None:
    key = RecoveryKey.generate()
    a = encrypt_backup(key, PAYLOAD_JSON, username="alice")
    b = encrypt_backup(key, PAYLOAD_JSON, username="alice")
    assert a != b
    assert b64decode(a)[1:13] != b64decode(b)[1:13]


def test_backup_wrong_key_rejected() -> None:
    blob = encrypt_backup(RecoveryKey.generate(), PAYLOAD_JSON, username="alice")
    with pytest.raises(BackupDecryptError, match="wrong recovery key"):
        decrypt_backup(RecoveryKey.generate(), blob, username="alice")


def test_backup_bound_to_username() -> None:
    key = RecoveryKey.generate()
    blob = encrypt_backup(key, PAYLOAD_JSON, username="alice")
    with pytest.raises(BackupDecryptError):
        decrypt_backup(key, blob, username="mallory")


@pytest.mark.parametrize("index", [1, 12, 13, 20, -1])
def test_backup_tampering_rejected(index: int) -> None:
    key = RecoveryKey.generate()
    raw = bytearray(b64decode(encrypt_backup(key, PAYLOAD_JSON, username="alice")))
    raw[index] ^= 0x80
    with pytest.raises(BackupDecryptError):
        decrypt_backup(key, b64encode(bytes(raw)), username="alice")


def test_backup_malformed_rejected() -> None:
    key = RecoveryKey.generate()
    raw = b64decode(encrypt_backup(key, PAYLOAD_JSON, username="alice"))
    with pytest.raises(BackupDecryptError, match="version 2"):
        decrypt_backup(key, b64encode(b"\x02" + raw[1:]), username="alice")
    with pytest.raises(BackupDecryptError, match="truncated"):
        decrypt_backup(key, b64encode(raw[:20]), username="alice")
    with pytest.raises(BackupDecryptError, match="base64"):
        decrypt_backup(key, "not base64!", username="alice")


def test_repr_hides_secret() -> None:
    text = repr(FIXED)
    compact = FIXED.to_text().replace(" ", "")
    assert FIXED.to_text() not in text
    assert compact not in text.upper()
    assert bytes(range(28)).hex() not in text
    assert FIXED.backup_key().hex() not in text
    assert text == f"RecoveryKey(auth_public_key={FIXED.auth_public_key()})"
