from __future__ import annotations

import os

import pytest

from bisik.crypto import (
    IdentityKey,
    OlmDecryptError,
    OlmMachine,
    SignatureError,
    device_payload,
    one_time_key_payload,
    verify_ed25519,
)


class MemoryStore:
    """The narrow SessionStore interface, in memory."""

    def __init__(self) -> None:
        self.account: str | None = None
        self.sessions: dict[str, dict[str, str]] = {}
        self.order: list[tuple[str, str]] = []

    def save_account(self, pickle: str) -> None:
        self.account = pickle

    def load_sessions(self, their_key: str) -> list[str]:
        ids = [sid for key, sid in reversed(self.order) if key == their_key]
        seen: list[str] = []
        for sid in ids:
            if sid not in seen:
                seen.append(sid)
        return [self.sessions[their_key][sid] for sid in seen]

    def save_session(self, their_key: str, session_id: str, pickle: str) -> None:
        self.sessions.setdefault(their_key, {})[session_id] = pickle
        self.order.append((their_key, session_id))


def pair() -> tuple[OlmMachine, MemoryStore, OlmMachine, MemoryStore, bytes]:
    key = os.urandom(32)
    a_store, b_store = MemoryStore(), MemoryStore()
    alice = OlmMachine.create(key, a_store)
    bob = OlmMachine.create(key, b_store)
    keys = bob.generate_one_time_keys(2)
    bob.mark_keys_as_published()
    alice.create_outbound_session(bob.curve25519, keys[0]["key"])
    return alice, a_store, bob, b_store, key


def test_conversation_and_persistence_after_every_step() -> None:
    alice, a_store, bob, b_store, key = pair()
    t, body = alice.encrypt(bob.curve25519, b"hello")
    assert t == 0
    assert bob.decrypt(alice.curve25519, t, body) == b"hello"
    t, body = bob.encrypt(alice.curve25519, b"hi")
    assert t == 1
    assert alice.decrypt(bob.curve25519, t, body) == b"hi"

    # Reload both from their stores alone: the ratchets continue.
    assert a_store.account is not None and b_store.account is not None
    alice2 = OlmMachine.from_pickle(a_store.account, key, a_store)
    bob2 = OlmMachine.from_pickle(b_store.account, key, b_store)
    for i in range(5):
        t, body = alice2.encrypt(bob2.curve25519, f"m{i}".encode())
        assert bob2.decrypt(alice2.curve25519, t, body) == f"m{i}".encode()


def test_saving_once_writes_each_session_once_at_the_end() -> None:
    alice, _, bob, b_store, key = pair()
    t, body = alice.encrypt(bob.curve25519, b"hello")
    bob.decrypt(alice.curve25519, t, body)  # the session exists on both sides
    sent = [alice.encrypt(bob.curve25519, f"m{i}".encode()) for i in range(5)]
    writes, account = len(b_store.order), b_store.account
    with bob.saving_once():
        for i, (t, body) in enumerate(sent):
            assert bob.decrypt(alice.curve25519, t, body) == f"m{i}".encode()
        with pytest.raises(OlmDecryptError):  # replayed: fails, the block goes on
            bob.decrypt(alice.curve25519, *sent[0])
        bob.forget_cached_sessions()  # waits: the cached ratchet is what gets stored
        assert len(b_store.order) == writes  # nothing written yet
    assert len(b_store.order) == writes + 1  # one write for five decryptions
    assert b_store.account == account  # the account did not change
    # What was written is the ratchet after all five: a reload refuses a replay.
    bob2 = OlmMachine.from_pickle(b_store.account or "", key, b_store)
    with pytest.raises(OlmDecryptError):
        bob2.decrypt(alice.curve25519, *sent[4])
    t, body = alice.encrypt(bob.curve25519, b"next")
    assert bob2.decrypt(alice.curve25519, t, body) == b"next"


def test_saving_once_writes_nothing_when_the_block_fails() -> None:
    alice, _, bob, b_store, _ = pair()
    t, body = alice.encrypt(bob.curve25519, b"hello")
    bob.decrypt(alice.curve25519, t, body)
    t, body = alice.encrypt(bob.curve25519, b"rolled back")
    writes = len(b_store.order)
    with pytest.raises(RuntimeError), bob.saving_once():
        assert bob.decrypt(alice.curve25519, t, body) == b"rolled back"
        raise RuntimeError("the store transaction rolls back")
    assert len(b_store.order) == writes  # nothing written...
    # ...and nothing cached: the ratchet is the stored one, so the message opens again.
    assert bob.decrypt(alice.curve25519, t, body) == b"rolled back"
    assert len(b_store.order) == writes + 1  # outside the block: written at once


def test_replayed_and_tampered_messages_fail() -> None:
    alice, _, bob, _, _ = pair()
    t, body = alice.encrypt(bob.curve25519, b"once")
    assert bob.decrypt(alice.curve25519, t, body) == b"once"
    t2, body2 = alice.encrypt(bob.curve25519, b"second")
    tampered = body2[:-4] + ("AAAA" if not body2.endswith("AAAA") else "BBBB")
    with pytest.raises(OlmDecryptError):
        bob.decrypt(alice.curve25519, t2, tampered)
    bob.forget_cached_sessions()
    assert bob.decrypt(alice.curve25519, t2, body2) == b"second"
    with pytest.raises(OlmDecryptError):
        bob.decrypt(alice.curve25519, 1, "not base64 !!")


def test_pre_key_reusing_a_spent_one_time_key_fails() -> None:
    alice, _, bob, _, _ = pair()
    t, body = alice.encrypt(bob.curve25519, b"first")
    bob.decrypt(alice.curve25519, t, body)
    carol = OlmMachine.create(os.urandom(32), MemoryStore())
    # Same pre-key message replayed under a different sender key.
    with pytest.raises(OlmDecryptError):
        bob.decrypt(carol.curve25519, t, body)


def test_signed_keys_verify() -> None:
    machine = OlmMachine.create(os.urandom(32), MemoryStore())
    (signed,) = machine.generate_one_time_keys(1)
    payload = one_time_key_payload(key_id=signed["key_id"], key=signed["key"], fallback=False)
    verify_ed25519(machine.ed25519, payload, signed["signature"])
    fallback_payload = one_time_key_payload(
        key_id=signed["key_id"], key=signed["key"], fallback=True
    )
    with pytest.raises(SignatureError):
        verify_ed25519(machine.ed25519, fallback_payload, signed["signature"])


def test_identity_signs_devices_and_hides_its_secret() -> None:
    identity = IdentityKey.generate()
    payload = device_payload(
        username="alice", device_id="DEV1", curve25519="c", ed25519="e", identity_key="i"
    )
    signature = identity.sign(payload)
    verify_ed25519(identity.public_key, payload, signature)
    with pytest.raises(SignatureError):
        verify_ed25519(identity.public_key, payload + b" ", signature)
    with pytest.raises(SignatureError):
        verify_ed25519("not a key", payload, signature)
    assert identity.private_bytes().hex() not in repr(identity)
    assert identity.public_key in repr(identity)
    assert IdentityKey.from_private_bytes(identity.private_bytes()).public_key == (
        identity.public_key
    )
