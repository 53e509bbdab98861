"""Pydantic models for every HTTP body and socket event payload.

Every model forbids unknown fields and bounds every size, so a hostile peer
gets a validation error instead of making the other side allocate without
limit.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bisik.proto._errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1

USERNAME_RE = re.compile(r"^[a-z0-9._-]{3,32}$")

# PostgreSQL text cannot hold NUL: refuse it in any string that reaches the database.
_NO_NUL = r"^[^\x00]*$"
# The largest id either database can store or compare (a signed 64-bit integer).
MAX_ID = 2**63 - 1

# Unpadded standard base64, as vodozemac prints keys and signatures.
Key25519 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}$")]
Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}$")]
Username = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_NUL)]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{4,64}$")]
KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=_-]{1,64}$")]
ClientMessageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
# An Olm ciphertext in base64: generous for a long text message, bounded.
Ciphertext = Annotated[str, StringConstraints(min_length=1, max_length=256 * 1024, pattern=_NO_NUL)]
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{20,128}$")]

MAX_KEYS_PER_UPLOAD = 200
MAX_ENVELOPES_PER_SEND = 1000
MAX_SEND_MANY = 100
MAX_GROUP_MEMBERS = 1000
# Disappearing messages: 1 second to 8 weeks (twice the longest timer).
TtlMs = Annotated[int, Field(ge=1000, le=56 * 24 * 3600 * 1000)]
# Group ids are chosen by the server: 128 random bits, URL-safe base64.
GroupId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,32}$")]


def validate_username(name: str) -> str:
    """Return ``name`` if it is a valid username, else raise ``ProtocolError``."""
    # fullmatch: "$" alone would also accept a trailing newline.
    if not USERNAME_RE.fullmatch(name):
        raise ProtocolError(
            ErrorCode.INVALID_USERNAME,
            "usernames are 3-32 characters of lowercase a-z, 0-9, '.', '_' or '-'",
        )
    return name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DeviceSignatures(_Model):
    identity: Signature  # by the user's identity key
    device: Signature  # by the device's own Ed25519 key (proof of possession)


class DeviceKeys(_Model):
    """A device's public keys, signed by its owner's identity key."""

    username: Username
    device_id: DeviceId
    curve25519: Key25519
    ed25519: Key25519
    identity_key: Key25519
    signatures: DeviceSignatures


class SignedKey(_Model):
    """A one-time or fallback Curve25519 key, signed by the device's Ed25519 key."""

    key_id: KeyId
    key: Key25519
    signature: Signature


class RegisterRequest(_Model):
    username: Username
    invite: Annotated[str, StringConstraints(max_length=128)] | None = None
    device: DeviceKeys
    one_time_keys: list[SignedKey] = Field(default_factory=list, max_length=MAX_KEYS_PER_UPLOAD)
    fallback_key: SignedKey | None = None


class RegisterResponse(_Model):
    username: str
    device_id: str


class ChallengeRequest(_Model):
    username: Username
    device_id: DeviceId


class ChallengeResponse(_Model):
    challenge: str
    expires_at: int  # unix milliseconds


class TokenRequest(_Model):
    username: Username
    device_id: DeviceId
    challenge: Annotated[str, StringConstraints(max_length=128, pattern=_NO_NUL)]
    signature: Signature


class TokenResponse(_Model):
    token: str
    expires_at: int


class UploadKeysRequest(_Model):
    one_time_keys: list[SignedKey] = Field(default_factory=list, max_length=MAX_KEYS_PER_UPLOAD)
    fallback_key: SignedKey | None = None


class KeyCount(_Model):
    one_time_keys: int
    fallback_key: bool
    # The fallback key has been handed out: the device should publish a new one.
    fallback_used: bool = False


class DeviceRef(_Model):
    username: Username
    device_id: DeviceId


class ClaimRequest(_Model):
    devices: list[DeviceRef] = Field(min_length=1, max_length=MAX_ENVELOPES_PER_SEND)


