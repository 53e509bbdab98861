from __future__ import annotations

import os

import pytest

from bisik.crypto import (
    AttachmentDecryptError,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentKey,
    CryptoError,
    ciphertext_size,
    decrypt_attachment,
    encrypt_attachment,
)
from bisik.crypto._attachment import CHUNK_SIZE, SEALED_CHUNK_SIZE, TAG_SIZE


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]
)
def test_round_trip_and_size(size: int) -> None:
    key = AttachmentKey.generate()
    data = os.urandom(size)
    sealed = encrypt_attachment(key, data)
    assert len(sealed) == ciphertext_size(size)
    assert decrypt_attachment(key, sealed) == data


def test_streaming_in_odd_pieces_matches_one_shot() -> None:
    key = AttachmentKey.generate()
    data = os.urandom(5 * CHUNK_SIZE + 123)
    enc = AttachmentEncryptor(key)
    out = bytearray()
    for start in range(0, len(data), 10_007):
        out += enc.update(data[start : start + 10_007])
    out += enc.finalize()
    assert bytes(out) == encrypt_attachment(key, data)
    dec = AttachmentDecryptor(key)
    plain = bytearray()
    for start in range(0, len(out), 9_973):
        plain += dec.update(out[start : start + 9_973])
    plain += dec.finalize()
    assert bytes(plain) == data


def test_resuming_at_a_chunk_gives_the_same_bytes() -> None:
    key = AttachmentKey.generate()
    data = os.urandom(4 * CHUNK_SIZE + 99)
    whole = encrypt_attachment(key, data)
    enc = AttachmentEncryptor(key, start_chunk=2)
    tail = enc.update(data[2 * CHUNK_SIZE :]) + enc.finalize()
    assert tail == whole[2 * SEALED_CHUNK_SIZE :]


def test_fresh_key_each_time_and_ciphertext_hides_plaintext() -> None:
    data = b"attack at dawn" * 100
    a = encrypt_attachment(AttachmentKey.generate(), data)
    b = encrypt_attachment(AttachmentKey.generate(), data)
    assert a != b
    assert b"attack at dawn" not in a


def test_flipped_bit_is_caught_at_its_chunk() -> None:
    key = AttachmentKey.generate()
    sealed = bytearray(encrypt_attachment(key, os.urandom(3 * CHUNK_SIZE)))
    sealed[SEALED_CHUNK_SIZE + 5] ^= 1
    dec = AttachmentDecryptor(key)
    with pytest.raises(AttachmentDecryptError) as info:
        dec.update(bytes(sealed))
    assert info.value.chunk == 1


def test_truncation_at_a_chunk_boundary_is_caught() -> None:
    key = AttachmentKey.generate()
    sealed = encrypt_attachment(key, os.urandom(3 * CHUNK_SIZE + 10))
    with pytest.raises(AttachmentDecryptError) as info:
        decrypt_attachment(key, sealed[: 2 * SEALED_CHUNK_SIZE])
    assert info.value.chunk == 1
    with pytest.raises(AttachmentDecryptError):
        decrypt_attachment(key, sealed[: TAG_SIZE - 1])
    with pytest.raises(AttachmentDecryptError):
        decrypt_attachment(key, b"")


def test_reordered_or_extended_chunks_are_caught() -> None:
    key = AttachmentKey.generate()
    sealed = encrypt_attachment(key, os.urandom(2 * CHUNK_SIZE + 10))
    first, second = sealed[:SEALED_CHUNK_SIZE], sealed[SEALED_CHUNK_SIZE : 2 * SEALED_CHUNK_SIZE]
    with pytest.raises(AttachmentDecryptError):
        decrypt_attachment(key, second + first + sealed[2 * SEALED_CHUNK_SIZE :])
    with pytest.raises(AttachmentDecryptError):
        decrypt_attachment(key, sealed + sealed[-TAG_SIZE:])


def test_wrong_key_fails() -> None:
    sealed = encrypt_attachment(AttachmentKey.generate(), b"hello")
    with pytest.raises(AttachmentDecryptError):
        decrypt_attachment(AttachmentKey.generate(), sealed)


def test_key_encoding_and_repr_hide_the_secret() -> None:
    key = AttachmentKey.generate()
    text = key.to_base64()
    assert AttachmentKey.from_base64(text) == key
    assert text not in repr(key)
    assert "secret" in repr(key)
    with pytest.raises(CryptoError):
        AttachmentKey(b"short")
    with pytest.raises(CryptoError):
        AttachmentKey.from_base64("!!")


def test_finalize_twice_is_refused() -> None:
    enc = AttachmentEncryptor(AttachmentKey.generate())
    enc.finalize()
    with pytest.raises(CryptoError):
        enc.finalize()
    with pytest.raises(CryptoError):
        enc.update(b"x")
