"""Linking a new device to an account, like Signal's "link new device".

Each device keeps its own keys. The two devices talk through a server mailbox
(the rendezvous) over a channel keyed by X25519 + HKDF + AES-GCM from the
pairing code, so the server relays only ciphertext; both show the same short
verification code (SAS). The existing device then signs the new device's
keys with the identity key and hands over the account data.

Messages on the channel, in order::

    existing -> new   {"key": <existing X25519 public key>}       (clear)
    existing -> new   {"type": "intro", username, identity_key}  (sealed)
    new -> existing   {"type": "device", device_id, curve25519, ed25519, signature}
    existing -> new   {"type": "approved", grant} | {"type": "rejected"}
    existing -> new   {"type": "account", "part": i, "parts": n, "data": ...}  (n >= 1)
    new -> existing   {"type": "registered"}
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bisik.client._errors import ClientError
from bisik.client._setup import NewDevice, ReadyDevice, new_device
from bisik.client._transfer import (
    AccountExport,
    identity_secret,
    import_account,
)
from bisik.client._transport import Transport
from bisik.crypto import (
    CryptoError,
    IdentityKey,
    KdfParams,
    LinkChannel,
    PairingCode,
    SignatureError,
    device_payload,
    new_device_keypair,
    verify_ed25519,
)

# Each sealed account part stays well below the server's 900 KiB message limit.
_PART_CHARS = 400_000

C = TypeVar("C")


class LinkError(ClientError):
    """Linking failed: a wrong, used or expired code, a rejection, or a timeout."""


@dataclass(frozen=True)
class VerificationCode:
    """The short code both devices show; the user checks they are the same."""

    decimals: tuple[int, int, int]
    emoji: list[str]

    def __str__(self) -> str:
        return " ".join(str(d) for d in self.decimals)


def _sas(channel: LinkChannel) -> VerificationCode:
    return VerificationCode(channel.sas_decimals(), channel.sas_emoji())


def _b64json(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def _unb64json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode()))
    except ValueError as exc:
        raise LinkError("the other device sent something unreadable") from exc
    if not isinstance(value, dict):
        raise LinkError("the other device sent something unreadable")
    return value


class _Mailbox:
    """One side of a rendezvous channel on the server."""

    def __init__(self, transport: Transport, channel: str, token: str) -> None:
        self._transport = transport
        self._channel = channel
        self._token = token
        self._after = 0
        self._inbox: list[str] = []

    async def write(self, body: str) -> None:
        await self._transport.request(
            "POST",
            f"/v1/rendezvous/{self._channel}/write",
            {"token": self._token, "body": body},
            auth=False,
        )

    async def read(self, timeout: float) -> str:
        """The peer's next message, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkError("the other device did not answer in time")
            page = await self._transport.request(
                "POST",
                f"/v1/rendezvous/{self._channel}/read",
                {"token": self._token, "after": self._after, "wait": min(left, 10.0)},
                auth=False,
            )
            for message in page["messages"]:
                self._after = max(self._after, int(message["id"]))
                self._inbox.append(str(message["body"]))
        return self._inbox.pop(0)

    async def close(self) -> None:
        await self._transport.request(
            "POST", f"/v1/rendezvous/{self._channel}/close", {"token": self._token}, auth=False
        )


async def _read_sealed(mailbox: _Mailbox, channel: LinkChannel, timeout: float) -> dict[str, Any]:
    try:
        return channel.open(await mailbox.read(timeout))
    except CryptoError as exc:
        raise LinkError(f"the linking channel was tampered with: {exc}") from None