class ClaimedKey(_Model):
    username: str
    device_id: str
    key: SignedKey
    fallback: bool


class ClaimResponse(_Model):
    keys: list[ClaimedKey]
    missing: list[DeviceRef]


class DeviceList(_Model):
    username: str
    identity_key: str
    devices: list[DeviceKeys]


class OutgoingEnvelope(_Model):
    """One Olm ciphertext for one recipient device, as the sender submits it."""

    username: Username
    device_id: DeviceId
    kind: Literal["olm"] = "olm"
    type: Literal[0, 1]  # Olm pre-key (0) or normal (1) message
    body: Ciphertext


class SendRequest(_Model):
    v: Literal[1] = 1
    client_message_id: ClientMessageId
    # Olm envelopes about a group (Megolm key shares, key requests): the server
    # checks that the sender and every recipient are members.
    group_id: GroupId | None = None
    # A disappearing message: nobody may still fetch it after this many ms.
    ttl_ms: TtlMs | None = None
    # Ephemeral envelopes (typing) are pushed to online devices only, never stored,
    # and only between users who share a conversation.
    ephemeral: bool = False
    envelopes: list[OutgoingEnvelope] = Field(min_length=1, max_length=MAX_ENVELOPES_PER_SEND)


class SendResult(_Model):
    seq: int
    ts: int
    duplicate: bool


class SendMany(_Model):
    """Several messages in one frame, stored in order; each succeeds or fails alone."""

    v: Literal[1] = 1
    messages: list[SendRequest] = Field(min_length=1, max_length=MAX_SEND_MANY)


class SendOutcome(_Model):
    """One message of a ``SendMany``: its ``SendResult`` fields, or an ``error``
    body as an event's (``{"code", "message"}``)."""

    ok: bool
    seq: int | None = None
    ts: int | None = None
    duplicate: bool | None = None
    error: dict[str, str] | None = None


class SendManyResult(_Model):
    results: list[SendOutcome]


class Envelope(_Model):
    """An envelope as delivered to its recipient device."""

    v: Literal[1] = 1
    id: int
    seq: int
    sender: str
    sender_device: str
    kind: Literal["olm", "megolm"] = "olm"
    type: Literal[0, 1]
    body: str
    ts: int
    ephemeral: bool = False
    group_id: str | None = None


class SyncRequest(_Model):
    after: int = Field(default=0, ge=0, le=MAX_ID)
    limit: int = Field(default=200, ge=1, le=500)


class SyncResult(_Model):
    envelopes: list[Envelope]
    more: bool


class AckRequest(_Model):
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(min_length=1, max_length=1000)


class AckResult(_Model):
    deleted: int


# -- devices (linking, names, revocation) -------------------------------------------

# A device name encrypted by the account's devices (see bisik.crypto: device names).
EncryptedName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{16,255}$")]
# Linking payloads and backups are opaque base64 (standard or URL-safe) to the server.
_B64 = r"^[A-Za-z0-9+/=_-]+$"

MAX_RENDEZVOUS_BODY = 900 * 1024
MAX_BACKUP_BYTES = 12 * 1024 * 1024


class RecoveryProof(_Model):
    """A backup challenge signed with the recovery key's auth key."""

    challenge: Annotated[str, StringConstraints(max_length=128, pattern=_NO_NUL)]
    signature: Signature


class AddDeviceRequest(_Model):
    """A new device, signed by the account's identity key, with a permission:
    a ``grant`` from a signed-in device (linking) or a ``recovery`` proof."""

    device: DeviceKeys
    grant: Token | None = None
    recovery: RecoveryProof | None = None
    one_time_keys: list[SignedKey] = Field(default_factory=list, max_length=MAX_KEYS_PER_UPLOAD)
    fallback_key: SignedKey | None = None
    name: EncryptedName | None = None


class DeviceGrant(_Model):
    grant: str
    expires_at: int


class OwnDevice(_Model):
    device_id: str
    name: str | None
    created_at: int
    last_seen_at: int | None


