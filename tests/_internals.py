"""The one place tests reach inside a ``Client``, each for a reason no public
API can serve:

- hostile-peer tests act as a modified client would: forge actions and room
  keys, send raw control messages, read Megolm ratchets (``group_store``,
  ``pickle_key``, ``send_olm_control``, ``forge_action``);
- a few tests watch what only the database shows: how many commits a send
  takes, whether an outbox item is already encrypted (``local_store``);
- some drive a part directly: the device-list cache, the backup's pacing,
  typing timeouts (``devices``, ``backup``, ``signals``).
"""

from __future__ import annotations

from typing import Any

from bisik.client import Client
from bisik.client._backup import Backup
from bisik.client._devices import DeviceDirectory
from bisik.client._group_store import GroupStore
from bisik.client._models import ActionContent, DeviceStamp
from bisik.client._signals import Signals
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._timeline import Timeline
from bisik.crypto import IdentityKey, OlmMachine


def local_store(client: Client) -> LocalStore:
    return client._profile.store


def group_store(client: Client) -> GroupStore:
    return GroupStore(local_store(client))


def pickle_key(client: Client) -> bytes:
    return client._profile.pickle_key


def stamp(client: Client) -> DeviceStamp:
    """The device's ``(username, device_id, ed25519)``, as its messages name it."""
    return client._me


def identity(client: Client) -> IdentityKey:
    return client._account._identity


def devices(client: Client) -> DeviceDirectory:
    return client._devices


def backup(client: Client) -> Backup:
    return client._backup


def signals(client: Client) -> Signals:
    return client._signals


def forge_action(client: Client, conversation: str, action: ActionContent) -> tuple[str, int]:
    """Send an action without applying or checking it here (a modified client)."""
    return client._actions.send(conversation, action)


async def send_olm_control(
    client: Client, group_id: str, targets: list[StoredDevice], kind: Any, **fields: Any
) -> list[StoredDevice]:
    return await client._group_sender.send_olm_control(group_id, targets, kind, **fields)


def machine(client: Client) -> OlmMachine:
    """The device's Olm account: to act as a modified client would (generate
    more one-time keys than the server takes) and to check what it prints."""
    return client._keys._machine


def count_commits(client: Client) -> list[str]:
    """Every COMMIT of the client's database from now on, as a list that grows:
    how many commits a send takes shows only in the database."""
    commits: list[str] = []
    local_store(client)._conn.set_trace_callback(
        lambda sql: commits.append(sql) if sql == "COMMIT" else None
    )
    return commits


def access_token(client: Client) -> str | None:
    """The access token the transport holds, read without signing in for one
    (whether a reconnect reused it or signed in again)."""
    return client.transport._token


def timeline(client: Client) -> Timeline:
    """The device's timeline: to make storing one message fail as a bug would,
    and check that the pipeline goes on."""
    return client._timeline
