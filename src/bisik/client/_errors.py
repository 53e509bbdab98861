from __future__ import annotations

from bisik.proto import ErrorCode, ProtocolError


class ClientError(Exception):
    """Base class of errors raised by the client SDK (besides ``ProtocolError``)."""


class ProfileError(ClientError):
    """The profile directory is missing, malformed, locked or does not unlock."""


class NotConnected(ClientError):
    """The operation needs the server and there is no connection."""


class IdentityKeyChanged(ClientError):
    """A contact's identity key differs from the one first seen (trust on first use).

    Sending to them is blocked until the user acknowledges the change with
    ``Client.trust_identity``.
    """

    def __init__(self, username: str, old: str, new: str) -> None:
        super().__init__(
            f"{username}'s identity key changed: it was {old}, it is now {new}; "
            "verify it, then acknowledge with `bisik trust {username}`"
        )
        self.username = username
        self.old = old
        self.new = new


class StoreMisuse(RuntimeError):
    """A bug: a store write outside a transaction, or a transaction that awaited.

    The client's concurrency rule (see ``Client``) depends on neither happening.
    """


__all__ = [
    "ClientError",
    "ErrorCode",
    "IdentityKeyChanged",
    "NotConnected",
    "ProfileError",
    "ProtocolError",
    "StoreMisuse",
]
