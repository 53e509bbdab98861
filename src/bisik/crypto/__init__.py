"""Bisik's cryptography: synchronous, no I/O, the only user of vodozemac and raw primitives.

The server may import only the verification helpers (``verify_ed25519`` and
the ``*_payload`` builders); everything else is for clients.
"""

from bisik.crypto._attachment import (
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentKey,
    ciphertext_size,
    decrypt_attachment,
    encrypt_attachment,
)
from bisik.crypto._encoding import b64decode, b64encode, canonical_json
from bisik.crypto._errors import (
    AttachmentDecryptError,
    BackupDecryptError,
    CryptoError,
    DeviceNameError,
    KeyFileError,
    LinkDecryptError,
    MegolmDecryptError,
    MissingGroupKey,
    OlmDecryptError,
    PairingCodeError,
    RecoveryKeyError,
    SignatureError,
    WrongPassword,
)
from bisik.crypto._identity import IdentityKey, verify_ed25519
from bisik.crypto._link import SAS_EMOJI, LinkChannel, PairingCode, new_device_keypair
from bisik.crypto._masterkey import KdfParams, KeyFile, MasterKey, create_master_key
from bisik.crypto._megolm import MegolmHeader, MegolmInbound, MegolmOutbound, parse_megolm
from bisik.crypto._names import MAX_DEVICE_NAME_CHARS, decrypt_device_name, encrypt_device_name
from bisik.crypto._olm import OlmMachine, SessionStore
from bisik.crypto._payloads import (
    auth_payload,
    backup_auth_payload,
    device_payload,
    one_time_key_payload,
)
from bisik.crypto._recovery import RecoveryKey, decrypt_backup, encrypt_backup
from bisik.crypto._safety import safety_number

__all__ = [
    "MAX_DEVICE_NAME_CHARS",
    "SAS_EMOJI",
    "AttachmentDecryptError",
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "AttachmentKey",
    "BackupDecryptError",
    "CryptoError",
    "DeviceNameError",
    "IdentityKey",
    "KdfParams",
    "KeyFile",
    "KeyFileError",
    "LinkChannel",
    "LinkDecryptError",
    "MasterKey",
    "MegolmDecryptError",
    "MegolmHeader",
    "MegolmInbound",
    "MegolmOutbound",
    "MissingGroupKey",
    "OlmDecryptError",
    "OlmMachine",
    "PairingCode",
    "PairingCodeError",
    "RecoveryKey",
    "RecoveryKeyError",
    "SessionStore",
    "SignatureError",
    "WrongPassword",
    "auth_payload",
    "b64decode",
    "b64encode",
    "backup_auth_payload",
    "canonical_json",
    "ciphertext_size",
    "create_master_key",
    "decrypt_attachment",
    "decrypt_backup",
    "decrypt_device_name",
    "device_payload",
    "encrypt_attachment",
    "encrypt_backup",
    "encrypt_device_name",
    "new_device_keypair",
    "one_time_key_payload",
    "parse_megolm",
    "safety_number",
    "verify_ed25519",
]
