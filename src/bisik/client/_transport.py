"""HTTP (httpx) and Socket.IO transport for one device, with token authentication."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import socketio

from bisik.client._errors import NotConnected
from bisik.crypto import auth_payload
from bisik.proto import ErrorCode, ProtocolError, SocketPacket

log = logging.getLogger("bisik.client.transport")

Signer = Callable[[bytes], str]
Handler = Callable[..., Awaitable[None]]

# A token this close to its expiry is not reused: a fresh one is fetched instead
# (covers a clock behind the server's and a request in flight at expiry).
TOKEN_MARGIN_S = 300.0

# Refusals that mean "this token is no good": sign in again, once.
_TOKEN_REFUSED = (ErrorCode.UNAUTHORIZED, ErrorCode.TOKEN_EXPIRED)


async def _slices(content: bytes) -> AsyncIterator[bytes]:
    # httpx keeps each request in a reference cycle that only the cyclic GC
    # frees: a body handed over as bytes would stay alive until then (memory
    # growing with an uploaded file). An exhausted generator holds nothing.
    view = memoryview(content)
    for start in range(0, len(content), 1024 * 1024):
        yield bytes(view[start : start + 1024 * 1024])


class Transport:
    """Talks to one server as one device.

    The socket reconnects by itself with exponential backoff (0.5 s up to 5 s,
    each delay moved by up to +-0.5 s at random, so that the clients of a
    restarted server do not all come back in the same instant). Each attempt
    reuses the access token while it is fresh, so a reconnect is one socket
    connect, not two sign-in calls more; a token the server refuses (expired,
    or its device removed) is dropped, and the next attempt signs in again.
    """

    def __init__(
        self,
        server_url: str,
        *,
        username: str | None = None,
        device_id: str | None = None,
        signer: Signer | None = None,
        http_timeout: float = 15.0,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self._username = username
        self._device_id = device_id
        self._signer = signer
        self._token: str | None = None
        self._token_expires_at = 0.0  # server's epoch seconds
        self._socket_token: str | None = None  # what the last connect attempt sent
        self._socket_token_fresh = False  # and whether it signed in for it
        # Idle connections are dropped well before a server's keep-alive timeout
        # (uvicorn's default is 5 s), so a request never races the server closing
        # the connection it reuses.
        self.http = httpx.AsyncClient(
            base_url=self.server_url,
            timeout=http_timeout,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        self.sio = socketio.AsyncClient(
            reconnection=True,
            reconnection_delay=0.5,
            reconnection_delay_max=5,
            handle_sigint=False,
            serializer=SocketPacket,
        )
        self.last_connect_error: ProtocolError | None = None
        self.sio.on("connect_error", self._on_connect_error)
        # Acks still awaited; a lost connection fails them at once (see ``call``).
        self._awaiting: set[asyncio.Future[tuple[Any, ...]]] = set()
        self._disconnect_handler: Handler | None = None
        self.sio.on("disconnect", self._on_disconnect)

    def __repr__(self) -> str:
        return f"Transport({self.server_url!r}, device={self._username}/{self._device_id})"

    async def aclose(self) -> None:
        # shutdown, not disconnect: disconnect leaves a reconnection in progress
        # running (it went on connecting a closed client, leaking a session each try).
        await self.sio.shutdown()
        # Engine.IO closes its aiohttp session only on some paths (not after a
        # reconnect cut short by the disconnect); left open it leaks a socket.
        session = getattr(self.sio.eio, "http", None)
        if session is not None and not session.closed:
            await session.close()
        await self.http.aclose()

    # -- HTTP -----------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = True,
        raw: bytes | None = None,
    ) -> dict[str, Any]:
        """One HTTP call; raises ``ProtocolError`` for an error answer, ``NotConnected``
        if the server cannot be reached. ``raw`` is sent as the body instead of JSON
        (an attachment part)."""
        for attempt in range(2):
            headers = {}
            if auth:
                headers["Authorization"] = f"Bearer {await self.token()}"
            options: dict[str, Any] = {"json": body}
            if raw is not None:
                headers["Content-Length"] = str(len(raw))
                options = {"content": _slices(raw), "timeout": 120.0}
            try:
                resp = await self.http.request(method, path, headers=headers, **options)
            except httpx.TransportError as exc:
                raise NotConnected(f"cannot reach {self.server_url}: {exc!r}") from exc
            try:
                data = resp.json() if resp.content else {}
            except ValueError:
                data = {"error": {"code": "internal", "message": f"HTTP {resp.status_code}"}}
            if resp.status_code < 400:
                return dict(data)
            err = ProtocolError.from_body(data)
            if (
                auth
                and attempt == 0
                and err.code in (ErrorCode.TOKEN_EXPIRED, ErrorCode.UNAUTHORIZED)
            ):
                self._token = None
                continue
            raise err
        raise AssertionError("unreachable")

    def forget_token(self) -> None:
        """Drop the access token (refused by the server): the next call gets a fresh one."""
        self._token = None

    async def token(self) -> str:
        """The access token, signing in again if there is none or it is near expiry."""
        if self._token is None or time.time() > self._token_expires_at - TOKEN_MARGIN_S:
            self._token = None  # not reused, even if the sign-in below fails
            self._token = await self._fresh_token()
        return self._token

    async def _fresh_token(self) -> str:
        if self._username is None or self._device_id is None or self._signer is None:
            raise NotConnected("this transport has no device to authenticate as")
        challenge = await self.request(
            "POST",
            "/v1/auth/challenge",
            {"username": self._username, "device_id": self._device_id},
            auth=False,
        )
        signature = self._signer(
            auth_payload(
                challenge=challenge["challenge"],
                username=self._username,
                device_id=self._device_id,
            )
        )
        answer = await self.request(
            "POST",
            "/v1/auth/token",
            {
                "username": self._username,
                "device_id": self._device_id,
                "challenge": challenge["challenge"],
                "signature": signature,
            },
            auth=False,
        )
        self._token_expires_at = int(answer["expires_at"]) / 1000
        return str(answer["token"])

    # -- Socket.IO --------------------------------------------------------------

    def on(self, event: str, handler: Handler) -> None:
        if event == "disconnect":
            self._disconnect_handler = handler
        else:
            self.sio.on(event, handler)

    async def _on_disconnect(self, reason: Any = None) -> None:
        # python-socketio keeps waiting for the ack of a call whose connection
        # dropped until the call's timeout; its answer can no longer arrive.
        for future in self._awaiting:
            if not future.done():
                future.set_exception(NotConnected("connection lost before the answer"))
        if self._disconnect_handler is not None:
            await self._disconnect_handler(reason)

    async def tell(self, event: str, data: Any) -> None:
        """Emit an event without asking for an answer: the server handles it the
        same way but sends nothing back (one frame less each way)."""
        try:
            await self.sio.emit(event, data)
        except socketio.exceptions.BadNamespaceError:
            raise NotConnected(f"{event}: not connected") from None

    async def flushed(self, timeout: float = 1.0) -> None:
        """Until what was emitted so far is written to the socket (or ``timeout``).

        For a request made ahead of time (the next sync page) before a stretch
        of work that does not yield: it is on the wire while the work runs.
        """
        await asyncio.sleep(0)  # the emitting tasks queue their packets
        queue: asyncio.Queue[Any] | None = getattr(self.sio.eio, "queue", None)
        if queue is not None and self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), timeout)  # the writer marks each sent

    @property
    def connected(self) -> bool:
        # The namespace is registered before the "connect" handler runs, while
        # ``sio.connected`` only turns true after it.
        return "/" in self.sio.namespaces

    async def _socket_auth(self) -> dict[str, str]:
        # The token in hand while it is fresh (see the class docstring): after a
        # server restart every client reconnects at once, and two sign-in calls
        # each would triple what the server has to do.
        before = self._token
        self._socket_token = await self.token()
        self._socket_token_fresh = self._socket_token != before
        return {"token": self._socket_token}

    async def _on_connect_error(self, data: Any = None) -> None:
        # Only a refusal by the server carries a code; anything else is the
        # network, and the caller sees NotConnected.
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            code = data["data"].get("code")
            if isinstance(code, str):
                self.last_connect_error = ProtocolError(code, str(data.get("message", "")))
                log.info("connection refused: %s", code)
                if code in _TOKEN_REFUSED and self._token == self._socket_token:
                    # Expired early (clocks apart) or its device was removed:
                    # the next attempt signs in, which says which.
                    self._token = None

    async def connect(self, *, retry: bool, wait_timeout: float = 10.0) -> None:
        """Open the socket. With ``retry`` a failed first attempt keeps retrying in the
        background (the outbox waits); without, it raises ``NotConnected``.

        A token in hand that the server refuses is replaced by a fresh sign-in
        once; a refusal of a fresh token is raised."""
        for attempt in range(2):
            self.last_connect_error = None
            try:
                await self.sio.connect(
                    self.server_url,
                    auth=self._socket_auth,
                    transports=["websocket"],
                    wait_timeout=wait_timeout,
                    retry=retry,
                )
                return
            except socketio.exceptions.ConnectionError as exc:
                reason = self.last_connect_error
                if reason is None:
                    raise NotConnected(f"cannot connect to {self.server_url}: {exc}") from None
                if attempt or self._socket_token_fresh or reason.code not in _TOKEN_REFUSED:
                    raise reason from None
                # A token in hand was refused, and _on_connect_error dropped it:
                # once more, with a fresh sign-in.

    async def call(self, event: str, data: Any, timeout: float = 15.0) -> dict[str, Any]:
        """Emit an event and wait for its ack; raises ``ProtocolError`` if refused."""
        answer: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

        def on_ack(*args: Any) -> None:
            if not answer.done():
                answer.set_result(args)

        self._awaiting.add(answer)
        try:
            await self.sio.emit(event, data, callback=on_ack)
            args = await asyncio.wait_for(answer, timeout)
        except (TimeoutError, socketio.exceptions.BadNamespaceError) as exc:
            raise NotConnected(f"{event}: no answer from the server ({exc!r})") from None
        finally:
            self._awaiting.discard(answer)
        result = args[0] if len(args) == 1 else None
        if not isinstance(result, dict):
            raise ProtocolError(ErrorCode.INTERNAL, f"unexpected answer to {event}")
        if not result.get("ok"):
            raise ProtocolError.from_body(result)
        return result
