"""Safety numbers: a 60-digit fingerprint two users compare to verify each other.

The construction follows Signal's ``NumericFingerprintGenerator`` (iterated
SHA-512 over version, key and stable identifier; 5 digits from each 5-byte
chunk), over raw Ed25519 identity keys and Bisik usernames. It is therefore
not interchangeable with Signal's numbers, only built the same way.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bisik.crypto._encoding import b64decode
from bisik.crypto._errors import CryptoError

FINGERPRINT_VERSION = 0
ITERATIONS = 5200
_CHUNKS = 6
_CHUNK_LEN = 5


def _identity_bytes(identity_key: str) -> bytes:
    raw = b64decode(identity_key)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise CryptoError("identity key is not a 32-byte Ed25519 public key") from None
    return raw


def _fingerprint_digits(username: str, identity_key: str) -> str:
    """One party's 30 digits."""
    if not username:
        raise CryptoError("safety number needs a username")
    key = _identity_bytes(identity_key)
    digest = FINGERPRINT_VERSION.to_bytes(2, "big") + key + username.encode()
    for _ in range(ITERATIONS):
        # Appending the key every round, as Signal does, keeps each round keyed.
        digest = hashlib.sha512(digest + key).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + _CHUNK_LEN], 'big') % 100_000:05d}"
        for i in range(0, _CHUNKS * _CHUNK_LEN, _CHUNK_LEN)
    )


def safety_number(
    local_username: str, local_identity_key: str, remote_username: str, remote_identity_key: str
) -> str:
    """The safety number both users see for their conversation.

    Args:
        local_username: this user's name.
        local_identity_key: this user's Ed25519 identity key, unpadded base64.
        remote_username: the other user's name.
        remote_identity_key: the other user's identity key, unpadded base64.

    Returns:
        60 digits as 12 groups of 5 separated by spaces. The two 30-digit halves
        are ordered by username, so swapping local and remote gives the same string.

    Raises:
        CryptoError: an identity key is not valid base64 Ed25519, or a username is empty.
    """
    local = (local_username, _fingerprint_digits(local_username, local_identity_key))
    remote = (remote_username, _fingerprint_digits(remote_username, remote_identity_key))
    digits = "".join(half for _, half in sorted((local, remote)))
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
