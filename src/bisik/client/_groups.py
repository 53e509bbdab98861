"""Groups: membership, Megolm sender keys, key sharing and key requests.
Mixed into ``Client``; runs in its worker task like everything that touches
the ratchets or the store.

Each of our devices keeps one outbound Megolm session per group and shares
its key over Olm with every member device before the first message that
needs it, from the current index (a new member reads from the moment they
were added, not before). The session is replaced when a member or a member's
device goes away, after ``ROTATE_AFTER_MESSAGES`` messages or after
``ROTATE_AFTER_MS``. A message whose key has not arrived waits locally
(``MessageWaiting``) while a key request goes to the sender's devices; only
the device that owns the session answers, and only for a requester who is a
member now and was one when the message was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pydantic

from bisik.client._devices import DeviceDirectory
from bisik.client._errors import ClientError, IdentityKeyChanged
from bisik.client._group_store import GroupStore, Inbound, LocalGroup, Member, Outbound, Waiting
from bisik.client._models import (
    DeviceStamp,
    Event,
    GroupChanged,
    GroupMeta,
    GroupPlaintext,
    KeyRequestContent,
    Message,
    MessageReceived,
    MessageWaiting,
    Plaintext,
    RoomKeyContent,
    group_conversation,
    new_message_id,
)
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._transport import Transport
from bisik.crypto import (
    CryptoError,
    MegolmDecryptError,
    MegolmInbound,
    MegolmOutbound,
    OlmMachine,
    parse_megolm,
)
from bisik.proto import ErrorCode, ProtocolError, validate_username

log = logging.getLogger("bisik.client.groups")

ROTATE_AFTER_MESSAGES = 100
ROTATE_AFTER_MS = 7 * 24 * 3600 * 1000
# At most one key request per session this often, and one answer per requester.
KEY_REQUEST_INTERVAL_S = 30.0
MAX_ENVELOPES_PER_SEND = 1000


def _now() -> int:
    return int(time.time() * 1000)


def _device_ref(d: StoredDevice) -> str:
    return f"{d.username}/{d.device_id}/{d.curve25519}"


class GroupRejected(ClientError):
    """A group message or key that fails a check; it is dropped and reported."""


class GroupsMixin:
    username: str
    device_id: str
    _transport: Transport
    _store: LocalStore
    _machine: OlmMachine
    _devices: DeviceDirectory
    _queue: asyncio.Queue[tuple[str, Any]]
    _emit: Callable[[Event], None]
    _sent_waiters: dict[str, asyncio.Future[Message]]
    clock: Callable[[], int]
    # ActionsMixin
    _record_extras: Callable[..., bool]
    _forget: Callable[[str, str], None]
    _apply_action: Callable[..., list[Event]]
    _with_extras: Callable[[list[Message]], list[Message]]
    _queue_message: Callable[[str, str, dict[str, Any], dict[str, Any]], Message]
    _olm_envelopes: Callable[..., list[dict[str, Any]]]
    _answer_of: Callable[[Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]
    _enqueue: Callable[[str, Any], None]

    def _init_groups(self, pickle_key: bytes) -> None:
        self._gdb = GroupStore(self._store)
        self._pickle_key = pickle_key
        self._key_requests: dict[str, float] = {}
        self._stale_groups: set[str] = set()
        self._key_answers: dict[tuple[str, str, str], float] = {}
        # How often the "waiting for key" path ran, for tests and the closing report.
        self.group_stats = {
            "received": 0,
            "waiting": 0,
            "key_requests_sent": 0,
            "key_requests_answered": 0,
            "key_requests_refused": 0,
            "recovered": 0,
        }
        self._transport.on("group_changed", self._on_group_changed)

    # -- public API -------------------------------------------------------------------

    def groups(self) -> list[LocalGroup]:
        """The groups we are in, by name."""
        return self._gdb.groups()

    def group(self, ref: str) -> LocalGroup:
        """A group by ``#name``, ``#id``, name or id (``ClientError`` if unknown or ambiguous)."""
        key = ref[1:] if ref.startswith("#") else ref
        found = self._gdb.group(key)
        if found is not None:
            return found
        named = [g for g in self._gdb.groups() if g.name == key]
        if len(named) == 1:
            return named[0]
        if named:
            raise ClientError(f"{len(named)} groups are called {key!r}: use the group id")
        raise ClientError(f"no group {ref!r}")

    async def create_group(
        self, name: str, members: list[str], *, description: str = ""
    ) -> LocalGroup:
        """Create a group with us as admin; its name travels end-to-end encrypted."""
        meta = self._meta(name, description)
        for username in members:
            validate_username(username)
        info = await self._transport.call("group_create", {"members": members})
        group_id = str(info["group_id"])
        with self._store.transaction():
            self._save_info(info)
            self._gdb.set_meta(group_id, meta.name, meta.description, _now())
        await self._devices.watch([m["username"] for m in info["members"]])
        self._queue_group(group_id, {"type": "meta", "meta": meta.model_dump()})
        return self.group(group_id)

    async def add_members(self, ref: str, usernames: list[str]) -> LocalGroup:
        """Add members (admins only). They can read what is sent from now on."""
        group = self.group(ref)
        for username in usernames:
            validate_username(username)
        info = await self._transport.call(
            "group_add", {"group_id": group.group_id, "usernames": usernames}
        )
        with self._store.transaction():
            self._save_info(info)
        await self._devices.watch(usernames)
        # The new members learn the group's name from the next message.
        self._queue_group(
            group.group_id,
            {"type": "meta", "meta": {"name": group.name, "description": group.description}},
        )
        return self.group(group.group_id)

    async def remove_member(self, ref: str, username: str) -> LocalGroup:
        """Remove a member (admins only); our next message uses a new session."""
        group = self.group(ref)
        info = await self._transport.call(
            "group_remove", {"group_id": group.group_id, "username": username}
        )
        with self._store.transaction():
            self._save_info(info)
            self._gdb.drop_outbound(group.group_id)
        return self.group(group.group_id)

    async def leave_group(self, ref: str) -> None:
        group = self.group(ref)
        await self._transport.call("group_leave", {"group_id": group.group_id})
        with self._store.transaction():
            self._gdb.save_membership(group.group_id, group.version, [], False, _now())
            self._gdb.drop_outbound(group.group_id)

    async def promote(self, ref: str, username: str) -> LocalGroup:
        group = self.group(ref)
        info = await self._transport.call(
            "group_promote", {"group_id": group.group_id, "username": username}
        )
        with self._store.transaction():
            self._save_info(info)
        return self.group(group.group_id)

    async def rename_group(self, ref: str, name: str, description: str | None = None) -> None:
        """Rename (admins only): an encrypted control message to every member."""
        group = self.group(ref)
        if group.role_of(self.username) != "admin":
            raise ClientError("only an admin can rename the group")
        meta = self._meta(name, group.description if description is None else description)
        with self._store.transaction():
            self._gdb.set_meta(group.group_id, meta.name, meta.description, _now())
        self._queue_group(group.group_id, {"type": "meta", "meta": meta.model_dump()})

    def waiting_count(self, ref: str | None = None) -> int:
        """Group messages still waiting for their key."""
        items = self._gdb.waiting()
        if ref is not None:
            group_id = self.group(ref).group_id
            items = [w for w in items if w.group_id == group_id]
        return len(items)

    def _meta(self, name: str, description: str) -> GroupMeta:
        try:
            return GroupMeta(name=name.strip(), description=description)
        except pydantic.ValidationError:
            raise ClientError(
                "a group name is 1-100 characters, a description at most 1,000"
            ) from None

    def _queue_group(self, group_id: str, payload: dict[str, Any]) -> str:
        message_id = new_message_id()
        now = self.clock()
        with self._store.transaction():
            self._store.add_outbox(
                message_id,
                group_conversation(group_id),
                {"sent_at": now, **payload, "group": group_id},
                now,
            )
        self._queue.put_nowait(("flush", None))
        return message_id

    def _queue_group_text(self, ref: str, text: str, extras: dict[str, Any]) -> Message:
        group = self.group(ref)
        if not group.active:
            raise ClientError("you are no longer a member of this group")
        return self._queue_message(
            group_conversation(group.group_id),
            text,
            {"group": group.group_id, "type": "text"},
            extras,
        )

    # -- membership -------------------------------------------------------------------

    def _save_info(self, info: dict[str, Any]) -> None:
        members = [
            Member(str(m["username"]), str(m["role"]), int(m["added_at"])) for m in info["members"]
        ]
        active = any(m.username == self.username for m in members)
        self._gdb.save_membership(
            str(info["group_id"]), int(info["version"]), members, active, _now()
        )

    async def _refresh_group(self, group_id: str) -> LocalGroup | None:
        """Fetch the member list; a group we are no longer in becomes inactive."""
        try:
            info = await self._transport.call("group_info", {"group_id": group_id})
        except ProtocolError as exc:
            if exc.code != ErrorCode.NOT_A_MEMBER:
                raise
            known = self._gdb.group(group_id)
            with self._store.transaction():
                self._gdb.save_membership(
                    group_id, known.version if known else 0, [], False, _now()
                )
                self._gdb.drop_outbound(group_id)
            return self._gdb.group(group_id)
        with self._store.transaction():
            self._save_info(info)
        self._stale_groups.discard(group_id)
        await self._devices.watch([str(m["username"]) for m in info["members"]])
        return self._gdb.group(group_id)

    async def _sync_groups(self) -> None:
        """After a (re)connect: catch up with membership changes we missed."""
        listed = (await self._transport.call("group_list", {}))["groups"]
        versions = {str(g["group_id"]): int(g["version"]) for g in listed}
        for group in self._gdb.groups():
            if group.group_id not in versions:
                await self._refresh_group(group.group_id)
        for group_id, version in versions.items():
            known = self._gdb.group(group_id)
            if known is None or known.version != version or not known.active:
                await self._refresh_group(group_id)

    async def _on_group_changed(self, data: Any = None) -> None:
        if isinstance(data, dict) and isinstance(data.get("group_id"), str):
            self._enqueue("group_changed", data)

    async def _group_changed(self, data: dict[str, Any]) -> None:
        group_id = str(data["group_id"])
        kind = str(data.get("kind", ""))
        usernames = [str(u) for u in data.get("usernames", []) if isinstance(u, str)]
        if kind in ("removed", "left"):
            # Whoever left must not read what comes next: a new session.
            with self._store.transaction():
                self._gdb.drop_outbound(group_id)
        await self._refresh_group(group_id)
        self._emit(GroupChanged(group_id, kind, str(data.get("actor", "")), usernames))

    # -- sending ----------------------------------------------------------------------

    async def _send_group_item(
        self, message_id: str, payload: dict[str, Any], cached: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """Encrypt (once: a resend reuses the ciphertext) and send one group message."""
        group_id = str(payload["group"])
        if cached is None:
            body = await self._group_encrypt(group_id, message_id, payload)
        else:
            body = str(cached[0]["megolm"])
        request = {"group_id": group_id, "client_message_id": message_id, "body": body}
        if payload.get("ttl_ms"):
            request["ttl_ms"] = payload["ttl_ms"]
        result = await self._answer_of(self._transport.call("group_send", request))
        header = parse_megolm(body)
        with self._store.transaction():
            self._gdb.set_sent_at(header.session_id, header.message_index, int(result["ts"]))
        return result

    async def _group_encrypt(self, group_id: str, message_id: str, payload: dict[str, Any]) -> str:
        for attempt in range(3):
            try:
                return await self._group_encrypt_once(group_id, message_id, payload)
            except ProtocolError as exc:
                # Someone left or removed a device while we shared the key: look again.
                if exc.code not in (ErrorCode.NOT_A_MEMBER, ErrorCode.UNKNOWN_DEVICE) or (
                    attempt == 2
                ):
                    raise
                group = self._gdb.group(group_id)
                for member in group.members if group is not None else []:
                    self._devices.forget(member.username)
                self._stale_groups.add(group_id)
                with self._store.transaction():
                    self._gdb.drop_outbound(group_id)
        raise AssertionError("unreachable")

    async def _group_encrypt_once(
        self, group_id: str, message_id: str, payload: dict[str, Any]
    ) -> str:
        # The member list is kept current by group_changed pushes and by the
        # catch-up after every connect; a share refused as stale refreshes it.
        group = self._gdb.group(group_id)
        if group is None or group_id in self._stale_groups:
            group = await self._refresh_group(group_id)
        if group is None or not group.active:
            raise ClientError("you are no longer a member of this group")
        targets = await self._member_devices(group)
        refs = {_device_ref(d) for d in targets}
        now = _now()
        stored = self._gdb.outbound(group_id)
        session: MegolmOutbound | None = None
        if stored is not None and not (
            stored.shared_with - refs
            or now - stored.created_at > ROTATE_AFTER_MS
            or self._gdb.sent_count(stored.session_id) >= ROTATE_AFTER_MESSAGES
        ):
            session = MegolmOutbound.from_pickle(stored.pickle, self._pickle_key)
            outbound = stored
        if session is None:
            session = MegolmOutbound.create()
            outbound = Outbound(session.session_id, session.pickle(self._pickle_key), now, set())
            own = MegolmInbound.from_session_key(session.session_key())
            with self._store.transaction():
                self._gdb.save_outbound(group_id, outbound)
                # Our own copy from index 0: it answers key requests.
                self._gdb.save_inbound(
                    Inbound(
                        session.session_id,
                        group_id,
                        self.username,
                        self.device_id,
                        self._machine.ed25519,
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
            with self._store.transaction():
                self._gdb.save_outbound(group_id, outbound)
        content = GroupPlaintext(
            type=payload.get("type", "text"),
            id=message_id,
            sender=self._stamp(),
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
        with self._store.transaction():
            index = session.message_index
            body = session.encrypt(content.model_dump_json().encode())
            self._gdb.save_outbound(
                group_id,
                Outbound(
                    outbound.session_id,
                    session.pickle(self._pickle_key),
                    outbound.created_at,
                    outbound.shared_with,
                ),
            )
            self._gdb.add_sent(session.session_id, index, now)
            self._store.set_outbox_envelopes(message_id, [{"megolm": body}])
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
                d for d in found if (d.username, d.device_id) != (self.username, self.device_id)
            ]
        return devices

    async def _share_key(
        self, group_id: str, session: MegolmOutbound, devices: list[StoredDevice]
    ) -> list[StoredDevice]:
        """Send our session key over Olm; returns the devices it went to."""
        group = self._gdb.group(group_id)
        key = RoomKeyContent(
            group_id=group_id,
            session_id=session.session_id,
            key=session.session_key(),
            owner=self._stamp(),
            meta=GroupMeta(name=group.name, description=group.description)
            if group is not None and group.name
            else None,
        )
        return await self._send_olm_control(group_id, devices, "room_key", room_key=key)

    async def _send_olm_control(
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
        now = _now()
        for start in range(0, len(devices), MAX_ENVELOPES_PER_SEND):
            chunk = devices[start : start + MAX_ENVELOPES_PER_SEND]
            message_id = new_message_id()
            envelopes = self._olm_envelopes(chunk, type=kind, id=message_id, sent_at=now, **fields)
            await self._transport.call(
                "send",
                {"client_message_id": message_id, "group_id": group_id, "envelopes": envelopes},
            )
        return devices

    def _stamp(self) -> DeviceStamp:
        return DeviceStamp(
            username=self.username, device_id=self.device_id, ed25519=self._machine.ed25519
        )

    # -- receiving --------------------------------------------------------------------

    async def _handle_group_envelope(
        self, env: dict[str, Any], key: str, device: StoredDevice
    ) -> str:
        item = self._waiting_item(env, key, device)
        inbound = self._gdb.inbound(item.session_id)
        if inbound is None or item.message_index < inbound.first_index:
            with self._store.transaction():
                self._gdb.add_waiting(item, _now())
                self._store.mark_processed(key, "waiting", _now())
            self.group_stats["waiting"] += 1
            self._emit(
                MessageWaiting(group_conversation(item.group_id), device.username, device.device_id)
            )
            self._queue.put_nowait(("key_request_out", item))
            return "waiting"
        return await self._open_group_message(item, inbound, device)

    def _open_group_now(
        self, env: dict[str, Any], key: str, device: StoredDevice
    ) -> list[Event] | None:
        """Open a group message inside the caller's transaction when nothing is
        missing (its key, the sender in our member list); ``None`` when it needs
        ``_handle_group_envelope`` (which may ask the server). Returns the events
        to emit once committed; raises ``GroupRejected``."""
        item = self._waiting_item(env, key, device)
        inbound = self._gdb.inbound(item.session_id)
        if inbound is None or item.message_index < inbound.first_index:
            return None
        group = self._gdb.group(item.group_id)
        if group is None or group.member(item.sender) is None:
            return None
        _check_session(item, inbound)
        return self._store_group_message(item, inbound, group)

    def _waiting_item(self, env: dict[str, Any], key: str, device: StoredDevice) -> Waiting:
        group_id = env.get("group_id")
        if not isinstance(group_id, str):
            raise GroupRejected("group message without a group")
        try:
            header = parse_megolm(str(env["body"]))
        except MegolmDecryptError as exc:
            raise GroupRejected(str(exc)) from None
        return Waiting(
            key,
            group_id,
            device.username,
            device.device_id,
            header.session_id,
            header.message_index,
            str(env["body"]),
            int(env.get("seq", 0)),
        )

    async def _open_group_message(
        self, item: Waiting, inbound: Inbound, device: StoredDevice
    ) -> str:
        """Decrypt and store a group message whose key we hold."""
        _check_session(item, inbound)
        group = self._gdb.group(item.group_id)
        if group is None or group.member(item.sender) is None:
            group = await self._refresh_group(item.group_id)
            if group is None or group.member(item.sender) is None:
                raise GroupRejected("the sender is not a member of the group")
        for event in self._store_group_message(item, inbound, group):
            self._emit(event)
        return "received"

    def _store_group_message(
        self, item: Waiting, inbound: Inbound, group: LocalGroup
    ) -> list[Event]:
        """Decrypt, check and store a group message (its own transaction, or a
        savepoint in the caller's); the events to emit once committed."""
        session = MegolmInbound.from_pickle(inbound.pickle, self._pickle_key)
        try:
            plaintext = session.decrypt(parse_megolm(item.body))
            content = GroupPlaintext.model_validate_json(plaintext)
        except (CryptoError, pydantic.ValidationError) as exc:
            raise GroupRejected(f"cannot read the group message: {exc}") from None
        if (content.sender.username, content.sender.device_id, content.sender.ed25519) != (
            inbound.owner,
            inbound.owner_device,
            inbound.owner_ed25519,
        ) or content.group_id != item.group_id:
            raise GroupRejected("the content names another sender or group than its session")
        events: list[Event] = []
        with self._store.transaction():
            if not self._gdb.mark_seen(item.session_id, item.message_index):
                raise GroupRejected("replayed group message")
            self._gdb.remove_waiting(item.envelope_key)
            self._store.mark_processed(item.envelope_key, "received", _now())
            if content.type == "meta" and content.meta is not None:
                if group.role_of(item.sender) == "admin":
                    self._gdb.set_meta(
                        item.group_id, content.meta.name, content.meta.description, _now()
                    )
                    events.append(
                        GroupChanged(item.group_id, "renamed", item.sender, [content.meta.name])
                    )
                else:
                    log.warning("ignoring a group rename from non-admin %s", item.sender)
            elif content.type == "action" and content.action is not None:
                events += self._apply_action(
                    content.action,
                    item.sender,
                    item.sender_device,
                    group_conversation(item.group_id),
                    content.sent_at,
                    content.id,
                )
            elif content.type == "text":
                incoming = item.sender != self.username
                message = Message(
                    id=content.id,
                    conversation=group_conversation(item.group_id),
                    sender=item.sender,
                    sender_device=item.sender_device,
                    direction="in" if incoming else "out",
                    body=content.body,
                    sent_at=content.sent_at,
                    received_at=_now(),
                    server_seq=item.server_seq,
                    state="received" if incoming else "sent",
                    attachment=content.attachment,
                )
                if self._store.insert_message(message):
                    if content.attachment is not None:
                        self._store.put_attachment(
                            item.sender, content.id, content.attachment.model_dump_json(), None
                        )
                    if self._record_extras(
                        message,
                        reply_to=content.reply_to,
                        expires_in=content.expires_in,
                        view_once=content.view_once,
                    ):
                        events.append(MessageReceived(self._with_extras([message])[0]))
                    else:
                        self._forget(message.sender, message.id)
        self.group_stats["received"] += 1
        return events

    def _accept_room_key(self, content: Plaintext, device: StoredDevice) -> str | None:
        """Store a shared or forwarded Megolm key (inside the caller's transaction).

        Returns the session id, to retry messages waiting for it.
        """
        shared = content.room_key
        if shared is None:
            raise GroupRejected("room key message without a key")
        owner = shared.owner
        if shared.exported:
            # Forwarded by a device of the session owner's own account.
            known = self._store.device(owner.username, owner.device_id)
            if (
                owner.username != device.username
                or known is None
                or (known.ed25519 != owner.ed25519)
            ):
                raise GroupRejected("a forwarded key from a device of another user")
            session = MegolmInbound.from_export(shared.key)
        else:
            if (owner.username, owner.device_id, owner.ed25519) != (
                device.username,
                device.device_id,
                device.ed25519,
            ):
                raise GroupRejected("a room key shared for another device's session")
            session = MegolmInbound.from_session_key(shared.key)
        if session.session_id != shared.session_id:
            raise GroupRejected("room key does not match its session id")
        existing = self._gdb.inbound(shared.session_id)
        if existing is not None:
            if (existing.owner, existing.owner_device, existing.group_id) != (
                owner.username,
                owner.device_id,
                shared.group_id,
            ):
                raise GroupRejected("a room key for a session someone else owns")
            if existing.first_index <= session.first_known_index:
                return shared.session_id
        known_group = self._gdb.group(shared.group_id)
        if shared.meta is not None and (known_group is None or not known_group.name):
            self._gdb.set_meta(shared.group_id, shared.meta.name, shared.meta.description, _now())
        self._gdb.save_inbound(
            Inbound(
                shared.session_id,
                shared.group_id,
                owner.username,
                owner.device_id,
                owner.ed25519,
                session.pickle(self._pickle_key),
                session.first_known_index,
            ),
            _now(),
        )
        return shared.session_id

    async def _retry_waiting(self, session_id: str) -> None:
        inbound = self._gdb.inbound(session_id)
        if inbound is None:
            return
        for item in self._gdb.waiting(session_id):
            if item.message_index < inbound.first_index:
                continue
            device = self._store.device(item.sender, item.sender_device)
            if device is None:
                continue
            try:
                await self._open_group_message(item, inbound, device)
                self.group_stats["recovered"] += 1
            except GroupRejected as exc:
                log.warning("dropping a waiting group message: %s", exc)
                with self._store.transaction():
                    self._gdb.remove_waiting(item.envelope_key)

    # -- key requests -----------------------------------------------------------------

    def _rerequest_keys(self) -> None:
        """Ask again for the keys of messages still waiting (throttled per session):
        a request can be lost, or reach the owner before it could answer."""
        seen: set[str] = set()
        for item in self._gdb.waiting():
            if item.session_id not in seen:
                seen.add(item.session_id)
                self._queue.put_nowait(("key_request_out", item))

    async def _request_key(self, item: Waiting) -> None:
        """Ask the sender's devices for the key of a waiting message (throttled)."""
        inbound = self._gdb.inbound(item.session_id)
        if inbound is not None and item.message_index >= inbound.first_index:
            await self._retry_waiting(item.session_id)
            return
        last = self._key_requests.get(item.session_id, 0.0)
        if time.monotonic() - last < KEY_REQUEST_INTERVAL_S:
            return
        self._key_requests[item.session_id] = time.monotonic()
        devices = [
            d
            for d in await self._devices.recipient_devices(item.sender, refresh=True)
            if (d.username, d.device_id) != (self.username, self.device_id)
        ]
        request = KeyRequestContent(
            group_id=item.group_id, session_id=item.session_id, index=item.message_index
        )
        try:
            await self._send_olm_control(item.group_id, devices, "key_request", key_request=request)
        except ProtocolError as exc:
            log.info("key request not sent: %s", exc)
            return
        self.group_stats["key_requests_sent"] += 1

    async def _answer_key_request(self, content: Plaintext, device: StoredDevice) -> None:
        """Forward our session's key from the requested index, if the requester may read it."""
        request = content.key_request
        if request is None:
            return
        inbound = self._gdb.inbound(request.session_id)
        if (
            inbound is None
            or (inbound.owner, inbound.owner_device) != (self.username, self.device_id)
            or inbound.group_id != request.group_id
        ):
            return  # not our session: its owner answers
        slot = (device.username, device.device_id, request.session_id)
        if time.monotonic() - self._key_answers.get(slot, 0.0) < 5.0:
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
        allowed = None if since is None else self._gdb.first_sent_since(request.session_id, since)
        if allowed is None or request.index < allowed:
            self.group_stats["key_requests_refused"] += 1
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
            owner=self._stamp(),
        )
        await self._send_olm_control(request.group_id, [device], "room_key", room_key=key)
        self.group_stats["key_requests_answered"] += 1


def _check_session(item: Waiting, inbound: Inbound) -> None:
    if inbound.group_id != item.group_id:
        raise GroupRejected("the message's session belongs to another group")
    if (inbound.owner, inbound.owner_device) != (item.sender, item.sender_device):
        raise GroupRejected("the message's session belongs to another sender")
