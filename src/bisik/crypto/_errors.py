from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by ``bisik.crypto``."""


class SignatureError(CryptoError):
    """A signature did not verify against the key it claims."""


class WrongPassword(CryptoError):
    """The password does not unlock this key file."""

    def __init__(self) -> None:
        super().__init__("wrong password")


class KeyFileError(CryptoError):
    """The key file is missing, malformed or of an unknown version."""


class OlmDecryptError(CryptoError):
    """An Olm message could not be decrypted by any session with its sender.

    Attributes:
        sender_key: the sender device's Curve25519 key.
        sessions_tried: how many existing sessions were tried.
    """

    def __init__(self, sender_key: str, sessions_tried: int, reason: str) -> None:
        super().__init__(
            f"cannot decrypt Olm message from {sender_key} "
            f"({sessions_tried} sessions tried): {reason}"
        )
        self.sender_key = sender_key
        self.sessions_tried = sessions_tried
        self.reason = reason


class PairingCodeError(CryptoError):
    """A device-linking pairing code is malformed, of an unknown version, or invalid."""


class LinkDecryptError(CryptoError):
    """A device-linking message was tampered with, replayed, reordered or not for us.

    Attributes:
        expected: the message counter this side was waiting for.
        got: the counter the message carried, or ``None`` if it was unreadable.
    """

    def __init__(self, reason: str, *, expected: int, got: int | None = None) -> None:
        super().__init__(f"cannot open link message: {reason}")
        self.reason = reason
        self.expected = expected
        self.got = got


class RecoveryKeyError(CryptoError):
    """A typed recovery key has the wrong length, a bad character or a bad checksum."""


class BackupDecryptError(CryptoError):
    """A key backup could not be decrypted: wrong recovery key, tampered or unknown version."""


class DeviceNameError(CryptoError):
    """A device name is too long, or its encrypted blob does not decrypt."""


class AttachmentDecryptError(CryptoError):
    """An attachment's ciphertext is corrupted, tampered with or truncated.

    Attributes:
        chunk: the index of the chunk that failed to open.
    """

    def __init__(self, reason: str, *, chunk: int) -> None:
        super().__init__(f"attachment does not decrypt at chunk {chunk}: {reason}")
        self.reason = reason
        self.chunk = chunk


class MegolmDecryptError(CryptoError):
    """A Megolm message is malformed, forged, or older than the keys we hold."""


class MissingGroupKey(MegolmDecryptError):
    """We hold no key (or only a later one) for this Megolm message yet."""
