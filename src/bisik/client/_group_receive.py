"""Opening group messages and accepting group keys: synchronous, no I/O but the
local database (part of the client's sync core).

A Megolm message is opened only with a session whose key came over Olm from
the session's owner (or, forwarded, from another device of the owner's own
account), only once per ``(session, index)``, and only if its content names
the same sender and group as its session.
"""

from __future__ import annotations

import logging

import pydantic

from bisik.client._clock import Clock
from bisik.client._errors import ClientError
from bisik.client._group_store import GroupStore, Inbound, LocalGroup, Waiting
from bisik.client._models import (
    DeviceStamp,
    Event,
    GroupChanged,
    GroupPlaintext,
    MessageReceived,
    Plaintext,
    group_conversation,
    in_time_window,
)
from bisik.client._store import LocalStore, StoredDevice
from bisik.client._timeline import Timeline
from bisik.crypto import CryptoError, MegolmDecryptError, MegolmInbound, parse_megolm

log = logging.getLogger("bisik.client.groups")


class GroupRejected(ClientError):
    """A group message or key that fails a check; it is dropped and reported."""


class GroupReceiver:
    def __init__(
        self,
        db: LocalStore,
        groups: GroupStore,
        timeline: Timeline,
        me: DeviceStamp,
        pickle_key: bytes,
        clock: Clock,
    ) -> None:
        self._db = db
        self._groups = groups
        self._timeline = timeline
        self._me = me
        self._pickle_key = pickle_key
        self._clock = clock

    def waiting_item(self, env: dict[str, object], key: str, device: StoredDevice) -> Waiting:
        """The envelope as a group message (raises ``GroupRejected`` if it is not one)."""
        group_id = env.get("group_id")
        if not isinstance(group_id, str):
            raise GroupRejected("group message without a group")
        body = str(env.get("body", ""))
        try:
            header = parse_megolm(body)
        except MegolmDecryptError as exc:
            raise GroupRejected(str(exc)) from None
        seq = env.get("seq", 0)
        return Waiting(
            key,
            group_id,
            device.username,
            device.device_id,
            header.session_id,
            header.message_index,
            body,
            seq if isinstance(seq, int) else 0,
        )

    def readable(self, item: Waiting) -> Inbound | None:
        """The session that opens ``item``, if we hold its key from that index."""
        inbound = self._groups.inbound(item.session_id)
        if inbound is None or item.message_index < inbound.first_index:
            return None
        return inbound

    def open_now(
        self, env: dict[str, object], key: str, device: StoredDevice
    ) -> list[Event] | None:
        """Open a group message inside the caller's transaction when nothing is
        missing (its key, the sender in our member list); ``None`` when it needs
        the network (the groups service). Returns the events to emit once
        committed; raises ``GroupRejected``."""
        item = self.waiting_item(env, key, device)
        inbound = self.readable(item)
        if inbound is None:
            return None
        group = self._groups.group(item.group_id)
        if group is None or group.member(item.sender) is None:
            return None
        check_session(item, inbound)
        return self.store(item, inbound, group)

    def store(self, item: Waiting, inbound: Inbound, group: LocalGroup) -> list[Event]:
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
        if not in_time_window(content.sent_at, self._clock()):
            raise GroupRejected("the message's time is impossible (a clock far off, or forged)")
        conversation = group_conversation(item.group_id)
        now = self._clock()
        events: list[Event] = []
        with self._db.transaction():
            if not self._groups.mark_seen(item.session_id, item.message_index):
                raise GroupRejected("replayed group message")
            self._groups.remove_waiting(item.envelope_key)
            self._db.mark_processed(item.envelope_key, "received", now)
            if content.type == "meta" and content.meta is not None:
                if group.role_of(item.sender) == "admin":
                    self._groups.set_meta(
                        item.group_id, content.meta.name, content.meta.description, now
                    )
                    events.append(
                        GroupChanged(item.group_id, "renamed", item.sender, [content.meta.name])
                    )
                else:
                    log.warning("ignoring a group rename from non-admin %s", item.sender)
            elif content.type == "action" and content.action is not None:
                events += self._timeline.apply_action(
                    content.action,
                    item.sender,
                    item.sender_device,
                    conversation,
                    content.sent_at,
                    content.id,
                )
            elif content.type == "text":
                message = self._timeline.receive(
                    content,
                    conversation=conversation,
                    sender=item.sender,
                    sender_device=item.sender_device,
                    server_seq=item.server_seq,
                )
                if message is not None:
                    events.append(MessageReceived(self._timeline.with_extras([message])[0]))
        return events

    def accept_room_key(self, content: Plaintext, device: StoredDevice) -> str:
        """Store a shared or forwarded Megolm key (inside the caller's transaction).

        Returns the session id, to retry messages waiting for it.
        """
        shared = content.room_key
        if shared is None:
            raise GroupRejected("room key message without a key")
        owner = shared.owner
        if shared.exported:
            # Forwarded by a device of the session owner's own account.
            known = self._db.device(owner.username, owner.device_id)
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
        existing = self._groups.inbound(shared.session_id)
        if existing is not None:
            if (existing.owner, existing.owner_device, existing.group_id) != (
                owner.username,
                owner.device_id,
                shared.group_id,
            ):
                raise GroupRejected("a room key for a session someone else owns")
            if existing.first_index <= session.first_known_index:
                return shared.session_id
        now = self._clock()
        known_group = self._groups.group(shared.group_id)
        if shared.meta is not None and (known_group is None or not known_group.name):
            self._groups.set_meta(shared.group_id, shared.meta.name, shared.meta.description, now)
        self._groups.save_inbound(
            Inbound(
                shared.session_id,
                shared.group_id,
                owner.username,
                owner.device_id,
                owner.ed25519,
                session.pickle(self._pickle_key),
                session.first_known_index,
            ),
            now,
        )
        return shared.session_id


def check_session(item: Waiting, inbound: Inbound) -> None:
    if inbound.group_id != item.group_id:
        raise GroupRejected("the message's session belongs to another group")
    if (inbound.owner, inbound.owner_device) != (item.sender, item.sender_device):
        raise GroupRejected("the message's session belongs to another sender")