class OwnDevices(_Model):
    devices: list[OwnDevice]


class RenameDeviceRequest(_Model):
    name: EncryptedName


class Done(_Model):
    ok: bool = True


class RendezvousToken(_Model):
    channel: str
    token: str
    expires_at: int


class RendezvousWrite(_Model):
    token: Token
    body: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=MAX_RENDEZVOUS_BODY, pattern=r"^[A-Za-z0-9+/=_-]+$"
        ),
    ]


class RendezvousWritten(_Model):
    id: int


class RendezvousRead(_Model):
    token: Token
    after: int = Field(default=0, ge=0, le=MAX_ID)
    wait: float = Field(default=0, ge=0, le=25)


class RendezvousMessageOut(_Model):
    id: int
    body: str


class RendezvousMessages(_Model):
    messages: list[RendezvousMessageOut]


class RendezvousClose(_Model):
    token: Token


class DevicesWatch(_Model):
    usernames: list[Username] = Field(max_length=5000)


# -- account backup ---------------------------------------------------------------


class BackupPut(_Model):
    auth_key: Key25519
    ciphertext: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=MAX_BACKUP_BYTES, pattern=r"^[A-Za-z0-9+/=_-]+$"
        ),
    ]


class BackupChallengeRequest(_Model):
    username: Username


class BackupFetchRequest(_Model):
    username: Username
    challenge: Annotated[str, StringConstraints(max_length=128, pattern=_NO_NUL)]
    signature: Signature


class BackupBlob(_Model):
    version: int
    ciphertext: str


# -- presence, settings, push --------------------------------------------------------


class PresenceQuery(_Model):
    username: Username


class PresenceInfo(_Model):
    username: str
    visible: bool
    online: bool = False
    last_seen_at: int | None = None


class Settings(_Model):
    share_presence: bool | None = None


class PushKeys(_Model):
    p256dh: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_=-]{80,100}$")]
    auth: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_=-]{16,32}$")]


class PushSubscription(_Model):
    """A standard Web Push subscription (``PushSubscription.toJSON()`` in a browser)."""

    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://[^\s\x00]{1,1000}$")]
    keys: PushKeys


class VapidKey(_Model):
    public_key: str


# -- groups -----------------------------------------------------------------------


class GroupCreate(_Model):
    """Create a group; the creator is its first admin. Name and other metadata
    never reach the server (they travel end-to-end encrypted in the group)."""

    members: list[Username] = Field(default_factory=list, max_length=MAX_GROUP_MEMBERS - 1)


class GroupRef(_Model):
    group_id: GroupId


class GroupAdd(_Model):
    group_id: GroupId
    usernames: list[Username] = Field(min_length=1, max_length=MAX_GROUP_MEMBERS)


class GroupMemberRef(_Model):
    group_id: GroupId
    username: Username


class GroupMember(_Model):
    username: str
    role: Literal["admin", "member"]
    added_at: int


class GroupInfo(_Model):
    group_id: str
    version: int
    created_at: int
    members: list[GroupMember]


class GroupSummary(_Model):
    group_id: str
    version: int
    role: Literal["admin", "member"]


class GroupList(_Model):
    groups: list[GroupSummary]


class GroupChange(_Model):
    """Pushed (``group_changed``) to members, old and new, after every change."""

    group_id: str
    version: int
    kind: Literal["created", "added", "removed", "left", "promoted"]
    actor: str
    usernames: list[str]


class GroupDeviceQuery(_Model):
    group_id: GroupId
    username: Username
    device_id: DeviceId


class GroupDeviceInfo(_Model):
    """Since when a device may read the group: the later of its user joining and
    the device being added (``None``: not a current member's device)."""

    readable_from: int | None


class GroupSend(_Model):
    """One Megolm ciphertext for the whole group; the server fans it out to
    every current device of every member but the sending device."""

    v: Literal[1] = 1
    group_id: GroupId
    client_message_id: ClientMessageId
    body: Ciphertext
    ttl_ms: TtlMs | None = None
