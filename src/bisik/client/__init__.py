"""Bisik client SDK: holds every key, does all the crypto, keeps an encrypted store.

Example::

    async with await Client.open(home, password) as client:
        await client.connect()
        message = await client.send_text("bob", "hi")
        await client.wait_sent(message.id, timeout=10)
"""

from bisik.client._attachment_info import AttachmentInfo
from bisik.client._attachments import AttachmentError
from bisik.client._client import Client
from bisik.client._clock import Clock, ManualClock
from bisik.client._errors import (
    ClientError,
    IdentityKeyChanged,
    NotConnected,
    ProfileError,
    StoreMisuse,
)
from bisik.client._group_store import LocalGroup, Member
from bisik.client._linking import LinkError, LinkRequest, VerificationCode
from bisik.client._models import (
    ConnectionChanged,
    DecryptionFailed,
    DeviceInfo,
    DeviceRemoved,
    DevicesChanged,
    Event,
    GroupChanged,
    IdentityChanged,
    Message,
    MessageChanged,
    MessageFailed,
    MessageReceived,
    MessageSent,
    MessagesExpired,
    MessagesRead,
    MessageWaiting,
    PresenceChanged,
    ReceiptUpdated,
    Synced,
    TimerChanged,
    TypingChanged,
)
from bisik.client._recovery import RecoveryError
from bisik.client._timeline import TIMER_CHOICES_S, describe_timer
from bisik.client._transport import Transport
from bisik.crypto import KdfParams, WrongPassword
from bisik.proto import ErrorCode, ProtocolError

__all__ = [
    "TIMER_CHOICES_S",
    "AttachmentError",
    "AttachmentInfo",
    "Client",
    "ClientError",
    "Clock",
    "ConnectionChanged",
    "DecryptionFailed",
    "DeviceInfo",
    "DeviceRemoved",
    "DevicesChanged",
    "ErrorCode",
    "Event",
    "GroupChanged",
    "IdentityChanged",
    "IdentityKeyChanged",
    "KdfParams",
    "LinkError",
    "LinkRequest",
    "LocalGroup",
    "ManualClock",
    "Member",
    "Message",
    "MessageChanged",
    "MessageFailed",
    "MessageReceived",
    "MessageSent",
    "MessageWaiting",
    "MessagesExpired",
    "MessagesRead",
    "NotConnected",
    "PresenceChanged",
    "ProfileError",
    "ProtocolError",
    "ReceiptUpdated",
    "RecoveryError",
    "StoreMisuse",
    "Synced",
    "TimerChanged",
    "Transport",
    "TypingChanged",
    "VerificationCode",
    "WrongPassword",
    "describe_timer",
]
