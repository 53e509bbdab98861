"""The attachment cipher: chunked AES-256-GCM with a fresh key per file.

A file is cut into chunks of ``CHUNK_SIZE`` plaintext bytes (the last one may be
shorter, or empty for an empty file); each chunk is sealed on its own, so a file of
any size streams through in constant memory and a corrupted chunk is caught when
it is read, before anything after it is produced. The construction is the STREAM
one (Hoang, Reyhanitabar, Rogaway, Vizár 2015) that age and Tink's streaming AEAD
use:

- key: 32 random bytes, new for every file (it travels only inside the E2EE
  message), so nonces never repeat under one key;
- nonce of chunk ``i``: ``i`` as 11 big-endian bytes, then one byte that is ``1``
  for the final chunk and ``0`` otherwise;
- associated data: ``bisik.attachment.v1`` (the format version).

The index in the nonce stops chunks from being reordered, dropped or duplicated;
the final flag stops a stream from being truncated at a chunk boundary (a chunk
sealed as "not final" does not open as the final one). Encryption is deterministic
for a given key, which is what lets an interrupted upload resume from any chunk:
re-encrypting chunk ``i`` gives the very bytes the server already holds.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bisik.crypto._encoding import b64decode, b64encode
from bisik.crypto._errors import AttachmentDecryptError, CryptoError

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
KEY_SIZE = 32
_AAD = b"bisik.attachment.v1"
_MAX_CHUNKS = 2**88  # the 11-byte counter


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def ciphertext_size(plaintext_size: int) -> int:
    """Bytes of ciphertext for ``plaintext_size`` bytes of file (one tag per chunk)."""
    if plaintext_size < 0:
        raise ValueError("negative size")
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return plaintext_size + chunks * TAG_SIZE


class AttachmentKey:
    """The random AES-256 key of one attachment. Its ``repr`` never shows it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise CryptoError(f"an attachment key is {KEY_SIZE} bytes, got {len(key)}")
        self._key = bytes(key)

    @classmethod
    def generate(cls) -> AttachmentKey:
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_base64(cls, text: str) -> AttachmentKey:
        return cls(b64decode(text))

    def to_base64(self) -> str:
        return b64encode(self._key)

    def _aead(self) -> AESGCM:
        return AESGCM(self._key)

    def __repr__(self) -> str:
        return "AttachmentKey(<secret>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttachmentKey) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)


class AttachmentEncryptor:
    """Encrypts a stream: feed plaintext to ``update``, end with ``finalize``.

    Args:
        key: the file's key.
        start_chunk: resume at this chunk: the plaintext fed in must then start at
            byte ``start_chunk * CHUNK_SIZE`` of the file, and the output is the
            ciphertext from byte ``start_chunk * SEALED_CHUNK_SIZE`` on.
    """

    def __init__(self, key: AttachmentKey, *, start_chunk: int = 0) -> None:
        self._aead = key._aead()
        self._index = start_chunk
        self._buf = bytearray()
        self._done = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext of every chunk that ``data`` completed (maybe none yet).

        A full chunk is held back until more data arrives, since only
        ``finalize`` knows which chunk is the last one.
        """
        if self._done:
            raise CryptoError("encryptor already finalized")
        self._buf += data
        if len(self._buf) <= CHUNK_SIZE:
            return b""
        out = bytearray()
        view = memoryview(self._buf)
        start = 0
        # Keep at least one byte back: the final chunk is never empty unless the file is.
        while len(self._buf) - start > CHUNK_SIZE:
            out += self._aead.encrypt(
                _nonce(self._index, False), view[start : start + CHUNK_SIZE], _AAD
            )
            self._index += 1
            start += CHUNK_SIZE
        view.release()
        del self._buf[:start]
        return bytes(out)

    def finalize(self) -> bytes:
        """The last chunk, sealed as final."""
        if self._done:
            raise CryptoError("encryptor already finalized")
        self._done = True
        if self._index >= _MAX_CHUNKS:
            raise CryptoError("file too large for the attachment cipher")
        sealed = self._aead.encrypt(_nonce(self._index, True), bytes(self._buf), _AAD)
        self._buf.clear()
        return sealed


class AttachmentDecryptor:
    """Decrypts and authenticates a stream of ciphertext.

    ``update`` returns plaintext only from chunks whose tag verified; ``finalize``
    checks that the stream ended on a chunk sealed as final (not truncated).
    Raises ``AttachmentDecryptError`` (with the chunk index) on any tampering.
    """

    def __init__(self, key: AttachmentKey) -> None:
        self._aead = key._aead()
        self._index = 0
        self._buf = bytearray()
        self._done = False

    def _open(self, sealed: bytes | memoryview, final: bool) -> bytes:
        try:
            return self._aead.decrypt(_nonce(self._index, final), sealed, _AAD)
        except InvalidTag:
            reason = "truncated or tampered final chunk" if final else "tampered chunk"
            raise AttachmentDecryptError(reason, chunk=self._index) from None

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._done:
            raise CryptoError("decryptor already finalized")
        self._buf += data
        if len(self._buf) <= SEALED_CHUNK_SIZE:
            return b""
        out = bytearray()
        view = memoryview(self._buf)
        start = 0
        while len(self._buf) - start > SEALED_CHUNK_SIZE:
            out += self._open(view[start : start + SEALED_CHUNK_SIZE], False)
            self._index += 1
            start += SEALED_CHUNK_SIZE
        view.release()
        del self._buf[:start]
        return bytes(out)

    def finalize(self) -> bytes:
        if self._done:
            raise CryptoError("decryptor already finalized")
        self._done = True
        if len(self._buf) < TAG_SIZE:
            raise AttachmentDecryptError("truncated stream", chunk=self._index)
        plain = self._open(bytes(self._buf), True)
        self._buf.clear()
        return plain


def encrypt_attachment(key: AttachmentKey, data: bytes) -> bytes:
    """The whole ciphertext of a small file held in memory."""
    enc = AttachmentEncryptor(key)
    return enc.update(data) + enc.finalize()


def decrypt_attachment(key: AttachmentKey, data: bytes) -> bytes:
    """The plaintext of a small ciphertext held in memory (verified)."""
    dec = AttachmentDecryptor(key)
    return dec.update(data) + dec.finalize()
