"""Abuse limits: registrations, sign-ins and pairing channels per IP, messages per
device, sockets per IP.

Token buckets kept in memory by each server process (with several processes,
each one counts what reaches it). Addresses in ``ServerConfig.rate_limit_exempt``
(loopback by default: tests, benchmarks, a reverse proxy on the same host that
does not pass ``X-Forwarded-For``) are never limited. An over-limit request is
refused with ``rate_limited`` (HTTP 429 with ``Retry-After``), a websocket over the
per-IP cap with ``too_many_connections`` (HTTP 429 at its handshake), and every
socket, exempt or not, is closed unless it authenticates within ``auth_timeout_s``.
Storage that runs out (disk full, database locked or unreachable) is answered
``unavailable`` (HTTP 503): a limit of the machine, not a bug.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from bisik.proto import ErrorCode, ProtocolError
from bisik.server._config import ServerConfig

# Buckets kept before full (idle) ones are forgotten.
MAX_TRACKED = 50_000
# A pairing channel's longest life (handlers/rendezvous.py: 5 minutes to be
# claimed, then 15 to finish): channels opened in this window may all be open.
RENDEZVOUS_WINDOW_S = 20 * 60


class RateLimiter:
    """A token bucket per key: ``burst`` at once, then ``per_s`` a second."""

    def __init__(
        self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s = per_s
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[Any, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: Any, n: int = 1) -> float:
        """Spend ``n`` tokens; 0 if allowed, else the seconds until enough are back.

        More than ``burst`` at once is allowed when the bucket is full, and the
        rest is owed: the next requests wait until it is paid back.
        """
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
        need = min(n, self.burst)
        if tokens < need:
            self._buckets[key] = (tokens, now)
            return (need - tokens) / self.per_s if self.per_s > 0 else math.inf
        self._buckets[key] = (tokens - n, now)
        if len(self._buckets) > MAX_TRACKED:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.per_s >= self.burst:
                del self._buckets[key]


class WindowLimiter:
    """At most ``count`` events per key in any ``window_s`` seconds (a sliding window).

    Unlike a token bucket this bounds what is alive at once when each event
    creates something that lives at most ``window_s``.
    """

    def __init__(
        self, count: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = max(1, count)
        self.window_s = window_s
        self._clock = clock
        self._events: dict[Any, deque[float]] = {}

    def take(self, key: Any) -> float:
        """Count one event; 0 if allowed, else the seconds until the oldest leaves."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if len(events) >= self.count:
            return events[0] + self.window_s - now
        events.append(now)
        if len(self._events) > MAX_TRACKED:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        for key, events in list(self._events.items()):
            if not events or events[-1] <= now - self.window_s:
                del self._events[key]


class RateLimited(ProtocolError):
    """``rate_limited``, with the seconds until the next attempt may succeed."""

    def __init__(self, what: str, wait: float) -> None:
        retry = "later" if math.isinf(wait) else f"in {math.ceil(wait)} s"
        super().__init__(ErrorCode.RATE_LIMITED, f"too many {what}; retry {retry}")
        self.retry_after = wait


