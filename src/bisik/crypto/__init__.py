"""Bisik's cryptography: synchronous, no I/O, the only user of vodozemac and raw primitives.

The server may import only the verification helpers (``verify_ed25519`` and
the ``*_payload`` builders); everything else is for clients.
"""

from bisik.crypto._encoding import b64decode, b64encode, canonical_json
from bisik.crypto._errors import (
    CryptoError,
    KeyFileError,
    OlmDecryptError,
    SignatureError,
    WrongPassword,
)
from bisik.crypto._identity import IdentityKey, verify_ed25519
from bisik.crypto._masterkey import KdfParams, KeyFile, MasterKey, create_master_key
from bisik.crypto._olm import OlmMachine, SessionStore
from bisik.crypto._payloads import auth_payload, device_payload, one_time_key_payload

__all__ = [
    "CryptoError",
    "IdentityKey",
    "KdfParams",
    "KeyFile",
    "KeyFileError",
    "MasterKey",
    "OlmDecryptError",
    "OlmMachine",
    "SessionStore",
    "SignatureError",
    "WrongPassword",
    "auth_payload",
    "b64decode",
    "b64encode",
    "canonical_json",
    "create_master_key",
    "device_payload",
    "one_time_key_payload",
    "verify_ed25519",
]
