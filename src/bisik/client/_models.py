"""What the SDK hands its caller: messages and events."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bisik.client._attachment_info import AttachmentInfo


def new_message_id() -> str:
    """A random id (128 bits, URL-safe base64) for a message or an outbox item.

    Never starts with ``-``, so a command line (``bisik react ID ...``) cannot
    take it for an option.
    """
    while True:
        candidate = secrets.token_urlsafe(16)
        if not candidate.startswith("-"):
            return candidate


ConnectionState = Literal["connecting", "connected", "disconnected"]


def direct_conversation(peer: str) -> str:
    """The conversation id of a 1:1 chat with ``peer``."""
    return f"@{peer}"


def group_conversation(group_id: str) -> str:
    """The conversation id of a group."""
    return f"#{group_id}"


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
    # A file, image or voice note (the body is then its caption).
    attachment: AttachmentInfo | None = None
    # ``text``, or ``timer`` (a timeline note: the disappearing timer was changed).
    kind: str = "text"
    reply_to: str | None = None
    # Disappearing messages: the timer (ms), and when it will be deleted here
    # (``None`` while an incoming one is unread; it is gone by ``hard_expire_at``).
    expires_in: int | None = None
    expires_at: int | None = None
    view_once: bool = False
    edited_at: int | None = None
    deleted: bool = False
    # username -> emoji
    reactions: dict[str, str] | None = None

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
            **({"attachment": self.attachment.public_json()} if self.attachment else {}),
            "kind": self.kind,
            "reply_to": self.reply_to,
            "expires_in": self.expires_in,
            "expires_at": self.expires_at,
            "view_once": self.view_once,
            "edited_at": self.edited_at,
            "deleted": self.deleted,
            "reactions": self.reactions or {},
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
class GroupChanged:
    """A group of ours changed: ``kind`` is ``created``, ``added``, ``removed``,
    ``left``, ``promoted`` (membership, as the server reports it) or ``renamed``
    (end-to-end encrypted metadata, from an admin)."""

    group_id: str
    kind: str
    actor: str
    usernames: list[str]


@dataclass(frozen=True)
class MessageWaiting:
    """A group message arrived before its key: it is kept, a key request has
    gone to the sender's devices, and ``MessageReceived`` follows when the key comes."""

    conversation: str
    sender: str
    sender_device: str


@dataclass(frozen=True)
class MessagesExpired:
    """Disappearing (or view-once) messages were deleted from this device."""

    conversation: str
    message_ids: list[str]


@dataclass(frozen=True)
class MessageChanged:
    """A message was edited, deleted for everyone or reacted to: ``message`` is
    its new state (``kind``: ``edited``, ``deleted``, ``reaction``)."""

    kind: str
    message: Message


@dataclass(frozen=True)
class TimerChanged:
    """Someone set a conversation's disappearing-message timer (``None``: off)."""

    conversation: str
    username: str
    expires_in: int | None


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
    | GroupChanged
    | MessageWaiting
    | MessagesExpired
    | MessageChanged
    | TimerChanged
    | Synced
)


# Bounds of a time inside decrypted content (ms since the epoch): beyond them a
# message is refused, so no timestamp a peer chose can overflow the database or
# a date conversion. Relative to the receiver's clock: what a sender's clock
# may be ahead, and how old a message that waited on a server may be.
MAX_TIME_MS = 2**53
MAX_AHEAD_MS = 2 * 24 * 3600 * 1000
MAX_AGE_MS = 2 * 366 * 24 * 3600 * 1000

Timestamp = Annotated[int, Field(ge=0, le=MAX_TIME_MS)]
ShortText = Annotated[str, Field(max_length=64)]


def in_time_window(sent_at: int, now: int) -> bool:
    """Whether a peer's ``sent_at`` is plausible here (see ``MAX_AHEAD_MS``)."""
    return now - MAX_AGE_MS <= sent_at <= now + MAX_AHEAD_MS


# Plaintexts are padded to these sizes before encryption, so a ciphertext's
# length tells little about the message's: powers of two up to 1 KiB, then
# whole KiB. JSON ignores trailing whitespace, so padding is spaces and every
# receiver, old or new, reads it unchanged.
PAD_SMALLEST = 256
PAD_STEP = 1024


