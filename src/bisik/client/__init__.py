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
from bisik.client._models import (
    ConnectionChanged,
    DecryptionFailed,
    Event,
    IdentityChanged,
    Message,
    MessageFailed,
    MessageReceived,
    MessageSent,
    Synced,
)
from bisik.crypto import KdfParams, WrongPassword
from bisik.proto import ErrorCode, ProtocolError

__all__ = [
    "Client",
    "ClientError",
    "ConnectionChanged",
    "DecryptionFailed",
    "ErrorCode",
    "Event",
    "IdentityChanged",
    "IdentityKeyChanged",
    "KdfParams",
    "Message",
    "MessageFailed",
    "MessageReceived",
    "MessageSent",
    "NotConnected",
    "ProfileError",
    "ProtocolError",
    "Synced",
    "WrongPassword",
]
