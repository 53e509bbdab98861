"""Group messages that cannot be opened at once: the sender is not in our
member list yet (fetched), or the key has not arrived. Such a message waits
locally (``MessageWaiting``) while a key request goes to the sender's devices;
only the device that owns the session answers, and only for a requester who is
a member now and was one when the message was sent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bisik.client._clock import Clock
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import NotConnected
from bisik.client._events import EventBus
from bisik.client._group_receive import GroupReceiver, GroupRejected, check_session
from bisik.client._group_send import GroupSender
from bisik.client._group_store import GroupStore, Inbound, Waiting
from bisik.client._membership import Membership
from bisik.client._models import (
    DeviceStamp,
    KeyRequestContent,
    MessageWaiting,
    Plaintext,
    RoomKeyContent,
    group_conversation,
)
from bisik.client._store import NOT_CONTENT_ERRORS, LocalStore, StoredDevice
from bisik.client._transport import Transport
from bisik.client._worker import Step, Worker
from bisik.crypto import MegolmInbound
from bisik.proto import ProtocolError

# Raised through: not about one message (see ``Opener.open_run``).
_NOT_CONTENT: tuple[type[Exception], ...] = (*NOT_CONTENT_ERRORS, NotConnected, ProtocolError)

log = logging.getLogger("bisik.client.groups")

# At most one key request per session this often, and one answer per requester.
KEY_REQUEST_INTERVAL_S = 30.0
KEY_ANSWER_INTERVAL_S = 5.0
# Keys of messages still waiting are asked for again this often.
KEY_RETRY_S = 31.0


class GroupKeys:
    def __init__(
        self,
        *,
        db: LocalStore,
        groups: GroupStore,
        receiver: GroupReceiver,
        membership: Membership,
        sender: GroupSender,
        me: DeviceStamp,
        pickle_key: bytes,
        transport: Transport,
        devices: DeviceDirectory,
        worker: Worker,
        events: EventBus,
        clock: Clock,
    ) -> None:
        self._db = db
        self._groups = groups
        self._receiver = receiver
        self._membership = membership
        self._sender = sender
        self._me = me
        self._pickle_key = pickle_key
        self._transport = transport
        self._devices = devices
        self._worker = worker
        self._events = events
        self._clock = clock
        self._key_requests: dict[str, float] = {}
        self._key_answers: dict[tuple[str, str, str], float] = {}

    async def open_envelope(self, env: dict[str, Any], key: str, device: StoredDevice) -> str:
        item = self._receiver.waiting_item(env, key, device)
        inbound = self._groups.inbound(item.session_id)
        if inbound is None or item.message_index < inbound.first_index:
            with self._db.transaction():
                self._groups.add_waiting(item, self._clock())
                self._db.mark_processed(key, "waiting", self._clock())
            self._events.emit(
                MessageWaiting(group_conversation(item.group_id), device.username, device.device_id)
            )
            self._worker.submit(Step.KEY_REQUEST_OUT, item)
            return "waiting"
        return await self._open_message(item, inbound, device)

    async def _open_message(self, item: Waiting, inbound: Inbound, device: StoredDevice) -> str:
        """Decrypt and store a group message whose key we hold."""
        check_session(item, inbound)
        group = self._groups.group(item.group_id)
        if group is None or group.member(item.sender) is None:
            group = await self._membership.refresh(item.group_id)
            if group is None or group.member(item.sender) is None:
                raise GroupRejected("the sender is not a member of the group")
        for event in self._receiver.store(item, inbound, group):
            self._events.emit(event)
        return "received"

    async def retry_waiting(self, session_id: str) -> None:
        inbound = self._groups.inbound(session_id)
        if inbound is None:
            return
        for item in self._groups.waiting(session_id):
            if item.message_index < inbound.first_index:
                continue
            device = self._db.device(item.sender, item.sender_device)
            if device is None:
                continue
            try:
                await self._open_message(item, inbound, device)
            except _NOT_CONTENT:
                raise
            except Exception as exc:  # GroupRejected, or content no check foresaw
                log.warning("dropping a waiting group message: %s", exc)
                with self._db.transaction():
                    self._groups.remove_waiting(item.envelope_key)

    # -- key requests -----------------------------------------------------------------

    def rerequest(self) -> None:
        """Ask again for the keys of messages still waiting (throttled per session):
        a request can be lost, or reach the owner before it could answer."""
        seen: set[str] = set()
        for item in self._groups.waiting():
            if item.session_id not in seen:
                seen.add(item.session_id)
                self._worker.submit(Step.KEY_REQUEST_OUT, item)

    async def request(self, item: Waiting) -> None:
        """Ask the sender's devices for the key of a waiting message (throttled)."""
        inbound = self._groups.inbound(item.session_id)
        if inbound is not None and item.message_index >= inbound.first_index:
            await self.retry_waiting(item.session_id)
            return
        last = self._key_requests.get(item.session_id, 0.0)
        if time.monotonic() - last < KEY_REQUEST_INTERVAL_S:
            return
        self._key_requests[item.session_id] = time.monotonic()
        devices = [
            d
            for d in await self._devices.recipient_devices(item.sender, refresh=True)
            if (d.username, d.device_id) != (self._me.username, self._me.device_id)
        ]
        request = KeyRequestContent(
            group_id=item.group_id, session_id=item.session_id, index=item.message_index
        )
        try:
            await self._sender.send_olm_control(
                item.group_id, devices, "key_request", key_request=request
            )
        except ProtocolError as exc:
            log.info("key request not sent: %s", exc)
            return

    async def answer(self, data: tuple[Plaintext, StoredDevice]) -> None:
        """Forward our session's key from the requested index, if the requester may read it."""
        content, device = data
        request = content.key_request
        if request is None:
            return
        inbound = self._groups.inbound(request.session_id)
        if (
            inbound is None
            or (inbound.owner, inbound.owner_device) != (self._me.username, self._me.device_id)
            or inbound.group_id != request.group_id
        ):
            return  # not our session: its owner answers
        slot = (device.username, device.device_id, request.session_id)
        if time.monotonic() - self._key_answers.get(slot, 0.0) < KEY_ANSWER_INTERVAL_S:
            return
        self._key_answers[slot] = time.monotonic()
        # The server attests since when the device may read: the later of its
        # user joining the group and the device being added to the account.
        since = (
            await self._transport.call(
                "group_device",
                {
                    "group_id": request.group_id,
                    "username": device.username,
                    "device_id": device.device_id,
                },
            )
        )["readable_from"]
        allowed = (
            None if since is None else self._groups.first_sent_since(request.session_id, since)
        )
        if allowed is None or request.index < allowed:
            log.warning(
                "refusing %s/%s a group key: not a member when the message was sent",
                device.username,
                device.device_id,
            )
            return
        exported = MegolmInbound.from_pickle(inbound.pickle, self._pickle_key).export_at(
            request.index
        )
        if exported is None:
            return
        key = RoomKeyContent(
            group_id=request.group_id,
            session_id=request.session_id,
            key=exported,
            exported=True,
            owner=self._me,
        )
        await self._sender.send_olm_control(request.group_id, [device], "room_key", room_key=key)
