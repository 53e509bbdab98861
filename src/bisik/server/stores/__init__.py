"""One store per area; each public method is one transaction."""

from bisik.server.stores.accounts import AccountStore, DeviceHandle, DeviceRow
from bisik.server.stores.auth import AuthStore
from bisik.server.stores.keys import KeyStore
from bisik.server.stores.messages import (
    EnvelopeRow,
    MessageStore,
    NewEnvelope,
    NewMessage,
    StoredMessage,
)

__all__ = [
    "AccountStore",
    "AuthStore",
    "DeviceHandle",
    "DeviceRow",
    "EnvelopeRow",
    "KeyStore",
    "MessageStore",
    "NewEnvelope",
    "NewMessage",
    "StoredMessage",
]
