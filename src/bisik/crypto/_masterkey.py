"""Password -> Argon2id -> key-encryption key -> wrapped random master key.

The master key never changes for the life of a profile; changing the password
re-wraps it. Every local secret (database key, pickle key, ...) is derived
from the master key with HKDF under its own label.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bisik.crypto._encoding import b64decode, b64encode, canonical_json
from bisik.crypto._errors import CryptoError, KeyFileError, WrongPassword

KEYFILE_VERSION = 1

# What a key file may ask of Argon2id. The lower bounds are Argon2's own; the
# upper ones keep an edited key file from making an unlock take hours or more
# memory than a machine has (and stay far above any cost worth choosing).
MAX_TIME_COST = 64
MAX_MEMORY_COST_KIB = 4 * 1024 * 1024
MAX_PARALLELISM = 64


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost: t=3, m=64 MiB, p=4 by default (about 125 ms on a 2-core box).

    Raises:
        ValueError: a parameter out of range (``time_cost`` 1-64, ``parallelism``
            1-64, ``memory_cost_kib`` from 8 per lane to 4 GiB).
    """

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 4

    def __post_init__(self) -> None:
        for name, low, high in (
            ("time_cost", 1, MAX_TIME_COST),
            ("parallelism", 1, MAX_PARALLELISM),
            ("memory_cost_kib", 8 * max(1, self.parallelism), MAX_MEMORY_COST_KIB),
        ):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"Argon2id {name} must be {low}-{high}, not {value!r}")


class MasterKey:
    """The profile's 256-bit master key. Never printed."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise CryptoError("master key must be 32 bytes")
        self._key = key

    def derive(self, purpose: str, length: int = 32) -> bytes:
        """A subkey for one purpose (``"database"``, ``"pickle"``, ...)."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=None,
            info=b"bisik/v1/" + purpose.encode(),
        )
        return hkdf.derive(self._key)

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"


def _kek(password: str, salt: bytes, params: KdfParams) -> bytes:
    try:
        return hash_secret_raw(
            password.encode(),
            salt,
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
            hash_len=32,
            type=Type.ID,
        )
    except HashingError as exc:
        # In range, and still refused: most likely the memory could not be allocated.
        raise KeyFileError(f"cannot derive the key with {params}: {exc}") from None


@dataclass(frozen=True)
class KeyFile:
    """The on-disk record that wraps the master key under a password."""

    params: KdfParams
    salt: bytes
    nonce: bytes
    wrapped: bytes

    def _aad(self) -> bytes:
        # Binding the KDF parameters means an attacker who edits them to cheap
        # values gets a failed unwrap, not a faster brute force on our side.
        return canonical_json({"v": KEYFILE_VERSION, "kdf": "argon2id", **asdict(self.params)})

    @classmethod
    def wrap(cls, master: bytes, password: str, params: KdfParams | None = None) -> KeyFile:
        params = params or KdfParams()
        salt = os.urandom(16)
        nonce = os.urandom(12)
        draft = cls(params, salt, nonce, b"")
        wrapped = AESGCM(_kek(password, salt, params)).encrypt(nonce, master, draft._aad())
        return cls(params, salt, nonce, wrapped)

    def unlock(self, password: str) -> MasterKey:
        """Unwrap the master key.

        Raises:
            WrongPassword: if the password (or a tampered file) fails the AEAD check.
        """
        kek = _kek(password, self.salt, self.params)
        try:
            return MasterKey(AESGCM(kek).decrypt(self.nonce, self.wrapped, self._aad()))
        except InvalidTag:
            raise WrongPassword() from None

    def rewrap(self, old_password: str, new_password: str) -> KeyFile:
        """The same master key under a new password (raises ``WrongPassword``)."""
        master = self.unlock(old_password)
        return KeyFile.wrap(master._key, new_password, self.params)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": KEYFILE_VERSION,
                "kdf": "argon2id",
                **asdict(self.params),
                "salt": b64encode(self.salt),
                "nonce": b64encode(self.nonce),
                "wrapped": b64encode(self.wrapped),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> KeyFile:
        try:
            raw = json.loads(text)
            if raw["v"] != KEYFILE_VERSION or raw["kdf"] != "argon2id":
                raise KeyFileError(f"unsupported key file version {raw.get('v')!r}")
            params = KdfParams(
                int(raw["time_cost"]), int(raw["memory_cost_kib"]), int(raw["parallelism"])
            )
            return cls(
                params, b64decode(raw["salt"]), b64decode(raw["nonce"]), b64decode(raw["wrapped"])
            )
        except (KeyError, TypeError, ValueError, CryptoError) as exc:
            if isinstance(exc, KeyFileError):
                raise
            raise KeyFileError(f"malformed key file: {exc}") from None

    def __repr__(self) -> str:
        return f"KeyFile(params={self.params})"


def create_master_key(password: str, params: KdfParams | None = None) -> tuple[KeyFile, MasterKey]:
    """A fresh random master key, and its key file wrapped under ``password``."""
    master = os.urandom(32)
    return KeyFile.wrap(master, password, params), MasterKey(master)
