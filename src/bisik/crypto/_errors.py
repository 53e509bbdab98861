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