class Limits:
    """Every abuse limit of one server process, from its config."""

    def __init__(self, config: ServerConfig) -> None:
        self.exempt = [ipaddress.ip_network(n) for n in config.rate_limit_exempt]
        minute = 60.0
        self.registrations = RateLimiter(
            config.registrations_per_ip_per_min / minute, config.registrations_per_ip_per_min
        )
        self.sign_ins = RateLimiter(
            config.sign_ins_per_ip_per_min / minute, config.sign_ins_per_ip_per_min
        )
        self.messages = RateLimiter(config.messages_per_device_per_s, config.message_burst)
        self.rendezvous_channels = WindowLimiter(
            config.rendezvous_channels_per_ip, RENDEZVOUS_WINDOW_S
        )
        self.rendezvous_requests = RateLimiter(
            config.rendezvous_requests_per_ip_per_min / minute,
            config.rendezvous_requests_per_ip_per_min,
        )
        self.max_sockets = config.max_connections_per_ip
        self.auth_timeout_s = config.socket_auth_timeout_s
        self.watches = RateLimiter(
            config.devices_watch_per_min / minute, config.devices_watch_per_min
        )
        self.max_watched = config.max_watched_users_per_socket
        self._sockets: dict[str, int] = {}
        # Parsing the address and testing each network cost more than the rest of
        # a limit check; every sign-in request and socket connect makes one.
        self._exempt_cache: dict[str, bool] = {}

    def is_exempt(self, ip: str | None) -> bool:
        if ip is None:
            return False
        known = self._exempt_cache.get(ip)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            exempt = False
        else:
            exempt = any(address in network for network in self.exempt)
        if len(self._exempt_cache) >= MAX_TRACKED:
            self._exempt_cache.clear()
        self._exempt_cache[ip] = exempt
        return exempt

    def registration(self, ip: str | None) -> None:
        """Raises ``ProtocolError(rate_limited)`` past the per-IP registration rate."""
        if not self.is_exempt(ip) and (wait := self.registrations.take(ip)):
            raise RateLimited("registrations from this address", wait)

    def sign_in(self, ip: str | None) -> None:
        """Challenges and tokens (device and backup): past the per-IP rate, refused."""
        if not self.is_exempt(ip) and (wait := self.sign_ins.take(ip)):
            raise RateLimited("sign-in attempts from this address", wait)

    def rendezvous_open(self, ip: str | None) -> None:
        """A new pairing channel: past the per-IP count in the window, refused."""
        if not self.is_exempt(ip) and (wait := self.rendezvous_channels.take(ip)):
            raise RateLimited("pairing channels opened from this address", wait)

    def rendezvous_use(self, ip: str | None) -> None:
        """A claim, write, read or close of a pairing channel: past the per-IP rate, refused."""
        if not self.is_exempt(ip) and (wait := self.rendezvous_requests.take(ip)):
            raise RateLimited("pairing-channel requests from this address", wait)

    def message(self, device_pk: int, ip: str | None, count: int = 1) -> None:
        """``count`` messages sent by a device; past its rate, refused (the client
        retries later)."""
        if not self.is_exempt(ip) and (wait := self.messages.take(device_pk, count)):
            raise RateLimited("messages from this device", wait)

    def devices_watch(self, device_pk: int, ip: str | None) -> None:
        """A ``devices_watch`` event of a device; past its rate, refused."""
        if not self.is_exempt(ip) and (wait := self.watches.take(device_pk)):
            raise RateLimited("devices_watch events from this device", wait)

    def open_socket(self, ip: str | None) -> None:
        """Count a new websocket of ``ip``, before it authenticates (the engine's
        ``TransportGate``); raises ``too_many_connections`` over the cap."""
        if ip is None or self.is_exempt(ip):
            return
        if self._sockets.get(ip, 0) >= self.max_sockets:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"this address already has {self.max_sockets} connections open",
            )
        self._sockets[ip] = self._sockets.get(ip, 0) + 1

    def close_socket(self, ip: str | None) -> None:
        if ip is None or ip not in self._sockets:
            return
        self._sockets[ip] -= 1
        if self._sockets[ip] <= 0:
            del self._sockets[ip]


STORAGE_UNAVAILABLE = "server storage is unavailable for now (disk full or busy); retry later"


def storage_problem(exc: BaseException) -> str:
    """The database's own reason (e.g. "database or disk is full"), never the SQL or
    its parameters, which may hold what a client sent."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {str(orig or exc).splitlines()[0][:200]}"


def client_ip(scope: dict[str, Any]) -> str | None:
    """The peer address of an ASGI scope (uvicorn has applied trusted proxy headers)."""
    client = scope.get("client")
    return str(client[0]) if client else None


# HTTP requests that count against a per-IP limit: (method, path) -> Limits method.
_HTTP_LIMITS: dict[tuple[str, str], str] = {
    ("POST", "/v1/accounts"): "registration",
    ("POST", "/v1/devices"): "registration",
    ("POST", "/v1/auth/challenge"): "sign_in",
    ("POST", "/v1/auth/token"): "sign_in",
    ("POST", "/v1/backup/challenge"): "sign_in",
    ("POST", "/v1/backup/fetch"): "sign_in",
    ("POST", "/v1/rendezvous"): "rendezvous_open",
}
# Paths under these prefixes, any method: prefix -> Limits method.
_HTTP_PREFIX_LIMITS: dict[str, str] = {"/v1/rendezvous/": "rendezvous_use"}


class RateLimitMiddleware:
    """ASGI middleware that refuses over-limit HTTP requests before they are read."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    @property
    def state(self) -> Any:
        """The wrapped app's state (services, namespace), as if unwrapped."""
        return self.app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            check = _HTTP_LIMITS.get((scope["method"], scope["path"])) or next(
                (m for p, m in _HTTP_PREFIX_LIMITS.items() if scope["path"].startswith(p)), None
            )
            if check is not None:
                try:
                    getattr(self.limits, check)(client_ip(scope))
                except RateLimited as exc:
                    wait = exc.retry_after
                    headers = {} if math.isinf(wait) else {"Retry-After": str(math.ceil(wait))}
                    response = JSONResponse(exc.to_body(), exc.http_status, headers=headers)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
