"""The async client: transport + Olm machine + encrypted local store.

Every crypto and store mutation runs in one worker task, in order: backlog
sync, pushed envelopes, outbox flushes and key top-ups. That keeps the Olm
ratchets and the database in step without locks, and keeps socket handlers
free to receive the acks the worker waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar, cast

import pydantic

from bisik.client import _profile
from bisik.client._account import BACKUP_INTERVAL_S, AccountMixin
from bisik.client._actions import ActionsMixin
from bisik.client._attachments import AttachmentsMixin
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, IdentityKeyChanged, NotConnected, ProfileError
from bisik.client._groups import GroupRejected, GroupsMixin
from bisik.client._linking import LinkRequest
from bisik.client._models import (
    ConnectionChanged,
    DecryptionFailed,
    DeviceRemoved,
    DevicesChanged,
    DeviceStamp,
    Event,
    IdentityChanged,
    Message,
    MessageFailed,
    MessageReceived,
    MessageSent,
    MessagesRead,
    Plaintext,
    PresenceChanged,
    Synced,
    TypingChanged,
    direct_conversation,
    group_conversation,
    new_message_id,
)
from bisik.client._profile import OpenProfile
from bisik.client._recovery import recover
from bisik.client._setup import ONE_TIME_KEY_TARGET, new_device
from bisik.client._signals import Signals
from bisik.client._store import OutboxItem, StoredDevice
from bisik.client._transport import Transport
from bisik.crypto import (
    CryptoError,
    IdentityKey,
    KdfParams,
    OlmDecryptError,
    OlmMachine,
    RecoveryKey,
    b64decode,
)
from bisik.proto import ErrorCode, ProtocolError, validate_username

log = logging.getLogger("bisik.client")
T = TypeVar("T")

# Worker steps that envelopes pushed after them must not overtake.
_IN_ORDER = frozenset({"resync", "group_changed"})

# Long enough for any chat message, small enough that one send to many devices
# stays far below the server's frame limit (longer text belongs in an attachment).
MAX_TEXT_BYTES = 16 * 1024
# How long delivered receipts wait to be coalesced (one per sender per burst).
RECEIPT_DELAY_S = 0.2
# How long acks for pushed envelopes wait to be coalesced: a device in a busy
# group sends one ack per burst, not one per message. An ack only lets the
# server delete what this device has stored; nothing anyone sees waits for it.
ACK_DELAY_S = 0.5
# Envelope ids per ack (the server's maximum).
ACK_MAX = 1000
# Envelopes per sync request (the server's maximum).
SYNC_PAGE = 500
# Outbox items per send_many frame, and the ciphertext bytes in one (well under
# the server's 1 MiB frame limit).
SEND_BATCH = 64
SEND_BATCH_BYTES = 256 * 1024


# Seconds before a send the server refused for now (rate, storage) is tried again.
RATE_LIMIT_RETRY_S = 1.0


def _now() -> int:
    return int(time.time() * 1000)


class Client(AccountMixin, GroupsMixin, AttachmentsMixin, ActionsMixin):
    """One device of one account. Open it with ``create_account`` or ``open``.

    Use as an async context manager, or call ``close``.
    """

    def __init__(self, profile: OpenProfile, machine: OlmMachine, identity: IdentityKey) -> None:
        store = profile.store
        self._profile = profile
        self._store = store
        self._machine = machine
        self._identity = identity
        server = store.get_meta("server_url")
        username = store.get_meta("username")
        device_id = store.get_meta("device_id")
        if server is None or username is None or device_id is None:
            raise ProfileError("profile is incomplete (was account creation interrupted?)")
        self.server_url = server
        self.username = username
        self.device_id = device_id
        self._transport = Transport(
            server, username=username, device_id=device_id, signer=machine.sign
        )
        self._devices = DeviceDirectory(store, self._transport)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._pushed: list[Any] = []
        # Set while a send waits for its answer: a push wakes it (``_answer_of``).
        self._push_waiter: asyncio.Future[None] | None = None
        # Queued worker steps that pushes opened meanwhile must not overtake.
        self._in_order_due = 0
        # Acks on their way to the server: the worker opens the next envelopes
        # meanwhile (an unacked envelope comes again and is skipped as processed).
        self._acks: set[asyncio.Task[None]] = set()
        # Pushed envelopes opened and stored whose ack waits ``ACK_DELAY_S``.
        self._unacked: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._subscribers: list[asyncio.Queue[Event]] = []
        self._sent_waiters: dict[str, asyncio.Future[Message]] = {}
        self.synced = asyncio.Event()
        # Counts disconnects: a sync that began on an earlier connection must not
        # mark this one synced (pushes would then overtake what it did not fetch).
        self._connection = 0
        # Set while the server refuses sends for now (rate, storage): one retry waits.
        self._send_retry: asyncio.TimerHandle | None = None
        # Outbox items encrypted again after an ``unknown_device`` (once each).
        self._reencrypted: set[str] = set()
        # Set by ``create_account`` only: shown to the user once, never again.
        self.new_recovery_key: str | None = None
        self._transport.on("connect", self._on_connect)
        self._transport.on("disconnect", self._on_disconnect)
        self._transport.on("envelope", self._on_envelope)
        self._transport.on("envelopes", self._on_envelopes)
        self._transport.on("keys_low", self._on_keys_low)
        self._transport.on("devices_changed", self._on_devices_changed)
        self._transport.on("presence", self._on_presence)
        self._signals = Signals(store, username, self._emit)
        self._delivered: dict[str, list[str]] = {}
        self._receipts_due = False
        self._transport.on("device_removed", self._on_device_removed)
        self._transport.on("resync", self._on_resync)
        self._backup_dirty = False
        self._backup_at = 0.0
        self._backup_wait_s = BACKUP_INTERVAL_S
        self._init_groups(profile.pickle_key)
        self._init_actions()

    def __repr__(self) -> str:
        return f"Client({self.username}/{self.device_id} @ {self.server_url})"

    # -- opening ----------------------------------------------------------------

    @classmethod
    async def create_account(
        cls,
        home: Path,
        *,
        server_url: str,
        username: str,
        password: str,
        invite: str | None = None,
        kdf: KdfParams | None = None,
    ) -> Client:
        """Create a profile in ``home`` and register a new account with its first device.

        Raises:
            ProtocolError: the server refused (``username_taken``, ``invalid_invite``...);
                nothing is left behind in ``home``.
        """
        validate_username(username)
        async with new_device(home, password, kdf) as device:
            identity = IdentityKey.generate()
            recovery = RecoveryKey.generate()
            signature = identity.sign(device.payload(username, identity.public_key))
            body = {
                "username": username,
                "invite": invite,
                "device": device.device_keys(username, identity.public_key, signature),
                "one_time_keys": device.one_time_keys,
                "fallback_key": device.fallback_key,
            }
            transport = Transport(server_url)
            try:
                await transport.request("POST", "/v1/accounts", body, auth=False)
            finally:
                await transport.http.aclose()
            device.finish(server_url=server_url, username=username, identity=identity)
            with device.profile.store.transaction():
                device.profile.store.set_meta("recovery_key", recovery.to_text())
        client = cls(device.profile, device.machine, identity)
        client.new_recovery_key = recovery.to_text()
        try:
            await client.backup_now()
        except (NotConnected, ProtocolError) as exc:
            log.warning("first backup failed, will retry: %s", exc)
            client._backup_dirty = True
        return client

    @classmethod
    async def open(cls, home: Path, password: str) -> Client:
        """Unlock an existing profile (``WrongPassword`` if the password is wrong)."""
        profile = _profile.unlock(home, password)
        try:
            if profile.store.get_meta("revoked"):
                raise ProfileError(
                    "this device was removed from its account; link it again or recover"
                )
            pickle = profile.store.load_account()
            secret = profile.store.get_meta("identity_key")
            if pickle is None or secret is None:
                raise ProfileError("profile is incomplete (was account creation interrupted?)")
            machine = OlmMachine.from_pickle(pickle, profile.pickle_key, profile.store)
            identity = IdentityKey.from_private_bytes(b64decode(secret))
            return cls(profile, machine, identity)
        except BaseException:
            profile.close()
            raise

    @staticmethod
    async def link(
        home: Path, *, server_url: str, password: str, kdf: KdfParams | None = None
    ) -> LinkRequest:
        """Start linking a new device in ``home`` to an existing account.

        Show ``request.code`` to an existing device (``approve_link``), then
        ``await request.finish()`` for the new device's ``Client``.
        """
        return await LinkRequest.start(home, server_url=server_url, password=password, kdf=kdf)

    @staticmethod
    async def recover(
        home: Path,
        *,
        server_url: str,
        username: str,
        recovery_key: str,
        password: str,
        kdf: KdfParams | None = None,
        revoke_others: bool = True,
    ) -> Client:
        """Restore an account on a fresh device from its backup (see ``_recovery``)."""
        client: Client = await recover(
            home,
            server_url=server_url,
            username=username,
            recovery_key=recovery_key,
            password=password,
            kdf=kdf,
            revoke_others=revoke_others,
        )
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._delivered:
            # Receipts still waiting to be coalesced: queued now, sent if we can.
            self._queue_delivered_receipts()
            if self.connected and self._worker is not None:
                await self.drain_outbox(2)
        if self._backup_dirty and self.connected:
            with contextlib.suppress(ClientError, ProtocolError, TimeoutError):
                await asyncio.wait_for(self.backup_now(), 10)
        if self._worker is not None:
            # Python 3.11's wait_for can swallow a cancellation that lands as its
            # inner future completes; the flag and the sentinel stop the worker anyway.
            self._closing = True
            self._queue.put_nowait(("stop", None))
            self._worker.cancel()
            await asyncio.wait([self._worker], timeout=5)
            self._worker = None
        self._flush_acks()
        if self._acks:
            await asyncio.wait(set(self._acks), timeout=5)
        await self._transport.flushed()  # acks sent without an answer, on the wire
        self._signals.close()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        await self._transport.aclose()
        self._profile.close()

    @property
    def connected(self) -> bool:
        return self._transport.connected

    def change_password(self, old: str, new: str) -> None:
        """Re-wrap the master key; ``WrongPassword`` if ``old`` is wrong."""
        _profile.change_password(self._profile.home, old, new)

    # -- events ---------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Event]:
        """A queue that receives every event from now on, until ``unsubscribe``:
        a queue no one reads any more keeps every event."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        """Stop sending events to a queue from ``subscribe`` (no error if it was not)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    def _emit(self, event: Event) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    # -- connection -------------------------------------------------------------

    async def connect(self, *, retry: bool = False, timeout: float = 10.0) -> None:
        """Connect and start processing. With ``retry``, an unreachable server is
        retried in the background instead of raising ``NotConnected``."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"bisik-worker-{self.username}")
            self._expiry_task = asyncio.create_task(self._expiry_loop())
        self._emit(ConnectionChanged("connecting"))
        await self._transport.connect(retry=retry, wait_timeout=timeout)

    async def _on_connect(self) -> None:
        self._emit(ConnectionChanged("connected"))
        self._enqueue("resync", None)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self._connection += 1
        self.synced.clear()
        # Pushed envelopes not yet handled will come again with the next sync,
        # in order; handling them now could show them out of order.
        self._pushed.clear()
        self._emit(ConnectionChanged("disconnected"))

    async def _on_envelope(self, data: Any) -> None:
        # python-socketio may run a push's handler after the disconnect handler of
        # its connection: such a push comes again with the next sync, in order.
        # Pushes that arrive while the worker is busy are opened together.
        if self._transport.connected:
            self._pushed.append(data)
            if len(self._pushed) == 1:
                self._queue.put_nowait(("envelopes", None))
            if self._push_waiter is not None:
                _wake(self._push_waiter)

    async def _on_envelopes(self, data: Any) -> None:
        """Several envelopes in one push (a burst from one sender), in order."""
        batch = data.get("envelopes") if isinstance(data, dict) else None
        if isinstance(batch, list):
            for envelope in batch:
                await self._on_envelope(envelope)

    async def _on_resync(self, data: Any = None) -> None:
        # The server lost pushes (its fan-out restarted): page the queue again.
        self._enqueue("resync", None)

    async def _on_keys_low(self, data: Any = None) -> None:
        self._queue.put_nowait(("replenish", None))

    async def _on_devices_changed(self, data: Any = None) -> None:
        username = data.get("username") if isinstance(data, dict) else None
        if isinstance(username, str):
            self._devices.forget(username)
            self._emit(DevicesChanged(username))

    async def _on_presence(self, data: Any = None) -> None:
        if isinstance(data, dict) and isinstance(data.get("username"), str):
            self._emit(
                PresenceChanged(
                    data["username"], bool(data.get("online")), data.get("last_seen_at")
                )
            )

    async def _on_device_removed(self, data: Any = None) -> None:
        log.warning("this device was removed from the account")
        with self._store.transaction():
            self._store.set_meta("revoked", "1")
        self._emit(DeviceRemoved())
        asyncio.get_running_loop().create_task(self._transport.sio.disconnect())

    def _enqueue(self, kind: str, data: Any) -> None:
        if kind in _IN_ORDER:
            self._in_order_due += 1
        self._queue.put_nowait((kind, data))

    async def _run(self) -> None:
        while not self._closing:
            kind, data = await self._queue.get()
            if kind in _IN_ORDER:
                self._in_order_due -= 1
            if kind == "stop":
                return
            try:
                if kind == "resync":
                    self._devices.forget_all()
                    await self._sync_groups()
                    await self._resync()
                    self._rerequest_keys()
                    await self._flush_outbox()
                    await self._replenish_keys()
                    await self._devices.watch([u for u, *_ in self._store.identities()])
                elif kind == "envelopes":
                    pushed, self._pushed = self._pushed, []
                    if self.synced.is_set() and pushed:
                        await self._handle_envelopes(pushed)
                elif kind == "flush":
                    await self._flush_outbox()
                elif kind == "replenish":
                    await self._replenish_keys()
                elif kind == "typing":
                    await self._send_typing(*data)
                elif kind == "expire":
                    self.expire_now()
                elif kind == "receipts":
                    self._receipts_due = False
                    self._queue_delivered_receipts()
                elif kind == "delete_blobs":
                    await self._delete_blobs()
                elif kind == "group_changed":
                    await self._group_changed(data)
                elif kind == "key_request_out":
                    await self._request_key(data)
                elif kind == "key_request_in":
                    await self._answer_key_request(*data)
                await self._maybe_backup()
            except NotConnected as exc:
                log.info("worker: %s (will retry on reconnect)", exc)
            except Exception:
                log.exception("worker step %s failed", kind)

    # -- receiving --------------------------------------------------------------

    async def _resync(self) -> None:
        """Fetch the backlog page by page; the next page is already on its way
        while this one is decrypted and stored."""
        connection = self._connection
        total = 0
        fetch = asyncio.ensure_future(self._sync_page(0))
        try:
            while True:
                envelopes, more = await fetch
                if more and envelopes:
                    fetch = asyncio.ensure_future(self._sync_page(int(envelopes[-1]["id"])))
                    # Opening a page does not yield: the request goes out first.
                    await self._transport.flushed()
                total += await self._handle_envelopes(envelopes, confirm=True)
                if not more or not envelopes:
                    break
        finally:
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
        # Synced means the server holds nothing this device has opened.
        self._flush_acks()
        if self._acks:
            await asyncio.wait(set(self._acks))
        if connection != self._connection:
            raise NotConnected("the connection dropped during the sync")
        self.synced.set()
        self._emit(Synced(total))

    async def _sync_page(self, after: int) -> tuple[list[dict[str, Any]], bool]:
        page = await self._transport.call("sync", {"after": after, "limit": SYNC_PAGE})
        return list(page["envelopes"]), bool(page["more"])

    async def _handle_envelopes(
        self, envelopes: list[dict[str, Any]], *, confirm: bool = False
    ) -> int:
        """Open envelopes in order and acknowledge the ones that are done
        (``confirm``: the sync waits for the server's answer to each ack).

        Runs of envelopes are opened in one local transaction (one durable
        commit per run instead of per envelope); a group message whose key or
        sender we do not know yet, which may need the network, is opened on its
        own between runs.
        """
        done: list[int] = []
        received = 0

        def tally(batch: list[dict[str, Any]], outcomes: list[str | None]) -> None:
            nonlocal received
            for env, outcome in zip(batch, outcomes, strict=True):
                if outcome is not None and not env.get("ephemeral"):
                    done.append(int(env["id"]))
                    received += outcome == "received"

        try:
            checked = [await self._check_envelope(env) for env in envelopes]
            seen: set[str] = set()  # envelope keys opened in this call
            at = 0
            while at < len(checked):
                ready = checked[at]
                if not isinstance(ready, _Inbound):
                    tally([envelopes[at]], [ready])
                    at += 1
                    continue
                end = at
                while end < len(checked) and isinstance(checked[end], _Inbound):
                    end += 1
                run = cast(list[_Inbound], checked[at:end])
                outcomes = await self._open_run(run, seen)
                tally([i.env for i in run[: len(outcomes)]], outcomes)
                at += len(outcomes)
                if len(outcomes) < len(run):  # a group message that needs the network
                    tally([envelopes[at]], [await self._open_group_envelope(run[len(outcomes)])])
                    at += 1
        finally:
            if done and self._transport.connected:
                if confirm:
                    self._start_ack(done, confirm=True)
                else:
                    self._unacked += done
                    if len(self._unacked) >= ACK_MAX:
                        self._flush_acks()
                    elif self._ack_timer is None:
                        self._ack_timer = asyncio.get_running_loop().call_later(
                            ACK_DELAY_S, self._flush_acks
                        )
            self._schedule_delivered_receipts()
        return received

    async def _answer_of(self, call: Awaitable[T]) -> T:
        """Wait for the server's answer to a send (or a backup upload), opening
        what is pushed meanwhile: a message that arrives while ours is on its
        way (a receipt going out, or a run of our own messages) is not held up."""
        task = asyncio.ensure_future(call)
        loop = asyncio.get_running_loop()
        try:
            while not task.done():
                # Not ahead of a queued resync (it may fetch older messages than
                # these) or group change (it may admit their sender).
                if self._pushed and self.synced.is_set() and not self._in_order_due:
                    pushed, self._pushed = self._pushed, []
                    try:
                        await self._handle_envelopes(pushed)
                    except NotConnected as exc:
                        log.info("opening pushed envelopes: %s (will retry on reconnect)", exc)
                    except Exception:
                        log.exception("opening pushed envelopes failed")
                    continue
                waiter = self._push_waiter = loop.create_future()
                task.add_done_callback(functools.partial(_wake, waiter))
                await waiter
            return task.result()
        finally:
            self._push_waiter = None
            task.cancel()  # only if we were cancelled: it is done otherwise

    def _flush_acks(self) -> None:
        """Send the acks that wait to be coalesced (dropped if disconnected: the
        server sends those envelopes again, and they are skipped as processed)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        ids, self._unacked = self._unacked, []
        if self._transport.connected:
            for start in range(0, len(ids), ACK_MAX):
                self._start_ack(ids[start : start + ACK_MAX], confirm=False)

    def _start_ack(self, ids: list[int], *, confirm: bool) -> None:
        ack = asyncio.get_running_loop().create_task(self._ack(ids, confirm))
        self._acks.add(ack)
        ack.add_done_callback(self._acks.discard)

    async def _ack(self, ids: list[int], confirm: bool) -> None:
        """Let the server delete envelopes that are opened and stored. One that
        is lost comes again and is skipped (``is_processed``), so an ack for
        pushed envelopes does not ask for an answer."""
        with contextlib.suppress(NotConnected, ProtocolError):
            if confirm:
                await self._transport.call("ack", {"ids": ids})
            else:
                await self._transport.tell("ack", {"ids": ids})

    def _schedule_delivered_receipts(self) -> None:
        """Delivered receipts wait ``RECEIPT_DELAY_S``, so a burst of messages is
        answered by one receipt per sender instead of one per message."""
        if self._delivered and not self._receipts_due:
            self._receipts_due = True
            asyncio.get_running_loop().call_later(
                RECEIPT_DELAY_S, self._queue.put_nowait, ("receipts", None)
            )

    def _queue_delivered_receipts(self) -> None:
        """Tell each sender their messages reached this device (one receipt per batch)."""
        pending, self._delivered = self._delivered, {}
        for sender, ids in pending.items():
            for start in range(0, len(ids), 500):
                self._queue_control(
                    sender, "peer", {"kind": "delivered", "ids": ids[start : start + 500]}
                )

    def _queue_control(self, peer: str, scope: str, receipt: dict[str, Any]) -> None:
        """Queue a receipt through the outbox (durable, retried like a message)."""
        now = _now()
        receipt = {**receipt, "conversation": direct_conversation(peer)}
        with self._store.transaction():
            self._store.add_outbox(
                new_message_id(),
                direct_conversation(peer),
                {"to": peer, "type": "receipt", "scope": scope, "receipt": receipt, "sent_at": now},
                now,
            )
        self._queue.put_nowait(("flush", None))

    async def _check_envelope(self, env: dict[str, Any]) -> _Inbound | str | None:
        """Parse an envelope and find its sender's verified device.

        Returns the envelope ready to open, or its outcome (``None`` leaves it
        on the server for later, e.g. the sender's keys are unreachable).
        """
        try:
            envelope_id = int(env["id"])
            sender = str(env["sender"])
            sender_device = str(env["sender_device"])
            msg_type = int(env["type"])
            body = str(env["body"])
        except (KeyError, TypeError, ValueError):
            log.warning("dropping a malformed envelope from the server")
            return None
        # Keyed by id *and* ciphertext: an envelope seen again (our ack was lost)
        # is skipped, since its Olm keys are spent, but a server that reuses ids
        # cannot make us drop a new one.
        key = hashlib.sha256(f"{envelope_id}:{body}".encode()).hexdigest()
        ephemeral = bool(env.get("ephemeral"))
        if not ephemeral and self._store.is_processed(key):
            return "duplicate"
        try:
            device = await self._devices.verified_device(sender, sender_device)
        except NotConnected:
            return None
        except IdentityKeyChanged as exc:
            # Held on the server (not acked) until the user accepts the new key.
            self._emit(IdentityChanged(exc.username, exc.old, exc.new))
            return None
        except (ProtocolError, ClientError) as exc:
            return self._reject(key, envelope_id, sender, sender_device, f"unknown sender: {exc}")
        if device is None:
            return self._reject(
                key, envelope_id, sender, sender_device, "sender device is not signed by its owner"
            )
        return _Inbound(
            env, key, envelope_id, sender, sender_device, msg_type, body, ephemeral, device
        )

    async def _open_group_envelope(self, item: _Inbound) -> str:
        try:
            return await self._handle_group_envelope(item.env, item.key, item.device)
        except GroupRejected as exc:
            return self._reject(item.key, item.envelope_id, *item.who, str(exc))

    async def _open_run(self, run: list[_Inbound], seen: set[str]) -> list[str | None]:
        """Open envelopes in one transaction, then tell the app about them; stops
        before a group message that needs the network (fewer outcomes than items).

        Nothing inside the transaction awaits, so no other task's writes can
        join it; events go out only once it is committed.
        """
        if not run:
            return []
        opened: list[_Opened] = []
        try:
            with self._store.transaction(), self._machine.saving_once():
                for item in run:
                    if not item.ephemeral and item.key in seen:
                        opened.append(_Opened("duplicate"))  # twice in one page
                        continue
                    seen.add(item.key)
                    if item.env.get("kind") != "megolm" or item.ephemeral:
                        opened.append(self._open_olm(item))
                        continue
                    group = self._open_group(item)
                    if group is None:
                        break  # the rest after it, in a later run
                    opened.append(group)
        except BaseException:
            self._machine.forget_cached_sessions()
            raise
        shown = iter(self._with_extras([o.message for o in opened if o.message is not None]))
        for item, o in zip(run[: len(opened)], opened, strict=True):
            if o.failed is not None:
                self._emit(o.failed)
            if o.room_key is not None:
                await self._retry_waiting(o.room_key)
            for event in o.signals:
                if isinstance(event, TypingChanged):
                    self._signals.typing_event(event)
                else:
                    self._emit(event)
            if o.message is not None:
                self._backup_dirty = True
                if o.message.direction == "in":
                    self._delivered.setdefault(item.sender, []).append(o.message.id)
                self._emit(MessageReceived(next(shown)))
        return [o.outcome for o in opened]

    def _open_group(self, item: _Inbound) -> _Opened | None:
        """A group message inside ``_open_run``'s transaction, or ``None`` if it
        must go through ``_open_group_envelope``."""
        try:
            with self._store.transaction():
                events = self._open_group_now(item.env, item.key, item.device)
        except GroupRejected as exc:
            failed = self._mark_rejected(item.key, item.envelope_id, *item.who, str(exc))
            return _Opened("rejected", failed=failed)
        return None if events is None else _Opened("received", signals=events)

    def _open_olm(self, item: _Inbound) -> _Opened:
        """Decrypt, verify and store one Olm envelope (inside ``_open_run``'s
        transaction; a control message's own writes are undone if it fails)."""
        try:
            plaintext = self._machine.decrypt(item.device.curve25519, item.msg_type, item.body)
            content = self._verify_content(plaintext, item.device)
            if content.type == "text" and not item.ephemeral:
                # Nothing written before it can be refused; past it, nothing refuses.
                return self._store_text(item, content)
            with self._store.transaction():
                # A control message: applied, never shown as a message.
                if item.ephemeral:
                    return _Opened("control", signals=self._signals.apply(content, *item.who))
                self._store.mark_processed(item.key, "control", _now())
                if content.type == "room_key":
                    return _Opened("control", room_key=self._accept_room_key(content, item.device))
                if content.type == "key_request":
                    self._queue.put_nowait(("key_request_in", (content, item.device)))
                    return _Opened("control")
                if content.type == "action" and content.action is not None:
                    mine = content.sender.username == self.username
                    signals = self._apply_action(
                        content.action,
                        *item.who,
                        direct_conversation(content.to if mine else item.sender),
                        content.sent_at,
                        content.id,
                    )
                    return _Opened("control", signals=signals)
                return _Opened("control", signals=self._signals.apply(content, *item.who))
        except (OlmDecryptError, CryptoError, _InvalidContent, GroupRejected) as exc:
            self._machine.forget_cached_sessions()
            if item.ephemeral:
                return _Opened("control")
            failed = self._mark_rejected(item.key, item.envelope_id, *item.who, str(exc))
            return _Opened("rejected", failed=failed)

    def _store_text(self, item: _Inbound, content: Plaintext) -> _Opened:
        incoming = content.sender.username != self.username
        message = Message(
            id=content.id,
            conversation=direct_conversation(item.sender if incoming else content.to),
            sender=item.sender,
            sender_device=item.sender_device,
            direction="in" if incoming else "out",
            body=content.body,
            sent_at=content.sent_at,
            received_at=_now(),
            server_seq=int(item.env.get("seq", 0)),
            state="received" if incoming else "sent",
            attachment=content.attachment,
        )
        fresh = self._store.insert_message(message)
        if fresh and not self._record_extras(
            message,
            reply_to=content.reply_to,
            expires_in=content.expires_in,
            view_once=content.view_once,
        ):
            # Its time ran out before it reached this device: never shown.
            self._forget(message.sender, message.id)
            fresh = False
        if fresh and content.attachment is not None:
            self._store.put_attachment(
                item.sender, content.id, content.attachment.model_dump_json(), None
            )
        self._store.mark_processed(item.key, "received", _now())
        return _Opened("received", message=message if fresh else None)

    def _reject(
        self, key: str, envelope_id: int, sender: str, sender_device: str, reason: str
    ) -> str:
        with self._store.transaction():
            failed = self._mark_rejected(key, envelope_id, sender, sender_device, reason)
        self._emit(failed)
        return "rejected"

    def _mark_rejected(
        self, key: str, envelope_id: int, sender: str, sender_device: str, reason: str
    ) -> DecryptionFailed:
        log.warning("dropping envelope %d from %s/%s", envelope_id, sender, sender_device)
        self._store.mark_processed(key, "rejected", _now())
        return DecryptionFailed(sender, sender_device, envelope_id, reason)

    def _verify_content(self, plaintext: bytes, device: StoredDevice) -> Plaintext:
        try:
            content = Plaintext.model_validate_json(plaintext)
        except pydantic.ValidationError:
            raise _InvalidContent("decrypted content is not a valid message") from None
        if (
            content.sender.username != device.username
            or content.sender.device_id != device.device_id
            or content.sender.ed25519 != device.ed25519
        ):
            raise _InvalidContent("content names another sender than the envelope")
        if (
            content.recipient.username != self.username
            or content.recipient.device_id != self.device_id
            or content.recipient.ed25519 != self._machine.ed25519
        ):
            raise _InvalidContent("content was encrypted for another device")
        return content

    # -- sending ---------------------------------------------------------------

    async def send_text(self, peer: str, text: str, *, reply_to: str | None = None) -> Message:
        """Queue a text message to ``peer`` and start sending it.

        The message is stored locally at once (state ``pending``) and sent as
        soon as there is a connection; ``wait_sent`` waits for the server's ack.

        Raises:
            ProtocolError: ``unknown_user`` if connected and ``peer`` does not exist.
            IdentityKeyChanged: the peer's identity key changed and was not acknowledged.
        ``peer`` may be a group (``#name`` or ``#id``). ``reply_to`` quotes a
        message by id. A conversation's disappearing timer (``set_timer``) applies.
        """
        if not peer.startswith("#"):
            validate_username(peer)
        if not text:
            raise ClientError("cannot send an empty message")
        if len(text.encode()) > MAX_TEXT_BYTES:
            raise ClientError(f"message too long ({MAX_TEXT_BYTES:,} bytes of UTF-8 at most)")
        extras = self._outgoing_extras(self.conversation_id(peer), reply_to)
        if peer.startswith("#"):
            return self._queue_group_text(peer, text, extras)
        if self._transport.connected:
            # Unreachable after all (the server just went away): queued, and
            # checked when it is encrypted, as when offline.
            with contextlib.suppress(NotConnected):
                await self._devices.recipient_devices(peer, refresh=False)
        return self._queue_message(direct_conversation(peer), text, {"to": peer}, extras)

    def _queue_message(
        self, conversation: str, text: str, route: dict[str, Any], extras: dict[str, Any]
    ) -> Message:
        """Store an outgoing text message (``pending``) and queue it in the outbox;
        ``route`` says where it goes (``{"to": peer}`` or a group's)."""
        now = self.clock()
        message = Message(
            id=new_message_id(),
            conversation=conversation,
            sender=self.username,
            sender_device=self.device_id,
            direction="out",
            body=text,
            sent_at=now,
            received_at=now,
            server_seq=None,
            state="pending",
        )
        payload = {**route, "body": text, "sent_at": now, **extras}
        with self._store.transaction():
            self._store.insert_message(message)
            self._record_extras(
                message,
                reply_to=extras.get("reply_to"),
                expires_in=extras.get("expires_in"),
                view_once=bool(extras.get("view_once")),
            )
            envelopes = None
            if (targets := self._ready_targets(payload)) is not None:
                # Next in line and nothing to fetch: encrypted in this same
                # commit, where the outbox would take a commit of its own.
                with self._machine.saving_once():
                    envelopes = self._olm_content(message.id, payload, targets)
            self._store.add_outbox(message.id, conversation, payload, now, envelopes)
        self._sent_waiters.setdefault(message.id, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(("flush", None))
        if not any(extras.get(k) for k in ("reply_to", "expires_in", "view_once")):
            return message  # nothing recorded with it, and no one has reacted to it yet
        return self._with_extras([message])[0]

    async def wait_sent(self, message_id: str, timeout: float) -> Message:
        """Wait until the server has stored the message; ``TimeoutError`` otherwise."""
        row = self._store.message(self.username, message_id)
        if row is not None and row[9] in ("sent", "failed"):
            return self._with_extras([Message.from_row(row)])[0]
        future = self._sent_waiters.setdefault(
            message_id, asyncio.get_running_loop().create_future()
        )
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    def pending_count(self) -> int:
        return self._store.outbox_count()

    async def drain_outbox(self, timeout: float) -> bool:
        """Wait until every queued message has been sent (or refused).

        Returns ``False`` if messages are still queued after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending_count():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _flush_outbox(self) -> None:
        """Send the outbox in order: runs of direct messages several to a frame
        (``send_many``), group messages one by one."""
        if not self.synced.is_set() or self._send_retry is not None:
            return
        # Each round takes the head of the outbox again: what a round did not
        # send (after a refusal) stays first in line.
        while items := self._store.outbox(SEND_BATCH):
            run = [items.pop(0)]
            if "group" not in run[0].payload:
                size = _send_size(run[0])
                while items and "group" not in items[0].payload:
                    size += _send_size(items[0])
                    if size > SEND_BATCH_BYTES:
                        break
                    run.append(items.pop(0))
            if not await self._send_run(run):
                return

    async def _send_run(self, run: list[OutboxItem]) -> bool:
        """Send some outbox items and settle each; ``False`` to stop flushing
        (tried again later, in order)."""
        outcomes: list[_Outcome]
        try:
            if "group" in run[0].payload:
                one = run[0]
                outcomes = [await self._send_group_item(one.message_id, one.payload, one.envelopes)]
            else:
                outcomes = await self._send_olm_items(run)
        except NotConnected:
            raise
        except (ProtocolError, ClientError) as exc:  # the whole frame refused
            outcomes = [exc] * len(run)
        go_on = True
        sent: list[tuple[OutboxItem, dict[str, Any]]] = []
        for item, outcome in zip(run, outcomes, strict=True):
            if isinstance(outcome, _NotSent):
                break  # this and the rest: next round, in order
            if isinstance(outcome, ProtocolError | ClientError):
                go_on = self._send_refused(item, outcome) and go_on
            elif outcome is None:  # e.g. read sync with no other device of ours
                with self._store.transaction():
                    self._store.remove_outbox(item.message_id)
            else:
                sent.append((item, outcome))
        self._mark_sent(sent)
        return go_on

    def _send_refused(self, item: OutboxItem, exc: ProtocolError | ClientError) -> bool:
        """Settle an item the server (or encryption) refused; ``False`` if it
        stays queued and flushing must wait."""
        code = exc.code if isinstance(exc, ProtocolError) else None
        if code in (ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL):
            # Over the server's message rate, its storage failing (disk full,
            # database locked) or a server bug: kept, in order, and tried again
            # soon (the server may have stored it; the same id is safe to resend).
            log.info("send refused for now (%s); retrying", code)
            if self._send_retry is None:
                self._send_retry = asyncio.get_running_loop().call_later(
                    RATE_LIMIT_RETRY_S, self._retry_sends
                )
            return False
        if (
            code == ErrorCode.UNKNOWN_DEVICE
            and "to" in item.payload
            and item.message_id not in self._reencrypted
        ):
            # A device it was encrypted for is gone: the list changed since we
            # fetched it (no devices_changed told us in time, or the envelopes
            # were made before). Fetch the lists again and encrypt again, once.
            self._reencrypted.add(item.message_id)
            with self._store.transaction():
                self._store.set_outbox_envelopes(item.message_id, None)
            self._devices.forget(item.payload["to"])
            self._devices.forget(self.username)
            self._queue.put_nowait(("flush", None))
            return False
        self._reencrypted.discard(item.message_id)
        self._fail(item.message_id, str(exc))
        return True

    def _mark_sent(self, sent: list[tuple[OutboxItem, dict[str, Any]]]) -> None:
        if not sent:
            return
        rows = []
        with self._store.transaction():
            for item, result in sent:
                rows.append(
                    self._store.mark_sent(
                        self.username, item.message_id, int(result["seq"]), int(result["ts"])
                    )
                )
                self._store.remove_outbox(item.message_id)
                self._reencrypted.discard(item.message_id)
        self._backup_dirty = True
        shown = iter(self._with_extras([Message.from_row(row) for row in rows if row is not None]))
        for (item, _), row in zip(sent, rows, strict=True):
            if row is None:
                continue
            message = next(shown)
            self._emit(MessageSent(message))
            future = self._sent_waiters.pop(item.message_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    async def _send_olm_items(self, run: list[OutboxItem]) -> list[_Outcome]:
        """Encrypt what is not encrypted yet (all in one local transaction) and
        send: one item as ``send``, several as ``send_many``."""
        outcomes: list[_Outcome] = [None] * len(run)
        targets: dict[int, list[StoredDevice]] = {}
        by_route: dict[tuple[str, str], list[StoredDevice]] = {}  # a run is mostly one chat
        for i, item in enumerate(run):
            if item.envelopes is None:
                route = (str(item.payload["to"]), str(item.payload.get("scope", "all")))
                try:
                    if route not in by_route:
                        by_route[route] = await self._encryption_targets(item.payload)
                    targets[i] = by_route[route]
                except NotConnected:
                    raise
                except (ProtocolError, ClientError) as exc:
                    # Nothing after it goes out before it: order is kept.
                    outcomes[i : len(run)] = [exc] + [_NOT_SENT] * (len(run) - i - 1)
                    run = run[:i]
                    break
        envelopes = {i: item.envelopes for i, item in enumerate(run) if item.envelopes is not None}
        if targets:
            with self._store.transaction(), self._machine.saving_once():
                for i, devices in targets.items():
                    envelopes[i] = self._olm_content(run[i].message_id, run[i].payload, devices)
                    if envelopes[i]:
                        self._store.set_outbox_envelopes(run[i].message_id, envelopes[i])
        requests = [
            (
                i,
                {
                    "client_message_id": run[i].message_id,
                    "envelopes": envs,
                    **_ttl(run[i].payload),
                },
            )
            for i, envs in sorted(envelopes.items())
            if envs
        ]
        if len(requests) == 1:
            i, request = requests[0]
            try:
                outcomes[i] = await self._answer_of(self._transport.call("send", request))
            except ProtocolError as exc:
                outcomes[i] = exc
        elif requests:
            answer = await self._answer_of(
                self._transport.call(
                    "send_many", {"messages": [request for _, request in requests]}
                )
            )
            results = answer.get("results")
            if not isinstance(results, list) or len(results) != len(requests):
                raise ProtocolError(ErrorCode.INTERNAL, "unexpected answer to send_many")
            for (i, _), result in zip(requests, results, strict=True):
                if isinstance(result, dict) and result.get("ok") is True:
                    outcomes[i] = result
                    continue
                refused = ProtocolError.from_body(result)
                outcomes[i] = _NOT_SENT if refused.code == ErrorCode.NOT_SENT else refused
        return outcomes

    def _retry_sends(self) -> None:
        self._send_retry = None
        self._queue.put_nowait(("flush", None))

    def _fail(self, message_id: str, reason: str) -> None:
        with self._store.transaction():
            self._store.mark_failed(self.username, message_id)
            self._store.remove_outbox(message_id)
        self._emit(MessageFailed(message_id, reason))
        future = self._sent_waiters.pop(message_id, None)
        row = self._store.message(self.username, message_id)
        if future is not None and not future.done() and row is not None:
            future.set_result(self._with_extras([Message.from_row(row)])[0])

    async def _encrypt_for(self, message_id: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """One Olm envelope per target device (see ``_encryption_targets``); an
        empty list means nobody to send to."""
        devices = await self._encryption_targets(payload)
        return self._olm_content(message_id, payload, devices)

    async def _encryption_targets(self, payload: dict[str, Any]) -> list[StoredDevice]:
        """The devices a payload goes to, with an Olm session with each.

        ``payload["scope"]``: ``all`` (the default: the peer's devices and our
        other devices), ``peer`` (only theirs: receipts, typing) or ``own`` (only
        our other devices: read sync).
        """
        peer = str(payload["to"])
        scope = payload.get("scope", "all")
        lists = {
            user: await self._devices.recipient_devices(user, refresh=True)
            for user in _target_users(peer, scope, self.username)
        }
        targets = self._targets_among(peer, scope, lists)
        if targets:
            await self._devices.ensure_sessions(self._machine, targets)
        return targets

    def _ready_targets(self, payload: dict[str, Any]) -> list[StoredDevice] | None:
        """The devices a direct message goes to if it can be encrypted now: it
        would be the next to go out (the outbox is empty), the device lists are
        fresh and there is a session with each device. ``None`` otherwise: the
        outbox encrypts it in its turn (fetching, claiming keys, raising)."""
        if (
            "to" not in payload
            or not self._transport.connected
            or not self.synced.is_set()
            or self._store.outbox_count()
        ):
            return None
        peer, scope = str(payload["to"]), payload.get("scope", "all")
        users = _target_users(peer, scope, self.username)
        lists = self._devices.fresh_devices(users)
        if len(lists) < len(users):
            return None
        try:
            targets = self._targets_among(peer, scope, lists)
        except ClientError:
            return None
        if not all(self._machine.has_session(d.curve25519) for d in targets):
            return None
        return targets

    def _targets_among(
        self, peer: str, scope: str, lists: dict[str, list[StoredDevice]]
    ) -> list[StoredDevice]:
        """Every device in ``lists`` but this one.

        Raises:
            ClientError: ``peer`` should be among them and has no device.
        """
        targets = list(
            {
                (d.username, d.device_id): d
                for devices in lists.values()
                for d in devices
                if (d.username, d.device_id) != (self.username, self.device_id)
            }.values()
        )
        has_peer = any(d.username == peer for d in targets)
        if scope != "own" and peer != self.username and not has_peer:
            raise ClientError(f"{peer} has no verified device to send to")
        return targets

    def _olm_content(
        self, message_id: str, payload: dict[str, Any], devices: list[StoredDevice]
    ) -> list[dict[str, Any]]:
        if not devices:
            return []
        return self._olm_envelopes(
            devices,
            type=payload.get("type", "text"),
            id=message_id,
            to=str(payload["to"]),
            sent_at=int(payload["sent_at"]),
            body=str(payload.get("body", "")),
            receipt=payload.get("receipt"),
            typing=payload.get("typing"),
            attachment=payload.get("attachment"),
            reply_to=payload.get("reply_to"),
            expires_in=payload.get("expires_in"),
            view_once=bool(payload.get("view_once", False)),
            action=payload.get("action"),
        )

    def _olm_envelopes(
        self, devices: list[StoredDevice], *, to: str | None = None, **content: Any
    ) -> list[dict[str, Any]]:
        """One Olm envelope per device; each content names its sender and recipient
        device (``to`` defaults to the recipient's username)."""
        sender = DeviceStamp(
            username=self.username, device_id=self.device_id, ed25519=self._machine.ed25519
        )
        envelopes: list[dict[str, Any]] = []
        with self._store.transaction():
            for device in devices:
                plaintext = Plaintext(
                    sender=sender,
                    recipient=DeviceStamp(
                        username=device.username, device_id=device.device_id, ed25519=device.ed25519
                    ),
                    to=device.username if to is None else to,
                    **content,
                )
                msg_type, body = self._machine.encrypt(
                    device.curve25519, plaintext.model_dump_json().encode()
                )
                envelopes.append(
                    {
                        "username": device.username,
                        "device_id": device.device_id,
                        "type": msg_type,
                        "body": body,
                    }
                )
        return envelopes

    # -- keys -------------------------------------------------------------------

    async def _replenish_keys(self) -> None:
        """Top up one-time keys to the target, and replace a fallback key that was used."""
        counts = await self._transport.call("keys_count", {})
        missing = ONE_TIME_KEY_TARGET - int(counts["one_time_keys"])
        new_fallback = counts.get("fallback_used") or not counts["fallback_key"]
        if missing <= 0 and not new_fallback:
            return
        upload: dict[str, Any] = {"one_time_keys": []}
        with self._store.transaction():
            if missing > 0:
                # Keys left unpublished by a failed upload go first; never more
                # than the server is missing (it caps what a device may store).
                fresh = missing - len(self._machine.unpublished_one_time_keys())
                if fresh > 0:
                    self._machine.generate_one_time_keys(fresh)
                upload["one_time_keys"] = self._machine.unpublished_one_time_keys()[:missing]
            if new_fallback:
                # vodozemac keeps the previous fallback key too, for messages in flight.
                upload["fallback_key"] = self._machine.generate_fallback_key()
        await self._transport.call("keys_upload", upload)
        with self._store.transaction():
            self._machine.mark_keys_as_published()

    # -- reading ----------------------------------------------------------------

    def history(self, peer: str, limit: int = 100, before: int | None = None) -> list[Message]:
        """The last ``limit`` messages with ``peer`` (or in group ``#name``), oldest first."""
        self.expire_now()
        rows = self._store.history(self.conversation_id(peer), limit, before)
        return self._with_extras([Message.from_row(r) for r in rows])

    def conversation_id(self, peer: str) -> str:
        """The conversation id (``@user`` or ``#group_id``) of a user or ``#group``."""
        if peer.startswith("#"):
            return group_conversation(self.group(peer).group_id)
        return direct_conversation(peer)

    def unread(self, limit: int = 10_000) -> list[Message]:
        """Incoming messages not yet returned by ``unread`` (a cursor kept in the profile).

        ``bisik receive`` uses it, so messages fetched while another command was
        connected are still shown once.
        """
        self.expire_now()
        cursor = int(self._store.get_meta("unread_cursor") or 0)
        rows = self._store.incoming_after(cursor, limit)
        if rows:
            with self._store.transaction():
                self._store.set_meta("unread_cursor", str(rows[-1][10]))
        return self._with_extras([Message.from_row(r) for r in rows])

    def conversations(self) -> list[tuple[str, str]]:
        """``(conversation_id, last_message_body)``, most recent first."""
        self.expire_now()
        return [(c, body) for c, _, body in self._store.conversations()]

    async def trust_identity(self, username: str) -> None:
        """Acknowledge a changed identity key of ``username`` (after verifying it).

        Messages from their new devices that were held on the server come now.

        Raises:
            ClientError: ``username`` was verified: a changed key needs ``mark_verified``
                after comparing the new safety number (a hard stop, not a warning).
        """
        await self._devices.trust(username)
        self._backup_dirty = True
        self._enqueue("resync", None)

    # -- read state, typing, presence, settings, push -----------------------------------

    def mark_read(self, peer: str) -> int:
        """Mark the conversation with ``peer`` read, here and on our other devices.

        Sends a read receipt to ``peer`` if read receipts are on. Returns how
        many messages were newly marked.
        """
        conversation = self.conversation_id(peer)
        unread = self._store.unread(conversation)
        if not unread:
            return 0
        with self._store.transaction():
            ids = self._store.mark_read(conversation, [i for _, i in unread], self.clock())
        if peer.startswith("#"):
            # Group read state stays on this device for now (no group receipts).
            self._emit(MessagesRead(conversation, ids))
            return len(ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self._queue_control(peer, "own", {"kind": "read", "ids": chunk})
            if self._signals.enabled("read_receipts"):
                self._queue_control(peer, "peer", {"kind": "read", "ids": chunk})
        self._emit(MessagesRead(conversation, ids))
        return len(ids)

    def unread_counts(self) -> dict[str, int]:
        """Unread incoming messages per conversation (agrees across our devices)."""
        return self._store.unread_counts()

    def receipts(self, message_id: str) -> list[tuple[str, str, str, int]]:
        """``(username, device_id, kind, at)`` receipts for one of our messages."""
        return self._store.receipts(message_id)

    def set_typing(self, peer: str, typing: bool) -> None:
        """Say we started or stopped typing to ``peer`` (throttled, end-to-end encrypted)."""
        if self._signals.should_send_typing(peer, typing):
            self._queue.put_nowait(("typing", (peer, typing)))

    async def _send_typing(self, peer: str, typing: bool) -> None:
        payload = {
            "to": peer,
            "type": "typing",
            "scope": "peer",
            "typing": typing,
            "sent_at": _now(),
        }
        message_id = new_message_id()
        try:
            envelopes = await self._encrypt_for(message_id, payload)
            if envelopes:
                await self._transport.call(
                    "send",
                    {"client_message_id": message_id, "envelopes": envelopes, "ephemeral": True},
                )
        except (ProtocolError, ClientError) as exc:
            log.info("typing indicator not sent: %s", exc)

    async def presence(self, username: str) -> PresenceChanged | None:
        """``username``'s online state and last seen, or ``None`` if hidden (by them
        or because we hide ours). Raises ``ProtocolError`` (``not_in_conversation``)."""
        info = await self._transport.call("presence", {"username": username})
        if not info["visible"]:
            return None
        return PresenceChanged(username, bool(info["online"]), info.get("last_seen_at"))

    async def settings(self) -> dict[str, bool]:
        server = await self._transport.call("settings", {})
        return {
            "presence": bool(server["share_presence"]),
            "typing": self._signals.enabled("typing"),
            "read_receipts": self._signals.enabled("read_receipts"),
        }

    async def update_settings(
        self,
        *,
        presence: bool | None = None,
        typing: bool | None = None,
        read_receipts: bool | None = None,
    ) -> dict[str, bool]:
        """Change what we share; each is reciprocal (off: we see nobody's either)."""
        if presence is not None:
            await self._transport.call("settings", {"share_presence": presence})
        if typing is not None:
            self._signals.set_enabled("typing", typing)
        if read_receipts is not None:
            self._signals.set_enabled("read_receipts", read_receipts)
        return await self.settings()

    async def register_push(self, subscription: dict[str, Any]) -> None:
        """Register a Web Push subscription (``{endpoint, keys: {p256dh, auth}}``)."""
        await self._transport.call("push_subscribe", subscription)

    async def push_public_key(self) -> str:
        """The server's VAPID public key (the browser's ``applicationServerKey``)."""
        return str((await self._transport.call("push_key", {}))["public_key"])


class _InvalidContent(ClientError):
    pass


class _NotSent:
    """An outbox item left for the next round (something before it was refused)."""


_NOT_SENT = _NotSent()

# What sending one outbox item came to: the server's result, nothing to send,
# why it was refused, or not sent this time.
_Outcome = dict[str, Any] | ClientError | ProtocolError | _NotSent | None


def _wake(waiter: asyncio.Future[None], _done: object = None) -> None:
    """Wake a waiting ``_answer_of`` (also as a done callback of its call)."""
    if not waiter.done():
        waiter.set_result(None)


def _target_users(peer: str, scope: str, me: str) -> list[str]:
    """Whose devices a payload for ``peer`` goes to (see ``_encryption_targets``)."""
    users = [peer] if scope in ("all", "peer") else []
    if (scope in ("all", "own") and peer != me) or scope == "own":
        users.append(me)
    return users


def _ttl(payload: dict[str, Any]) -> dict[str, Any]:
    return {"ttl_ms": payload["ttl_ms"]} if payload.get("ttl_ms") else {}


def _send_size(item: OutboxItem) -> int:
    """About how many bytes an outbox item adds to a frame (its ciphertexts,
    or its plaintext body if not encrypted yet)."""
    if item.envelopes is not None:
        return sum(len(str(e.get("body", ""))) + 64 for e in item.envelopes)
    return 2 * len(str(item.payload.get("body", ""))) + 512


@dataclasses.dataclass(slots=True)
class _Inbound:
    """An Olm or Megolm envelope whose sender device is verified, ready to open."""

    env: dict[str, Any]
    key: str
    envelope_id: int
    sender: str
    sender_device: str
    msg_type: int
    body: str
    ephemeral: bool
    device: StoredDevice

    @property
    def who(self) -> tuple[str, str]:
        return self.sender, self.sender_device


@dataclasses.dataclass(slots=True)
class _Opened:
    """What opening one envelope did, for ``_open_run`` to tell the app once
    the transaction is committed."""

    outcome: str
    message: Message | None = None
    room_key: str | None = None
    signals: list[Event] = dataclasses.field(default_factory=list)
    failed: DecryptionFailed | None = None
