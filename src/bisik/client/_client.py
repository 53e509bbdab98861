"""The client facade: the only place that wires the SDK's parts together.

``Client`` builds, for one unlocked profile, the services below and delegates
its public methods to them; nothing else imports it.

- the sync core (``_core``: ``Opener``, ``Encryptor``; ``Timeline``,
  ``GroupReceiver``): opens runs of envelopes and encrypts payloads, with no
  asyncio and no transport;
- the services: ``Inbox`` (pushes, sync, acks), ``Outbox`` (queue, flush,
  refusals), ``Actions``, ``Groups`` / ``Membership`` / ``GroupSender`` /
  ``GroupKeys``, ``Attachments``, ``Account``, ``Backup``, ``KeyTopUp``;
- one ``Worker``, one ``EventBus``, one ``Clock``.

The concurrency rule: every store write (and so every Olm and Megolm ratchet
step, which is persisted with it) happens in synchronous code inside
``LocalStore.transaction()``, which never spans an ``await``: the store
raises ``StoreMisuse`` for a write outside a transaction or from another task
while one is open. So each transaction is atomic with respect to every other
task without locks. What must keep the server's order (opening envelopes,
flushing the outbox, group changes, key requests) runs as steps of the one
worker task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from bisik.client import _profile
from bisik.client._account import Account
from bisik.client._actions import EXPIRY_CHECK_S, Actions
from bisik.client._attachment_info import AttachmentInfo
from bisik.client._attachments import Attachments, Progress
from bisik.client._backup import Backup
from bisik.client._clock import Clock, system_clock
from bisik.client._core import Encryptor, Opener
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, NotConnected, ProfileError
from bisik.client._events import EventBus
from bisik.client._group_keys import KEY_RETRY_S, GroupKeys
from bisik.client._group_receive import GroupReceiver
from bisik.client._group_send import GroupSender
from bisik.client._group_store import GroupStore, LocalGroup
from bisik.client._groups import Groups
from bisik.client._inbox import Inbox
from bisik.client._keys import KeyTopUp
from bisik.client._linking import Confirm, LinkRequest
from bisik.client._membership import Membership
from bisik.client._models import (
    ConnectionChanged,
    DeviceInfo,
    DeviceStamp,
    Event,
    Message,
    PresenceChanged,
)
from bisik.client._outbox import Outbox
from bisik.client._recovery import recover
from bisik.client._setup import ReadyDevice, register_account, unlock_device
from bisik.client._sharing import Sharing
from bisik.client._signals import Signals
from bisik.client._timeline import Timeline
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker
from bisik.crypto import KdfParams
from bisik.proto import ProtocolError

log = logging.getLogger("bisik.client")


class Client:
    """One device of one account. Open it with ``create_account``, ``open``,
    ``link`` or ``recover``; use it as an async context manager, or call ``close``.
    """

    def __init__(self, device: ReadyDevice, *, clock: Clock = system_clock) -> None:
        profile, db = device.profile, device.profile.store
        server, username = db.get_meta("server_url"), db.get_meta("username")
        device_id = db.get_meta("device_id")
        if server is None or username is None or device_id is None:
            raise ProfileError("profile is incomplete (was account creation interrupted?)")
        self.server_url, self.username, self.device_id = server, username, device_id
        self.clock = clock
        self.new_recovery_key: str | None = None  # set by ``create_account`` only
        self._profile = profile
        machine = device.machine
        me = DeviceStamp(username=username, device_id=device_id, ed25519=machine.ed25519)
        self.transport = Transport(
            server, username=username, device_id=device_id, signer=machine.sign
        )
        self.events = events = EventBus()
        self.synced = asyncio.Event()
        worker = self._worker = Worker(username)
        transport = self.transport
        devices = self._devices = DeviceDirectory(db, transport, clock)
        backup = self._backup = Backup(db, username, transport, worker)
        timeline = self._timeline = Timeline(db, me, clock, profile.home)
        gdb = GroupStore(db)
        key = profile.pickle_key
        receiver = GroupReceiver(db, gdb, timeline, me, key, clock)
        self._signals = Signals(db, username, events.emit, clock)
        opener = Opener(db, machine, me, timeline, receiver, self._signals, clock)
        encryptor = Encryptor(db, machine, me)
        common: dict[str, Any] = {"transport": transport, "devices": devices, "clock": clock}
        self._membership = membership = Membership(
            db=db, groups=gdb, username=username, events=events, **common
        )
        self._me = me
        self._group_sender = sender = GroupSender(
            db=db, groups=gdb, membership=membership, machine=machine, me=me, pickle_key=key,
            encryptor=encryptor, worker=worker, **common,
        )  # fmt: skip
        self._outbox = outbox = Outbox(
            db=db, machine=machine, me=me, worker=worker, events=events, timeline=timeline,
            encryptor=encryptor, groups=sender, membership=membership, backup=backup,
            synced=self.synced, **common,
        )  # fmt: skip
        self._group_keys = group_keys = GroupKeys(
            db=db, groups=gdb, receiver=receiver, membership=membership, sender=sender, me=me,
            pickle_key=key, worker=worker, events=events, **common,
        )  # fmt: skip
        self._inbox = inbox = Inbox(
            db=db, worker=worker, events=events, opener=opener, group_keys=group_keys,
            outbox=outbox, signals=self._signals, backup=backup, synced=self.synced, **common,
        )  # fmt: skip
        self._groups = Groups(
            db=db, groups=gdb, membership=membership, outbox=outbox, me=me, **common
        )
        self._actions = actions = Actions(
            timeline=timeline, outbox=outbox, membership=membership, signals=self._signals, me=me,
            transport=transport, worker=worker, events=events, clock=clock,
        )  # fmt: skip
        self._attachments = Attachments(
            timeline=timeline, outbox=outbox, membership=membership,
            actions=actions, me=me, transport=transport, devices=devices, home=profile.home,
        )  # fmt: skip
        self._account = Account(
            db=db, me=me, identity=device.identity, transport=transport, devices=devices,
            worker=worker, backup=backup,
        )  # fmt: skip
        self._sharing = Sharing(self._signals, transport, worker)
        keys = KeyTopUp(db, machine, transport)
        for step, handler in (
            (Step.RESYNC, self._resync),
            (Step.ENVELOPES, inbox.open_pushed),
            (Step.FLUSH, outbox.flush),
            (Step.REPLENISH, keys.replenish),
            (Step.TYPING, outbox.send_typing),
            (Step.EXPIRE, actions.expire_step),
            (Step.RECEIPTS, inbox.receipts_step),
            (Step.DELETE_BLOBS, actions.delete_blobs),
            (Step.GROUP_CHANGED, membership.changed),
            (Step.KEY_REQUEST_OUT, group_keys.request),
            (Step.KEY_REQUEST_IN, group_keys.answer),
        ):
            worker.handle(step, handler)
        worker.after_each(backup.maybe_upload)
        worker.repeat(EXPIRY_CHECK_S, actions.check_expiry)
        worker.repeat(KEY_RETRY_S, group_keys.rerequest)
        self._keys = keys

    def __repr__(self) -> str:
        return f"Client({self.username}/{self.device_id} @ {self.server_url})"

    async def _resync(self, _: object = None) -> None:
        """After every connect (and when the server lost pushes): catch up, in order."""
        self._devices.forget_all()
        await self._membership.sync()
        await self._inbox.sync()
        self._group_keys.rerequest()
        await self._outbox.flush()
        await self._keys.replenish()
        await self._devices.watch([u for u, *_ in self._profile.store.identities()])

    # -- opening ----------------------------------------------------------------------

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
        clock: Clock = system_clock,
    ) -> Client:
        """Create a profile in ``home`` and register a new account with its first
        device (``ProtocolError`` if the server refused; nothing is left in ``home``)."""
        device, recovery_key = await register_account(
            home,
            server_url=server_url,
            username=username,
            password=password,
            invite=invite,
            kdf=kdf,
        )
        client = cls(device, clock=clock)
        client.new_recovery_key = recovery_key
        try:
            await client.backup_now()
        except (NotConnected, ProtocolError) as exc:
            log.warning("first backup failed, will retry: %s", exc)
            client._backup.changed()
        return client

    @classmethod
    async def open(cls, home: Path, password: str, *, clock: Clock = system_clock) -> Client:
        """Unlock an existing profile (``WrongPassword`` if the password is wrong)."""
        device = unlock_device(home, password)
        try:
            return cls(device, clock=clock)
        except BaseException:
            device.profile.close()
            raise

    @classmethod
    async def link(
        cls, home: Path, *, server_url: str, password: str, kdf: KdfParams | None = None
    ) -> LinkRequest[Client]:
        """Start linking a new device in ``home`` to an existing account.

        Show ``request.code`` to an existing device (``approve_link``), then
        ``await request.finish()`` for the new device's ``Client``.
        """
        return await LinkRequest.start(
            home, server_url=server_url, password=password, kdf=kdf, open_client=cls
        )

    @classmethod
    async def recover(
        cls,
        home: Path,
        *,
        server_url: str,
        username: str,
        recovery_key: str,
        password: str,
        kdf: KdfParams | None = None,
        revoke_others: bool = True,
    ) -> Client:
        """Restore an account on a fresh device from its backup; with
        ``revoke_others`` (the default) every other device of the account, lost
        or perhaps stolen, is signed out."""
        device = await recover(
            home,
            server_url=server_url,
            username=username,
            recovery_key=recovery_key,
            password=password,
            kdf=kdf,
        )
        client = cls(device)
        if revoke_others:
            for other in await client.list_devices():
                if not other.current:
                    await client.remove_device(other.device_id)
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what waits to be coalesced, upload a due backup, stop, lock the profile."""
        worker = self._worker
        # Receipts still waiting to be coalesced: queued now, sent if we can.
        if self._inbox.queue_delivered_receipts() and self.connected and worker.started:
            await self.drain_outbox(2)
        if self._backup.dirty and self.connected:
            with contextlib.suppress(ClientError, ProtocolError, TimeoutError):
                await asyncio.wait_for(self.backup_now(), 10)
        await worker.stop()
        self._outbox.close()
        await self._inbox.close()
        await self.transport.flushed()  # acks sent without an answer, on the wire
        self._signals.close()
        await self.transport.aclose()
        self._profile.close()

    @property
    def connected(self) -> bool:
        return self.transport.connected

    def change_password(self, old: str, new: str) -> None:
        """Re-wrap the master key; ``WrongPassword`` if ``old`` is wrong."""
        _profile.change_password(self._profile.home, old, new)

    # -- events and connection ------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Event]:
        """A queue that receives every event from now on, until ``unsubscribe``:
        a queue no one reads any more keeps every event."""
        return self.events.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        """Stop sending events to a queue from ``subscribe`` (no error if it was not)."""
        self.events.unsubscribe(queue)

    async def connect(self, *, retry: bool = False, timeout: float = 10.0) -> None:
        """Connect and start processing. With ``retry``, an unreachable server is
        retried in the background instead of raising ``NotConnected``."""
        self._worker.start()
        self.events.emit(ConnectionChanged("connecting"))
        await self.transport.connect(retry=retry, wait_timeout=timeout)

    def resync(self) -> None:
        """Page the server's queue again (the server asks for it after losing pushes)."""
        self._worker.submit(Step.RESYNC)

    # -- sending ------------------------------------------------------------------------

    def flush_outbox(self) -> None:
        """Try sending what is queued now (a connect or a reconnect does it anyway)."""
        self._worker.submit(Step.FLUSH)

    async def send_text(self, peer: str, text: str, *, reply_to: str | None = None) -> Message:
        """Queue a text to a user or ``#group``; see ``Outbox.send_text``."""
        return await self._outbox.send_text(peer, text, reply_to=reply_to)

    async def wait_sent(self, message_id: str, timeout: float) -> Message:
        """Wait until the server has stored the message; ``TimeoutError`` otherwise."""
        return await self._outbox.wait_sent(message_id, timeout)

    def pending_count(self) -> int:
        return self._outbox.pending_count()

    async def drain_outbox(self, timeout: float) -> bool:
        """Wait until everything queued is sent (or refused); ``False`` on timeout."""
        return await self._outbox.drain(timeout)

    async def encrypt_for(self, message_id: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """Olm envelopes of a direct payload for each target device, unsent (for
        tools that speak the protocol through ``transport``)."""
        return await self._outbox.encrypt_for(message_id, payload)

    # -- reading ----------------------------------------------------------------------

    def history(self, peer: str, limit: int = 100, before: int | None = None) -> list[Message]:
        """The last ``limit`` messages with ``peer`` (or in group ``#name``), oldest first."""
        self.expire_now()
        return self._timeline.history(self.conversation_id(peer), limit, before)

    def conversation_id(self, peer: str) -> str:
        """The conversation id (``@user`` or ``#group_id``) of a user or ``#group``."""
        return self._membership.conversation_id(peer)

    def unread(self, limit: int = 10_000) -> list[Message]:
        """Incoming messages not yet returned by ``unread`` (a cursor kept in the
        profile, so ``bisik receive`` shows each once)."""
        self.expire_now()
        return self._timeline.unread(limit)

    def conversations(self) -> list[tuple[str, str]]:
        """``(conversation_id, last_message_body)``, most recent first."""
        self.expire_now()
        return [(c, body) for c, _, body in self._timeline.rows.conversations()]

    def mark_read(self, peer: str) -> int:
        """Mark a conversation read here, on our other devices and (receipts on)
        for the sender; returns how many were newly marked."""
        return self._actions.mark_read(peer)

    def unread_counts(self) -> dict[str, int]:
        """Unread incoming messages per conversation (agrees across our devices)."""
        return self._timeline.rows.unread_counts()

    def receipts(self, message_id: str) -> list[tuple[str, str, str, int]]:
        """``(username, device_id, kind, at)`` receipts for one of our messages."""
        return self._timeline.rows.receipts(message_id)

    # -- typing, presence, settings, push ------------------------------------------------

    def set_typing(self, peer: str, typing: bool) -> None:
        self._sharing.set_typing(peer, typing)

    async def presence(self, username: str) -> PresenceChanged | None:
        return await self._sharing.presence(username)

    async def settings(self) -> dict[str, bool]:
        return await self._sharing.settings()

    async def update_settings(
        self,
        *,
        presence: bool | None = None,
        typing: bool | None = None,
        read_receipts: bool | None = None,
    ) -> dict[str, bool]:
        """Change what we share; each is reciprocal (off: we see nobody's either)."""
        return await self._sharing.update_settings(
            presence=presence, typing=typing, read_receipts=read_receipts
        )

    async def register_push(self, subscription: dict[str, Any]) -> None:
        await self._sharing.register_push(subscription)

    async def push_public_key(self) -> str:
        return await self._sharing.push_public_key()

    # -- account, devices, verification (``Account``, ``Backup``) -------------------------

    @property
    def identity_key(self) -> str:
        return self._account.identity_key

    def safety_number(self, username: str) -> str:
        return self._account.safety_number(username)

    def is_verified(self, username: str) -> bool:
        return self._account.is_verified(username)

    async def mark_verified(self, username: str) -> None:
        await self._account.mark_verified(username)

    async def trust_identity(self, username: str) -> None:
        """Accept a changed identity key of ``username``; held messages come now.

        Raises:
            ClientError: ``username`` was verified: that needs ``mark_verified``.
        """
        await self._devices.trust(username)
        self._backup.changed()
        self._worker.submit(Step.RESYNC)

    async def list_devices(self) -> list[DeviceInfo]:
        return await self._account.list_devices()

    async def rename_device(self, device_id: str, name: str) -> None:
        await self._account.rename_device(device_id, name)

    async def remove_device(self, device_id: str) -> None:
        await self._account.remove_device(device_id)

    async def approve_link(
        self, code: str, *, confirm: Confirm, history_days: int = 30, timeout: float = 300.0
    ) -> str:
        """Link a new device that shows ``code``; returns its id (see ``Account``)."""
        return await self._account.approve_link(
            code, confirm=confirm, history_days=history_days, timeout=timeout
        )

    async def backup_now(self) -> bool:
        """Upload the encrypted account backup; ``False`` if there is no recovery key."""
        return await self._backup.upload()

    # -- groups (``Groups``, ``Membership``) ----------------------------------------------

    def groups(self) -> list[LocalGroup]:
        return self._membership.all()

    def group(self, ref: str) -> LocalGroup:
        return self._membership.group(ref)

    async def create_group(
        self, name: str, members: list[str], *, description: str = ""
    ) -> LocalGroup:
        return await self._groups.create_group(name, members, description=description)

    async def add_members(self, ref: str, usernames: list[str]) -> LocalGroup:
        return await self._groups.add_members(ref, usernames)

    async def remove_member(self, ref: str, username: str) -> LocalGroup:
        return await self._groups.remove_member(ref, username)

    async def leave_group(self, ref: str) -> None:
        await self._groups.leave_group(ref)

    async def promote(self, ref: str, username: str) -> LocalGroup:
        return await self._groups.promote(ref, username)

    async def rename_group(self, ref: str, name: str, description: str | None = None) -> None:
        await self._groups.rename_group(ref, name, description)

    def waiting_count(self, ref: str | None = None) -> int:
        return self._groups.waiting_count(ref)

    # -- timers and message actions (``Actions``) ---------------------------------------

    def timer(self, target: str) -> int | None:
        """The conversation's disappearing-message timer in ms (``None``: off)."""
        return self._timeline.timer(self.conversation_id(target))

    def set_timer(self, target: str, seconds: int | None) -> Message:
        return self._actions.set_timer(self.conversation_id(target), seconds)

    def react(self, message_id: str, emoji: str) -> None:
        self._actions.react(message_id, emoji)

    def edit(self, message_id: str, text: str) -> Message:
        return self._actions.edit(message_id, text)

    def delete_message(self, message_id: str, *, everyone: bool = False) -> None:
        self._actions.delete(message_id, everyone=everyone)

    def expire_now(self) -> int:
        return self._actions.expire_now()

    def edits(self, message_id: str) -> list[tuple[str, int]]:
        """Earlier texts of an edited message, ``(text, replaced_at)``, oldest first."""
        return self._timeline.edits(message_id)

    # -- attachments (``Attachments``) ------------------------------------------------------

    async def send_file(
        self,
        peer: str,
        path: Path,
        *,
        caption: str = "",
        progress: Progress | None = None,
        strip_metadata: bool = True,
        reply_to: str | None = None,
        view_once: bool = False,
    ) -> Message:
        return await self._attachments.send_file(
            peer,
            path,
            caption=caption,
            progress=progress,
            strip_metadata=strip_metadata,
            reply_to=reply_to,
            view_once=view_once,
        )

    def attachment(self, message_id: str) -> tuple[AttachmentInfo, Path | None] | None:
        return self._attachments.attachment(message_id)

    async def download_attachment(
        self, message_id: str, out: Path | None = None, *, progress: Progress | None = None
    ) -> Path:
        return await self._attachments.download_attachment(message_id, out, progress=progress)

    async def delete_attachment(self, message_id: str) -> None:
        await self._attachments.delete_attachment(message_id)

    async def attachment_usage(self) -> dict[str, int]:
        return await self._attachments.attachment_usage()