class LinkRequest(Generic[C]):
    """The new device's side. ``start`` it, show ``code``, then ``finish``.

    ``finish`` returns what ``open_client`` makes of the linked device (the
    SDK's ``Client``).
    """

    def __init__(
        self,
        open_client: Callable[[ReadyDevice], C],
        device: NewDevice,
        transport: Transport,
        code: PairingCode,
        private: X25519PrivateKey,
        mailbox: _Mailbox,
        stack: Any,
    ) -> None:
        self._open_client = open_client
        self._device = device
        self._transport = transport
        self.pairing = code
        self._private = private
        self._mailbox = mailbox
        self._stack = stack
        self._channel: LinkChannel | None = None
        self._approver: asyncio.Future[VerificationCode] | None = None

    def __repr__(self) -> str:
        return f"LinkRequest(device={self._device.device_id})"

    @property
    def code(self) -> str:
        """The pairing code to show (as text or QR); it works once, for 5 minutes."""
        return self.pairing.encode()

    @property
    def device_id(self) -> str:
        return self._device.device_id

    @classmethod
    async def start(
        cls,
        home: Path,
        *,
        server_url: str,
        password: str,
        open_client: Callable[[ReadyDevice], C],
        kdf: KdfParams | None = None,
    ) -> LinkRequest[C]:
        """Create this device's profile and keys and open a pairing channel."""
        transport = Transport(server_url)
        manager = new_device(home, password, kdf)
        try:
            device = await manager.__aenter__()
        except BaseException:
            await transport.http.aclose()
            raise
        try:
            opened = await transport.request("POST", "/v1/rendezvous", None, auth=False)
            private, public = new_device_keypair()
            code = PairingCode.create(
                server_url=transport.server_url,
                channel=str(opened["channel"]),
                new_key=public,
                expires_at=int(opened["expires_at"]),
            )
        except BaseException as exc:
            await transport.http.aclose()
            await manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        mailbox = _Mailbox(transport, code.channel, str(opened["token"]))
        return cls(open_client, device, transport, code, private, mailbox, manager)

    async def wait_for_approver(self, timeout: float = 300.0) -> VerificationCode:
        """Wait for an existing device to take the code; returns the code to compare.

        Safe to call more than once (and while ``finish`` runs): all get the same code.
        """
        if self._approver is None:
            self._approver = asyncio.ensure_future(self._read_approver(timeout))
        return await asyncio.shield(self._approver)

    async def _read_approver(self, timeout: float) -> VerificationCode:
        first = _unb64json(await self._mailbox.read(timeout))
        try:
            existing_key = base64.b64decode(str(first["key"]))
            self._channel = LinkChannel.for_new_device(self.pairing, self._private, existing_key)
        except (KeyError, ValueError, CryptoError) as exc:
            raise LinkError(f"bad answer from the other device: {exc}") from None
        return _sas(self._channel)

    async def finish(self, *, device_name: str | None = None, timeout: float = 300.0) -> C:
        """Complete linking once the user approved on the existing device.

        Returns:
            The new device's ``Client``, registered, with the account's contacts and
            the transferred history.
        """
        await self.wait_for_approver(timeout)
        channel = self._channel
        assert channel is not None
        try:
            intro = await _read_sealed(self._mailbox, channel, timeout)
            if intro.get("type") != "intro":
                raise LinkError("unexpected message from the other device")
            username = str(intro["username"])
            identity_key = str(intro["identity_key"])
            device = self._device
            await self._mailbox.write(
                channel.seal(
                    {
                        "type": "device",
                        "device_id": device.device_id,
                        "curve25519": device.machine.curve25519,
                        "ed25519": device.machine.ed25519,
                        "signature": device.machine.sign(device.payload(username, identity_key)),
                    }
                )
            )
            verdict = await _read_sealed(self._mailbox, channel, timeout)
            if verdict.get("type") != "approved":
                raise LinkError("the other device did not approve this device")
            parts: list[str] = []
            while True:
                part = await _read_sealed(self._mailbox, channel, timeout)
                if part.get("type") != "account":
                    raise LinkError("unexpected message from the other device")
                parts.append(str(part["data"]))
                if len(parts) >= int(part["parts"]):
                    break
            account = json.loads(base64.b64decode("".join(parts)))
            identity = IdentityKey.from_private_bytes(identity_secret(account))
            if identity.public_key != identity_key:
                raise LinkError("the account data does not match the identity key")
            body = device.add_device_body(
                username, identity, device_name, grant=str(verdict["grant"])
            )
            await self._transport.request("POST", "/v1/devices", body, auth=False)
            device.finish(
                server_url=self._transport.server_url, username=username, identity=identity
            )
            with device.profile.store.transaction():
                import_account(device.profile.store, account)
            await self._mailbox.write(channel.seal({"type": "registered"}))
        except BaseException as exc:
            await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            await self._transport.http.aclose()
            raise
        await self._stack.__aexit__(None, None, None)
        await self._transport.http.aclose()
        return self._open_client(ReadyDevice(device.profile, device.machine, identity))

    async def cancel(self) -> None:
        """Give up: the profile being made is removed."""
        if self._approver is not None:
            self._approver.cancel()
        error = LinkError("cancelled")
        await self._stack.__aexit__(LinkError, error, None)
        await self._transport.http.aclose()


