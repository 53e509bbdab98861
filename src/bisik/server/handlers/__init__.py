"""Server logic. Handlers never see an HTTP request or a socket; they raise ProtocolError."""

from bisik.server.handlers._notifier import Notifier
from bisik.server.handlers.accounts import AccountsHandler
from bisik.server.handlers.auth import AuthHandler
from bisik.server.handlers.keys import KeysHandler
from bisik.server.handlers.messages import MessagesHandler

__all__ = [
    "AccountsHandler",
    "AuthHandler",
    "KeysHandler",
    "MessagesHandler",
    "Notifier",
]
