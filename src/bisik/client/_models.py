"""What the SDK hands its caller: messages and events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ConnectionState = Literal["connecting", "connected", "disconnected"]


def direct_conversation(peer: str) -> str:
    """The conversation id of a 1:1 chat with ``peer``. Groups will use ``#id``."""
    return f"@{peer}"


@dataclass(frozen=True)
class Message:
    """A message as stored locally.

    ``state`` is ``pending`` (in the outbox), ``sent`` (the server stored it),
    ``failed`` (the server refused it) or ``received``.
    """

    id: str
    conversation: str
    sender: str
    sender_device: str
    direction: Literal["in", "out"]
    body: str
    sent_at: int
    received_at: int
    server_seq: int | None
    state: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Message:
        return cls(*row[:10])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation": self.conversation,
            "sender": self.sender,
            "sender_device": self.sender_device,
            "direction": self.direction,
            "body": self.body,
            "sent_at": self.sent_at,
            "received_at": self.received_at,
            "server_seq": self.server_seq,
            "state": self.state,
        }


@dataclass(frozen=True)
class MessageReceived:
    message: Message


@dataclass(frozen=True)
class MessageSent:
    message: Message


@dataclass(frozen=True)
class MessageFailed:
    message_id: str
    reason: str


@dataclass(frozen=True)
class ConnectionChanged:
    state: ConnectionState


@dataclass(frozen=True)
class DecryptionFailed:
    """An envelope that could not be decrypted or verified; it was dropped."""

    sender: str
    sender_device: str
    envelope_id: int
    reason: str


@dataclass(frozen=True)
class IdentityChanged:
    """A contact's identity key changed. Nothing goes to or comes from their new
    devices (messages wait on the server) until ``Client.trust_identity``."""

    username: str
    old: str
    new: str


@dataclass(frozen=True)
class ReceiptUpdated:
    """A recipient's device got (``delivered``) or the recipient read (``read``)
    some of our messages."""

    username: str
    device_id: str
    kind: Literal["delivered", "read"]
    message_ids: list[str]


@dataclass(frozen=True)
class MessagesRead:
    """Messages were read on this or another of our devices (unread counts follow)."""

    conversation: str
    message_ids: list[str]


@dataclass(frozen=True)
class TypingChanged:
    """A contact started or stopped typing (a start expires by itself)."""

    username: str
    typing: bool


@dataclass(frozen=True)
class PresenceChanged:
    """A conversation partner came online or went offline."""

    username: str
    online: bool
    last_seen_at: int | None


@dataclass(frozen=True)
class DevicesChanged:
    """A contact (or this account) added, renamed or removed a device."""

    username: str


@dataclass(frozen=True)
class DeviceRemoved:
    """This device was revoked from another device of the account; it is signed out."""


@dataclass(frozen=True)
class DeviceInfo:
    """One device of this account, as ``Client.list_devices`` shows it."""

    device_id: str
    name: str
    created_at: int
    last_seen_at: int | None
    current: bool


@dataclass(frozen=True)
class Synced:
    """The backlog has been fetched after a (re)connect."""

    count: int


Event = (
    MessageReceived
    | MessageSent
    | MessageFailed
    | ConnectionChanged
    | DecryptionFailed
    | IdentityChanged
    | DevicesChanged
    | DeviceRemoved
    | ReceiptUpdated
    | MessagesRead
    | TypingChanged
    | PresenceChanged
    | Synced
)


class DeviceStamp(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    username: str
    device_id: str
    ed25519: str


class ReceiptContent(BaseModel):
    """Delivered/read receipts, or (between one's own devices) read sync."""

    model_config = ConfigDict(extra="ignore", strict=True)
    kind: Literal["delivered", "read"]
    ids: list[str] = Field(min_length=1, max_length=500)
    conversation: str


class Plaintext(BaseModel):
    """The JSON inside every Olm envelope (content version 1).

    ``sender`` and ``recipient`` bind the ciphertext to both devices, so a
    server cannot replay an envelope to another device or attribute it to
    someone else. ``to`` is the conversation peer from the sender's side (it
    differs from ``recipient`` in the copies sent to the sender's own devices).
    """

    model_config = ConfigDict(extra="ignore", strict=True)
    v: Literal[1] = 1
    type: Literal["text", "receipt", "typing"]
    id: str = Field(min_length=8, max_length=64)
    sender: DeviceStamp
    recipient: DeviceStamp
    to: str
    sent_at: int
    body: str = Field(default="", max_length=64 * 1024)
    receipt: ReceiptContent | None = None
    typing: bool | None = None