Confirm = Callable[[VerificationCode], Awaitable[bool]]


async def approve_link(
    *,
    transport: Transport,
    username: str,
    identity: IdentityKey,
    export: Callable[[int], AccountExport],
    code_text: str,
    confirm: Confirm,
    history_days: int,
    timeout: float,
) -> str:
    """The existing device's side; returns the new device's id once it is registered."""
    try:
        code = PairingCode.decode(code_text)
    except CryptoError as exc:
        raise LinkError(f"not a pairing code: {exc}") from None
    if code.server_url.rstrip("/") != transport.server_url:
        raise LinkError(f"this code is for another server ({code.server_url})")
    if code.is_expired(int(time.time() * 1000)):
        raise LinkError("this pairing code has expired; make a new one")
    claimed = await transport.request(
        "POST", f"/v1/rendezvous/{code.channel}/claim", None, auth=False
    )
    mailbox = _Mailbox(transport, code.channel, str(claimed["token"]))
    channel, existing_public = LinkChannel.for_existing_device(code)
    await mailbox.write(_b64json({"key": base64.b64encode(existing_public).decode()}))
    await mailbox.write(
        channel.seal({"type": "intro", "username": username, "identity_key": identity.public_key})
    )
    offer = await _read_sealed(mailbox, channel, timeout)
    try:
        if offer.get("type") != "device":
            raise LinkError("unexpected message from the new device")
        new_device_id = str(offer["device_id"])
        payload = device_payload(
            username=username,
            device_id=new_device_id,
            curve25519=str(offer["curve25519"]),
            ed25519=str(offer["ed25519"]),
            identity_key=identity.public_key,
        )
        verify_ed25519(str(offer["ed25519"]), payload, str(offer["signature"]))
    except (KeyError, SignatureError) as exc:
        raise LinkError(f"the new device's keys do not check out: {exc}") from None
    if not await confirm(_sas(channel)):
        await mailbox.write(channel.seal({"type": "rejected"}))
        raise LinkError("verification codes not confirmed; the device was not linked")
    grant = await transport.request("POST", "/v1/devices/grant")
    await mailbox.write(channel.seal({"type": "approved", "grant": grant["grant"]}))
    # Base64 first: its characters need no escaping inside the sealed JSON.
    data = base64.b64encode(export(history_days).to_json().encode()).decode()
    chunks = [data[i : i + _PART_CHARS] for i in range(0, len(data), _PART_CHARS)] or [""]
    for index, chunk in enumerate(chunks):
        await mailbox.write(
            channel.seal({"type": "account", "part": index, "parts": len(chunks), "data": chunk})
        )
    done = await _read_sealed(mailbox, channel, timeout)
    if done.get("type") != "registered":
        raise LinkError("the new device did not finish registering")
    await mailbox.close()
    return new_device_id


__all__ = ["LinkError", "LinkRequest", "VerificationCode", "approve_link"]
