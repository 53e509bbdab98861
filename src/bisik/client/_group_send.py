"""Sending to a group: one outbound Megolm session per group on this device,
its key shared over Olm with every member device before the first message
that needs it, from the current index (a new member reads from the moment
they were added, not before). The session is replaced when a member or a
member's device goes away, after ``ROTATE_AFTER_MESSAGES`` messages or after
``ROTATE_AFTER_MS``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from bisik.client._clock import Clock
from bisik.client._core import Encryptor
from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, IdentityKeyChanged
from bisik.client._group_store import GroupStore, Inbound, LocalGroup, Outbound
from bisik.client._membership import Membership
from bisik.client._models import (
    DeviceStamp,
    GroupMeta,
    GroupPlaintext,
    RoomKeyContent,
    new_message_id,
    padded,
)
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._transport import Transport
from bisik.client._worker import Worker
from bisik.crypto import MegolmInbound, MegolmOutbound, OlmMachine, parse_megolm
from bisik.proto import ErrorCode, ProtocolError

log = logging.getLogger("bisik.client.groups")

ROTATE_AFTER_MESSAGES = 100
ROTATE_AFTER_MS = 7 * 24 * 3600 * 1000
MAX_ENVELOPES_PER_SEND = 1000


def _device_ref(d: StoredDevice) -> str:
    return f"{d.username}/{d.device_id}/{d.curve25519}"


class GroupSender:
    def __init__(
        self,
        *,
        db: LocalStore,
        groups: GroupStore,
        membership: Membership,
        machine: OlmMachine,
        me: DeviceStamp,
        pickle_key: bytes,
        transport: Transport,
        devices: DeviceDirectory,
        encryptor: Encryptor,
        worker: Worker,
        clock: Clock,
    ) -> None:
        self._db = db
        self._groups = groups
        self._membership = membership
        self._machine = machine
        self._me = me
        self._pickle_key = pickle_key
        self._transport = transport
        self._devices = devices
        self._encryptor = encryptor
        self._worker = worker
        self._clock = clock

    async def send(
        self, message_id: str, payload: dict[str, Any], cached: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """Encrypt (once: a resend reuses the ciphertext) and send one group message."""
        group_id = str(payload["group"])
        if cached is None:
            body = await self._encrypt(group_id, message_id, payload)
        else:
            body = str(cached[0]["megolm"])
        request = {"group_id": group_id, "client_message_id": message_id, "body": body}
        if payload.get("ttl_ms"):
            request["ttl_ms"] = payload["ttl_ms"]
        result = await self._worker.waiting(self._transport.call("group_send", request))
        header = parse_megolm(body)
        with self._db.transaction():
            self._groups.set_sent_at(header.session_id, header.message_index, int(result["ts"]))
        return result

    async def _encrypt(self, group_id: str, message_id: str, payload: dict[str, Any]) -> str:
        for attempt in range(3):
            try:
                return await self._encrypt_once(group_id, message_id, payload)
            except ProtocolError as exc:
                # Someone left or removed a device while we shared the key: look again.
                if exc.code not in (ErrorCode.NOT_A_MEMBER, ErrorCode.UNKNOWN_DEVICE) or (
                    attempt == 2
                ):
                    raise
                group = self._groups.group(group_id)
                for member in group.members if group is not None else []:
                    self._devices.forget(member.username)
                self._membership.stale.add(group_id)
                with self._db.transaction():
                    self._groups.drop_outbound(group_id)
        raise AssertionError("unreachable")

    async def _encrypt_once(self, group_id: str, message_id: str, payload: dict[str, Any]) -> str:
        # The member list is kept current by group_changed pushes and by the
        # catch-up after every connect; a share refused as stale refreshes it.
        group = self._groups.group(group_id)
        if group is None or group_id in self._membership.stale:
            group = await self._membership.refresh(group_id)
        if group is None or not group.active:
            raise ClientError("you are no longer a member of this group")
        targets = await self._member_devices(group)
        refs = {_device_ref(d) for d in targets}
        now = self._clock()
        stored = self._groups.outbound(group_id)
        session: MegolmOutbound | None = None
        if stored is not None and not (
            stored.shared_with - refs
            or now - stored.created_at > ROTATE_AFTER_MS
            or self._groups.sent_count(stored.session_id) >= ROTATE_AFTER_MESSAGES
        ):
            session = MegolmOutbound.from_pickle(stored.pickle, self._pickle_key)
            outbound = stored
        if session is None:
            session = MegolmOutbound.create()
            outbound = Outbound(session.session_id, session.pickle(self._pickle_key), now, set())
            own = MegolmInbound.from_session_key(session.session_key())
            with self._db.transaction():
                self._groups.save_outbound(group_id, outbound)
                # Our own copy from index 0: it answers key requests.
                self._groups.save_inbound(
                    Inbound(
                        session.session_id,
                        group_id,
                        self._me.username,
                        self._me.device_id,
                        self._me.ed25519,
                        own.pickle(self._pickle_key),
                        0,
                    ),
                    now,
                )
        missing = [d for d in targets if _device_ref(d) not in outbound.shared_with]
        if missing:
            shared = await self._share_key(group_id, session, missing)
            outbound = Outbound(
                outbound.session_id,
                outbound.pickle,
                outbound.created_at,
                outbound.shared_with | {_device_ref(d) for d in shared},
            )
            with self._db.transaction():
                self._groups.save_outbound(group_id, outbound)
        content = GroupPlaintext(
            type=payload.get("type", "text"),
            id=message_id,
            sender=self._me,
            group_id=group_id,
            sent_at=int(payload["sent_at"]),
            body=str(payload.get("body", "")),
            meta=payload.get("meta"),
            reply_to=payload.get("reply_to"),
            expires_in=payload.get("expires_in"),
            view_once=bool(payload.get("view_once", False)),
            action=payload.get("action"),
            attachment=payload.get("attachment"),
        )
        with self._db.transaction():
            index = session.message_index
            body = session.encrypt(padded(content))
            self._groups.save_outbound(
                group_id,
                Outbound(
                    outbound.session_id,
                    session.pickle(self._pickle_key),
                    outbound.created_at,
                    outbound.shared_with,
                ),
            )
            self._groups.add_sent(session.session_id, index, now)
            self._db.set_outbox_envelopes(message_id, [{"megolm": body}])
        return body

    async def _member_devices(self, group: LocalGroup) -> list[StoredDevice]:
        """Every verified device of every member, but this one."""
        devices: list[StoredDevice] = []
        known = self._devices.fresh_devices([m.username for m in group.members])
        for member in group.members:
            try:
                found = known.get(member.username) or await self._devices.recipient_devices(
                    member.username, refresh=True
                )
            except IdentityKeyChanged:
                log.warning("not sharing group keys with %s: identity key changed", member.username)
                continue
            except ProtocolError as exc:
                if exc.code != ErrorCode.UNKNOWN_USER:
                    raise
                continue
            devices += [
                d
                for d in found
                if (d.username, d.device_id) != (self._me.username, self._me.device_id)
            ]
        return devices

    async def _share_key(
        self, group_id: str, session: MegolmOutbound, devices: list[StoredDevice]
    ) -> list[StoredDevice]:
        """Send our session key over Olm; returns the devices it went to."""
        group = self._groups.group(group_id)
        key = RoomKeyContent(
            group_id=group_id,
            session_id=session.session_id,
            key=session.session_key(),
            owner=self._me,
            meta=GroupMeta(name=group.name, description=group.description)
            if group is not None and group.name
            else None,
        )
        return await self.send_olm_control(group_id, devices, "room_key", room_key=key)

    async def send_olm_control(
        self,
        group_id: str,
        devices: list[StoredDevice],
        kind: Literal["room_key", "key_request"],
        **fields: Any,
    ) -> list[StoredDevice]:
        """One Olm envelope per device, sent as group traffic (the server checks
        that everyone involved is a member). Devices without a claimable key are skipped."""
        try:
            await self._devices.ensure_sessions(self._machine, devices)
        except ClientError as exc:
            log.warning("group %s: %s", group_id, exc)
        devices = [d for d in devices if self._machine.has_session(d.curve25519)]
        now = self._clock()
        for start in range(0, len(devices), MAX_ENVELOPES_PER_SEND):
            chunk = devices[start : start + MAX_ENVELOPES_PER_SEND]
            message_id = new_message_id()
            envelopes = self._encryptor.envelopes(
                chunk, type=kind, id=message_id, sent_at=now, **fields
            )
            await self._transport.call(
                "send",
                {"client_message_id": message_id, "group_id": group_id, "envelopes": envelopes},
            )
        return devices

    def _stamp(self) -> DeviceStamp:
        return DeviceStamp(
            username=self._me.username, device_id=self._me.device_id, ed25519=self._me.ed25519
        )
