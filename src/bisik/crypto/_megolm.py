"""Megolm (groups, sender keys) through vodozemac.

Each sending device keeps one outbound session per group; its session key
goes to every member device over Olm. Receivers keep inbound sessions, which
can be exported from any index onwards (to answer a key request without
revealing earlier messages). Megolm itself accepts a replayed message: the
caller must track ``(session_id, message_index)``.

Wire form of a group message: ``<session_id>:<ciphertext>``, both unpadded
base64, so a receiver finds the session (or knows which key to ask for)
before decrypting.
"""

from __future__ import annotations

from typing import NamedTuple

import vodozemac

from bisik.crypto._errors import CryptoError, MegolmDecryptError, MissingGroupKey


class MegolmHeader(NamedTuple):
    session_id: str
    message_index: int
    ciphertext: str


def parse_megolm(body: str) -> MegolmHeader:
    """Split a group message into its session id, index and ciphertext."""
    session_id, sep, ciphertext = body.partition(":")
    if not sep or not session_id or len(session_id) > 64:
        raise MegolmDecryptError("not a Megolm message")
    try:
        index = vodozemac.MegolmMessage.from_base64(ciphertext).message_index()
    except Exception as exc:
        raise MegolmDecryptError(f"malformed Megolm message: {exc}") from None
    return MegolmHeader(session_id, index, ciphertext)


class MegolmOutbound:
    """A sending device's session for one group."""

    def __init__(self, session: vodozemac.GroupSession) -> None:
        self._session = session

    @classmethod
    def create(cls) -> MegolmOutbound:
        return cls(vodozemac.GroupSession())

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes) -> MegolmOutbound:
        try:
            return cls(vodozemac.GroupSession.from_pickle(pickle, pickle_key))
        except Exception as exc:
            raise CryptoError(f"cannot load group session: {exc}") from None

    def pickle(self, pickle_key: bytes) -> str:
        return self._session.pickle(pickle_key)

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def message_index(self) -> int:
        """The index the next message will use."""
        return self._session.message_index

    def session_key(self) -> str:
        """The key that decrypts this session from its current index on."""
        return self._session.session_key.to_base64()

    def encrypt(self, plaintext: bytes) -> str:
        """Encrypt; the caller must persist the session before using the result."""
        message = self._session.encrypt(plaintext)
        return f"{self._session.session_id}:{message.to_base64()}"


class MegolmInbound:
    """A receiving device's copy of one sender's session."""

    def __init__(self, session: vodozemac.InboundGroupSession) -> None:
        self._session = session

    @classmethod
    def from_session_key(cls, key: str) -> MegolmInbound:
        """From an outbound session's ``session_key`` (carries its signing key)."""
        try:
            return cls(vodozemac.InboundGroupSession(vodozemac.SessionKey(key)))
        except Exception as exc:
            raise CryptoError(f"invalid group session key: {exc}") from None

    @classmethod
    def from_export(cls, key: str) -> MegolmInbound:
        """From ``export_at`` of another inbound copy (a forwarded key)."""
        try:
            return cls(
                vodozemac.InboundGroupSession.import_session(vodozemac.ExportedSessionKey(key))
            )
        except Exception as exc:
            raise CryptoError(f"invalid exported group session key: {exc}") from None

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes) -> MegolmInbound:
        try:
            return cls(vodozemac.InboundGroupSession.from_pickle(pickle, pickle_key))
        except Exception as exc:
            raise CryptoError(f"cannot load inbound group session: {exc}") from None

    def pickle(self, pickle_key: bytes) -> str:
        return self._session.pickle(pickle_key)

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def first_known_index(self) -> int:
        return self._session.first_known_index

    def export_at(self, index: int) -> str | None:
        """The key from ``index`` on, or ``None`` if we do not hold that far back."""
        exported = self._session.export_at(index)
        return None if exported is None else exported.to_base64()

    def decrypt(self, header: MegolmHeader) -> bytes:
        """Decrypt and verify the sender's signature (not replays: see module doc)."""
        if header.session_id != self._session.session_id:
            raise MegolmDecryptError("message belongs to another session")
        if header.message_index < self._session.first_known_index:
            raise MissingGroupKey(
                f"message {header.message_index} precedes our key "
                f"(from {self._session.first_known_index})"
            )
        try:
            message = vodozemac.MegolmMessage.from_base64(header.ciphertext)
            return bytes(self._session.decrypt(message).plaintext)
        except Exception as exc:
            raise MegolmDecryptError(f"cannot decrypt group message: {exc}") from None
