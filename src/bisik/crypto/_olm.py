"""Olm (1:1, per device pair) through vodozemac, behind a narrow store interface.

``OlmMachine`` does no I/O: it is handed a ``SessionStore`` and persists the
account and each session through it after *every* encrypt and decrypt, since
a stale pickle would reuse a message key. The caller wraps each call in a
store transaction; if that transaction rolls back it must call
``forget_cached_sessions`` so the in-memory ratchets match the database again.

Many calls inside one store transaction can use ``saving_once``: each session
(and the account) is written once, as the block ends, instead of after every
call; the durability is the same, since nothing is durable before the commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, cast

import vodozemac

from bisik.crypto._encoding import b64decode, b64encode
from bisik.crypto._errors import CryptoError, OlmDecryptError
from bisik.crypto._payloads import one_time_key_payload

PRE_KEY = 0
NORMAL = 1


class SessionStore(Protocol):
    """Where an ``OlmMachine`` keeps its pickles (already encrypted by vodozemac)."""

    def save_account(self, pickle: str) -> None: ...

    def load_sessions(self, their_key: str) -> list[str]:
        """Pickles of the sessions with one device, most recently used first."""
        ...

    def save_session(self, their_key: str, session_id: str, pickle: str) -> None: ...


class _FallbackAccount(Protocol):
    # Present at runtime in vodozemac 0.10 but missing from its type stubs.
    @property
    def fallback_key(self) -> dict[str, vodozemac.Curve25519PublicKey]: ...

    def generate_fallback_key(self) -> None: ...


class OlmMachine:
    """One device's Olm account and its sessions with other devices."""

    def __init__(self, account: vodozemac.Account, pickle_key: bytes, store: SessionStore) -> None:
        if len(pickle_key) != 32:
            raise CryptoError("pickle key must be 32 bytes")
        self._account = account
        self._pickle_key = pickle_key
        self._store = store
        self._sessions: dict[str, list[vodozemac.Session]] = {}
        # Inside ``saving_once``: what its end writes (session id -> (their key,
        # session)) and whether the account changed; ``None`` outside it.
        self._unsaved: dict[str, tuple[str, vodozemac.Session]] | None = None
        self._account_unsaved = False

    @classmethod
    def create(cls, pickle_key: bytes, store: SessionStore) -> OlmMachine:
        machine = cls(vodozemac.Account(), pickle_key, store)
        machine._save_account()
        return machine

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes, store: SessionStore) -> OlmMachine:
        try:
            account = vodozemac.Account.from_pickle(pickle, pickle_key)
        except vodozemac.PickleException as exc:
            raise CryptoError("cannot unpickle the Olm account") from exc
        return cls(account, pickle_key, store)

    def __repr__(self) -> str:
        return f"OlmMachine(curve25519={self.curve25519}, ed25519={self.ed25519})"

    # -- identity -------------------------------------------------------------

    @property
    def curve25519(self) -> str:
        return self._account.curve25519_key.to_base64()

    @property
    def ed25519(self) -> str:
        return self._account.ed25519_key.to_base64()

    def sign(self, message: bytes) -> str:
        return self._account.sign(message).to_base64()

    # -- one-time and fallback keys -----------------------------------------------

    def generate_one_time_keys(self, count: int) -> list[dict[str, str]]:
        """Create ``count`` keys and return them signed, ready to upload.

        Call ``mark_keys_as_published`` once the server has stored them.
        """
        self._account.generate_one_time_keys(count)
        self._save_account()
        return self.unpublished_one_time_keys()

    def unpublished_one_time_keys(self) -> list[dict[str, str]]:
        return [
            self._signed(key_id, key.to_base64(), fallback=False)
            for key_id, key in self._account.one_time_keys.items()
        ]

    def generate_fallback_key(self) -> dict[str, str]:
        acct = cast(_FallbackAccount, self._account)
        acct.generate_fallback_key()
        self._save_account()
        signed = self.unpublished_fallback_key()
        assert signed is not None
        return signed

    def unpublished_fallback_key(self) -> dict[str, str] | None:
        acct = cast(_FallbackAccount, self._account)
        for key_id, key in acct.fallback_key.items():
            return self._signed(key_id, key.to_base64(), fallback=True)
        return None

    def mark_keys_as_published(self) -> None:
        self._account.mark_keys_as_published()
        self._save_account()

    def _signed(self, key_id: str, key: str, *, fallback: bool) -> dict[str, str]:
        payload = one_time_key_payload(key_id=key_id, key=key, fallback=fallback)
        return {"key_id": key_id, "key": key, "signature": self.sign(payload)}

    # -- sessions -------------------------------------------------------------

    def has_session(self, their_key: str) -> bool:
        return bool(self._load(their_key))

    def create_outbound_session(self, their_key: str, one_time_key: str) -> None:
        """Start a session with a device from one of its claimed one-time keys."""
        try:
            session = self._account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_base64(their_key),
                vodozemac.Curve25519PublicKey.from_base64(one_time_key),
            )
        except (vodozemac.KeyException, ValueError) as exc:
            raise CryptoError(f"cannot start a session with {their_key}: {exc}") from exc
        self._sessions.setdefault(their_key, []).insert(0, session)
        self._save_session(their_key, session)

    def encrypt(self, their_key: str, plaintext: bytes) -> tuple[int, str]:
        """Encrypt with the most recently used session with that device.

        Returns:
            ``(message_type, base64_body)``; type 0 is a pre-key message.

        Raises:
            CryptoError: if there is no session (claim a one-time key first).
        """
        sessions = self._load(their_key)
        if not sessions:
            raise CryptoError(f"no Olm session with {their_key}")
        session = sessions[0]
        message_type, body = session.encrypt(plaintext).to_parts()
        self._save_session(their_key, session)
        return message_type, b64encode(body)

    def decrypt(self, their_key: str, message_type: int, body: str) -> bytes:
        """Decrypt a message from the device whose Curve25519 key is ``their_key``.

        A pre-key message that matches no existing session creates a new inbound
        session (consuming one of our one-time keys, so the account is saved too).

        Raises:
            OlmDecryptError: malformed, tampered, replayed or from an unknown session.
        """
        try:
            message = vodozemac.AnyOlmMessage.from_parts(message_type, b64decode(body))
        except (vodozemac.DecodeException, CryptoError, ValueError) as exc:
            raise OlmDecryptError(their_key, 0, f"malformed message: {exc}") from exc
        sessions = self._load(their_key)
        pre_key = message.to_pre_key() if message_type == PRE_KEY else None
        if pre_key is not None:
            for session in sessions:
                if session.session_matches(pre_key):
                    return self._decrypt_with(their_key, session, message, len(sessions))
            try:
                session, plaintext = self._account.create_inbound_session(
                    vodozemac.Curve25519PublicKey.from_base64(their_key), pre_key
                )
            except (vodozemac.SessionCreationException, vodozemac.KeyException, ValueError) as e:
                raise OlmDecryptError(their_key, len(sessions), str(e)) from e
            self._sessions.setdefault(their_key, []).insert(0, session)
            self._save_session(their_key, session)
            self._save_account()
            return plaintext
        last_error = "no session with this device"
        for session in sessions:
            try:
                return self._decrypt_with(their_key, session, message, len(sessions))
            except OlmDecryptError as exc:
                last_error = exc.reason
        raise OlmDecryptError(their_key, len(sessions), last_error)

    def _decrypt_with(
        self,
        their_key: str,
        session: vodozemac.Session,
        message: vodozemac.AnyOlmMessage,
        tried: int,
    ) -> bytes:
        try:
            plaintext = session.decrypt(message)
        except vodozemac.OlmDecryptionException as exc:
            raise OlmDecryptError(their_key, tried, str(exc)) from exc
        sessions = self._sessions[their_key]
        sessions.remove(session)
        sessions.insert(0, session)
        self._save_session(their_key, session)
        return plaintext

    @contextlib.contextmanager
    def saving_once(self) -> Iterator[None]:
        """Write each session used in the block, and the account, once as it
        ends; to be entered *inside* the store transaction that commits them.

        Within the block the in-memory ratchets are the truth and are what the
        block's end writes (a message that decrypted but is then refused keeps
        its key spent), so ``forget_cached_sessions`` does nothing there. If
        the block raises, nothing is written and every cached session is
        dropped: the caller's transaction rolls back.
        """
        if self._unsaved is not None:
            yield
            return
        self._unsaved = {}
        self._account_unsaved = False
        try:
            yield
            unsaved = self._unsaved
            for their_key, session in unsaved.values():
                self._store.save_session(
                    their_key, session.session_id, session.pickle(self._pickle_key)
                )
            if self._account_unsaved:
                self._store.save_account(self._account.pickle(self._pickle_key))
        except BaseException:
            self._sessions.clear()
            raise
        finally:
            self._unsaved = None
            self._account_unsaved = False

    def forget_cached_sessions(self) -> None:
        """Drop in-memory sessions so the next use reloads them from the store
        (not inside ``saving_once``: there they are what will be stored)."""
        if self._unsaved is None:
            self._sessions.clear()

    def _load(self, their_key: str) -> list[vodozemac.Session]:
        cached = self._sessions.get(their_key)
        if cached is None:
            cached = [
                vodozemac.Session.from_pickle(p, self._pickle_key)
                for p in self._store.load_sessions(their_key)
            ]
            self._sessions[their_key] = cached
        return cached

    def _save_session(self, their_key: str, session: vodozemac.Session) -> None:
        if self._unsaved is not None:
            self._unsaved[session.session_id] = (their_key, session)
            return
        self._store.save_session(their_key, session.session_id, session.pickle(self._pickle_key))

    def _save_account(self) -> None:
        if self._unsaved is not None:
            self._account_unsaved = True
            return
        self._store.save_account(self._account.pickle(self._pickle_key))
