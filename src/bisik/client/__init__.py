"""Bisik client SDK: holds every key, does all the crypto, keeps an encrypted store.

Example::

    async with await Client.open(home, password) as client:
        await client.connect()
        message = await client.send_text("bob", "hi")
        await client.wait_sent(message.id, timeout=10)
"""

from bisik.client._client import Client
from bisik.client._errors import (
    ClientError,
    IdentityKeyChanged,
    NotConnected,
    ProfileError,
)
from bisik.client._linking import LinkError, LinkRequest, VerificationCode
from bisik.client._models import (
    ConnectionChanged,
    DecryptionFailed,
    DeviceInfo,
    DeviceRemoved,
    DevicesChanged,
    Event,
    IdentityChanged,
    Message,
    MessageFailed,
    MessageReceived,
    MessageSent,
    MessagesRead,
    PresenceChanged,
    ReceiptUpdated,
    Synced,
    TypingChanged,
)
from bisik.client._recovery import RecoveryError
from bisik.crypto import KdfParams, WrongPassword
from bisik.proto import ErrorCode, ProtocolError

__all__ = [
    "Client",
    "ClientError",
    "ConnectionChanged",
    "DecryptionFailed",
    "DeviceInfo",
    "DeviceRemoved",
    "DevicesChanged",
    "ErrorCode",
    "Event",
    "IdentityChanged",
    "IdentityKeyChanged",
    "KdfParams",
    "LinkError",
    "LinkRequest",
    "Message",
    "MessageFailed",
    "MessageReceived",
    "MessageSent",
    "MessagesRead",
    "NotConnected",
    "PresenceChanged",
    "ProfileError",
    "ProtocolError",
    "ReceiptUpdated",
    "RecoveryError",
    "Synced",
    "TypingChanged",
    "VerificationCode",
    "WrongPassword",
]
