"""Account data that moves between devices: on linking, and in the recovery backup.

It carries the identity key (the account's root secret), the recovery key,
contacts with their pinned keys and verification state, and recent history.
It only ever travels encrypted: over the linking channel, or as the backup
sealed under the recovery key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from bisik.client._models import Message
from bisik.client._store import LocalStore
from bisik.client._timeline_store import TimelineStore
from bisik.crypto import b64decode, b64encode

TRANSFER_VERSION = 1
MAX_HISTORY_MESSAGES = 20_000
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class AccountExport:
    """The account transfer, its history already JSON (see ``LocalStore.history_since``)."""

    head: dict[str, Any]  # every field but ``history``
    history: list[str]  # each message's JSON object, oldest first

    def to_json(self) -> str:
        """The transfer as compact JSON text."""
        head = json.dumps(self.head, separators=(",", ":"), ensure_ascii=False)
        return f'{head[:-1]},"history":[{",".join(self.history)}]}}'

    def __repr__(self) -> str:
        return f"AccountExport(<secret>, {len(self.history)} messages)"


def export_account(store: LocalStore, *, history_days: int) -> AccountExport:
    """Everything a new device of this account needs.

    Args:
        history_days: how many days of messages to include (0 for none).
    """
    secret = store.get_meta("identity_key")
    recovery = store.get_meta("recovery_key")
    if secret is None:
        raise ValueError("profile has no identity key")
    history: list[str] = []
    if history_days > 0:
        since = int(time.time() * 1000) - history_days * DAY_MS
        history = TimelineStore(store).history_since(since, MAX_HISTORY_MESSAGES)
    head = {
        "v": TRANSFER_VERSION,
        "identity_key": secret,
        "recovery_key": recovery,
        "contacts": [
            {"username": u, "identity_key": k, "first_seen": t, "verified": v, "changed_to": c}
            for u, k, t, v, c in store.identities()
        ],
    }
    return AccountExport(head, history)


def identity_secret(data: dict[str, Any]) -> bytes:
    if data.get("v") != TRANSFER_VERSION or not isinstance(data.get("identity_key"), str):
        raise ValueError("unsupported account data")
    return b64decode(data["identity_key"])


def import_account(store: LocalStore, data: dict[str, Any]) -> int:
    """Store transferred contacts and history in a new profile; returns messages imported.

    Must run inside a store transaction.
    """
    store.set_meta("identity_key", b64encode(identity_secret(data)))
    if isinstance(data.get("recovery_key"), str):
        store.set_meta("recovery_key", data["recovery_key"])
    for contact in data.get("contacts", []):
        store.pin_identity(
            str(contact["username"]),
            str(contact["identity_key"]),
            int(contact["first_seen"]),
            verified=bool(contact.get("verified")),
        )
        if isinstance(contact.get("changed_to"), str):
            # A pending key change stays pending (and a hard stop if verified).
            store.mark_identity_changed(str(contact["username"]), contact["changed_to"])
    imported = 0
    rows = TimelineStore(store)
    for raw in data.get("history", []):
        message = Message(
            id=str(raw["id"]),
            conversation=str(raw["conversation"]),
            sender=str(raw["sender"]),
            sender_device=str(raw["sender_device"]),
            direction="out" if raw["direction"] == "out" else "in",
            body=str(raw["body"]),
            sent_at=int(raw["sent_at"]),
            received_at=int(raw["received_at"]),
            server_seq=raw.get("server_seq"),
            state=str(raw["state"]),
        )
        imported += rows.insert_message(message)
    # History a device was handed is not news to the user: it starts out read.
    rows.mark_all_read(int(time.time() * 1000))
    return imported
