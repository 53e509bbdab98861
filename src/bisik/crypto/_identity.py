"""The user's Ed25519 identity key, which signs each of the user's devices."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bisik.crypto._encoding import b64decode, b64encode
from bisik.crypto._errors import CryptoError, SignatureError


class IdentityKey:
    """A user's identity signing key. Its ``repr`` shows only the public key."""

    __slots__ = ("_private",)

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> str:
        raw = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return b64encode(raw)

    def sign(self, message: bytes) -> str:
        return b64encode(self._private.sign(message))

    def __repr__(self) -> str:
        return f"IdentityKey(public={self.public_key})"


def verify_ed25519(public_key: str, message: bytes, signature: str) -> None:
    """Check an Ed25519 signature over ``message``.

    Args:
        public_key: the signer's key, unpadded base64.
        message: the exact signed bytes (see ``bisik.crypto._payloads``).
        signature: unpadded base64.

    Raises:
        SignatureError: if the key or signature is malformed or does not verify.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(b64decode(public_key))
        key.verify(b64decode(signature), message)
    except (InvalidSignature, ValueError, CryptoError) as exc:
        raise SignatureError("signature does not verify") from exc
