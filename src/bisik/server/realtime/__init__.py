"""Socket.IO realtime layer, split by concern (auth, message, presence, crypto)."""

from bisik.server._internals import SocketServer
from bisik.server.realtime.namespace import BisikNamespace, SocketNotifier, device_room

__all__ = ["BisikNamespace", "SocketNotifier", "SocketServer", "device_room"]