def padded(content: BaseModel) -> bytes:
    """``content`` as JSON, padded with spaces to its size bucket."""
    data = content.model_dump_json().encode()
    size = PAD_SMALLEST
    while size < len(data) and size < PAD_STEP:
        size *= 2
    if len(data) > size:
        size = -(-len(data) // PAD_STEP) * PAD_STEP
    return data + b" " * (size - len(data))


class DeviceStamp(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    username: str = Field(max_length=64)
    device_id: str = Field(max_length=64)
    ed25519: str = Field(max_length=64)


class ReceiptContent(BaseModel):
    """Delivered/read receipts, or (between one's own devices) read sync."""

    model_config = ConfigDict(extra="ignore", strict=True)
    kind: Literal["delivered", "read"]
    ids: list[ShortText] = Field(min_length=1, max_length=500)
    conversation: str = Field(max_length=80)


class GroupMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=1000)


class ActionContent(BaseModel):
    """A message action, end-to-end encrypted like a message.

    ``react`` (``emoji``; empty removes ours), ``edit`` (``body``), ``delete``
    (for everyone), ``timer`` (``expires_in`` ms, or ``None``: off), and between
    our own devices ``forget`` (delete here too) and ``opened`` (a view-once
    message was opened on another device).
    """

    model_config = ConfigDict(extra="ignore", strict=True)
    kind: Literal["react", "edit", "delete", "timer", "forget", "opened"]
    target: str | None = Field(default=None, max_length=64)
    target_sender: str | None = Field(default=None, max_length=64)
    emoji: str = Field(default="", max_length=16)
    body: str = Field(default="", max_length=64 * 1024)
    expires_in: int | None = Field(default=None, ge=1000, le=60 * 24 * 3600 * 1000)


class RoomKeyContent(BaseModel):
    """A Megolm session key, shared over Olm. ``owner`` is the device whose
    session it is (the Olm sender, or, for a forwarded key, another device of
    the same user); ``exported`` keys come from ``export_at``."""

    model_config = ConfigDict(extra="ignore", strict=True)
    group_id: str = Field(max_length=64)
    session_id: str = Field(max_length=64)
    key: str = Field(max_length=4096)
    exported: bool = False
    owner: DeviceStamp
    # The group's name, for devices that joined after it was last sent
    # (used only while a device knows no name for the group).
    meta: GroupMeta | None = None


class KeyRequestContent(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    group_id: str = Field(max_length=64)
    session_id: str = Field(max_length=64)
    index: int = Field(ge=0, le=2**32)


class GroupPlaintext(BaseModel):
    """The JSON inside every Megolm message (group content version 1).

    ``sender`` must be the device that owns the session and ``group_id`` the
    group the session was shared for: a server cannot move a message to
    another group or attribute it to someone else.
    """

    model_config = ConfigDict(extra="ignore", strict=True)
    v: Literal[1] = 1
    type: Literal["text", "meta", "action"]
    id: str = Field(min_length=8, max_length=64)
    sender: DeviceStamp
    group_id: str = Field(max_length=64)
    sent_at: Timestamp
    body: str = Field(default="", max_length=64 * 1024)
    meta: GroupMeta | None = None
    attachment: AttachmentInfo | None = None
    reply_to: str | None = Field(default=None, max_length=64)
    expires_in: int | None = Field(default=None, ge=1000, le=60 * 24 * 3600 * 1000)
    view_once: bool = False
    action: ActionContent | None = None


class Plaintext(BaseModel):
    """The JSON inside every Olm envelope (content version 1).

    ``sender`` and ``recipient`` bind the ciphertext to both devices, so a
    server cannot replay an envelope to another device or attribute it to
    someone else. ``to`` is the conversation peer from the sender's side (it
    differs from ``recipient`` in the copies sent to the sender's own devices).
    """

    model_config = ConfigDict(extra="ignore", strict=True)
    v: Literal[1] = 1
    type: Literal["text", "receipt", "typing", "room_key", "key_request", "action"]
    id: str = Field(min_length=8, max_length=64)
    sender: DeviceStamp
    recipient: DeviceStamp
    to: str = Field(max_length=64)
    sent_at: Timestamp
    body: str = Field(default="", max_length=64 * 1024)
    receipt: ReceiptContent | None = None
    typing: bool | None = None
    attachment: AttachmentInfo | None = None
    room_key: RoomKeyContent | None = None
    key_request: KeyRequestContent | None = None
    reply_to: str | None = Field(default=None, max_length=64)
    expires_in: int | None = Field(default=None, ge=1000, le=60 * 24 * 3600 * 1000)
    view_once: bool = False
    action: ActionContent | None = None
