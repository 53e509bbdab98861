"""The client's synchronous core: open a run of envelopes, and encrypt a
payload for a list of devices. No asyncio, no transport: it is fed what the
server sent (already parsed, its sender's device verified) and returns what
happened, like h11's ``Connection`` or matrix-sdk-crypto's ``OlmMachine``;
the inbox and outbox move data in and out.

Everything it writes goes through one ``LocalStore`` transaction per run,
together with the Olm sessions it advanced (``OlmMachine.saving_once``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import pydantic

from bisik.client._clock import Clock
from bisik.client._errors import ClientError
from bisik.client._group_receive import GroupReceiver, GroupRejected
from bisik.client._models import (
    DecryptionFailed,
    DeviceStamp,
    Event,
    Message,
    Plaintext,
    direct_conversation,
    in_time_window,
    padded,
)
from bisik.client._signals import Signals
from bisik.client._store import NOT_CONTENT_ERRORS, LocalStore, StoredDevice
from bisik.client._timeline import Timeline
from bisik.crypto import CryptoError, OlmDecryptError, OlmMachine

log = logging.getLogger("bisik.client")


class InvalidContent(ClientError):
    """Decrypted content that is not a valid message for this device."""


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """An envelope from the server, its fields checked for type."""

    env: dict[str, Any]
    key: str  # identifies it locally: id and ciphertext (``is_processed``)
    envelope_id: int
    sender: str
    sender_device: str
    msg_type: int
    body: str
    ephemeral: bool

    @property
    def megolm(self) -> bool:
        return self.env.get("kind") == "megolm" and not self.ephemeral


def parse_envelope(env: Any) -> Parsed | None:
    """``None`` for an envelope whose fields are missing or of the wrong type."""
    try:
        envelope_id = int(env["id"])
        sender = str(env["sender"])
        sender_device = str(env["sender_device"])
        msg_type = int(env["type"])
        body = str(env["body"])
    except (KeyError, TypeError, ValueError):
        return None
    # Keyed by id *and* ciphertext: an envelope seen again (our ack was lost)
    # is skipped, since its Olm keys are spent, but a server that reuses ids
    # cannot make us drop a new one.
    key = hashlib.sha256(f"{envelope_id}:{body}".encode()).hexdigest()
    return Parsed(
        env, key, envelope_id, sender, sender_device, msg_type, body, bool(env.get("ephemeral"))
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Inbound:
    """A parsed envelope whose sender device is verified, ready to open."""

    parsed: Parsed
    device: StoredDevice


@dataclasses.dataclass(slots=True)
class Opened:
    """What opening one envelope did, to act on once the transaction is committed.

    ``outcome``: ``received``, ``control``, ``duplicate`` or ``rejected``.
    """

    outcome: str
    message: Message | None = None
    room_key: str | None = None  # a session id: retry messages waiting for it
    key_request: tuple[Plaintext, StoredDevice] | None = None  # to answer
    events: list[Event] = dataclasses.field(default_factory=list)
    failed: DecryptionFailed | None = None


class Opener:
    """Decrypts, verifies and stores runs of envelopes."""

    def __init__(
        self,
        db: LocalStore,
        machine: OlmMachine,
        me: DeviceStamp,
        timeline: Timeline,
        groups: GroupReceiver,
        signals: Signals,
        clock: Clock,
    ) -> None:
        self._db = db
        self._machine = machine
        self._me = me
        self._timeline = timeline
        self._groups = groups
        self._signals = signals
        self._clock = clock

    def open_run(self, run: list[Inbound], seen: set[str]) -> list[Opened]:
        """Open envelopes in one transaction; stops before a group message that
        needs the network (fewer results than items). ``seen``: envelope keys
        opened earlier in the same batch (a page can hold one twice).

        If storing any of them fails (a bug, or content no check foresaw), the
        run is opened again one envelope at a time, and the one that fails is
        refused alone: nothing a peer sends stops the pipeline. Only a database
        that cannot work right now (``TRANSIENT_ERRORS``) stops it: the
        envelopes stay on the server and come again.
        """
        before = set(seen)
        try:
            return self._open_together(run, seen)
        except NOT_CONTENT_ERRORS:
            raise
        except Exception:
            log.exception("a run of %d envelopes failed to open; one at a time", len(run))
        seen.clear()
        seen.update(before)
        opened: list[Opened] = []
        for item in run:
            try:
                one = self._open_together([item], seen)
            except NOT_CONTENT_ERRORS:
                raise
            except Exception as exc:
                seen.add(item.parsed.key)
                opened.append(self.refuse(item.parsed, exc))
                continue
            if not one:
                break  # a group message that needs the network
            opened += one
        return opened

    def refuse(self, parsed: Parsed, exc: Exception) -> Opened:
        """An envelope whose content could not be stored: recorded and skipped."""
        if parsed.ephemeral:
            return Opened("control")
        reason = f"the message could not be shown ({type(exc).__name__})"
        return Opened("rejected", failed=self.reject(parsed, reason))

    def _open_together(self, run: list[Inbound], seen: set[str]) -> list[Opened]:
        opened: list[Opened] = []
        try:
            with self._db.transaction(), self._machine.saving_once():
                for item in run:
                    parsed = item.parsed
                    if not parsed.ephemeral and parsed.key in seen:
                        opened.append(Opened("duplicate"))
                        continue
                    seen.add(parsed.key)
                    if not parsed.megolm:
                        opened.append(self._open_olm(item))
                        continue
                    group = self._open_group(item)
                    if group is None:
                        break  # the rest after it, in a later run
                    opened.append(group)
        except BaseException:
            self._machine.forget_cached_sessions()
            raise
        shown = iter(self._timeline.with_extras([o.message for o in opened if o.message]))
        for o in opened:
            if o.message is not None:
                o.message = next(shown)
        return opened

    def reject(self, parsed: Parsed, reason: str) -> DecryptionFailed:
        """Record an envelope as dropped (its own transaction, or the caller's)."""
        log.warning(
            "dropping envelope %d from %s/%s",
            parsed.envelope_id,
            parsed.sender,
            parsed.sender_device,
        )
        with self._db.transaction():
            self._db.mark_processed(parsed.key, "rejected", self._clock())
        return DecryptionFailed(parsed.sender, parsed.sender_device, parsed.envelope_id, reason)

    def _open_group(self, item: Inbound) -> Opened | None:
        parsed = item.parsed
        try:
            with self._db.transaction():
                events = self._groups.open_now(parsed.env, parsed.key, item.device)
        except GroupRejected as exc:
            return Opened("rejected", failed=self.reject(parsed, str(exc)))
        return None if events is None else Opened("received", events=events)

    def _open_olm(self, item: Inbound) -> Opened:
        """Decrypt, verify and store one Olm envelope (a control message's own
        writes are undone if it fails)."""
        parsed = item.parsed
        try:
            plaintext = self._machine.decrypt(item.device.curve25519, parsed.msg_type, parsed.body)
            content = self.verify_content(plaintext, item.device)
            if content.type == "text" and not parsed.ephemeral:
                # Nothing written before it can be refused; past it, nothing refuses.
                return self._store_text(item, content)
            with self._db.transaction():
                return self._apply_control(item, content)
        except (OlmDecryptError, CryptoError, InvalidContent, GroupRejected) as exc:
            self._machine.forget_cached_sessions()
            if parsed.ephemeral:
                return Opened("control")
            return Opened("rejected", failed=self.reject(parsed, str(exc)))

    def _apply_control(self, item: Inbound, content: Plaintext) -> Opened:
        """A control message: applied, never shown as a message."""
        parsed = item.parsed
        who = (parsed.sender, parsed.sender_device)
        if parsed.ephemeral:
            return Opened("control", events=self._signals.apply(content, *who))
        self._db.mark_processed(parsed.key, "control", self._clock())
        if content.type == "room_key":
            return Opened("control", room_key=self._groups.accept_room_key(content, item.device))
        if content.type == "key_request":
            return Opened("control", key_request=(content, item.device))
        if content.type == "action" and content.action is not None:
            mine = content.sender.username == self._me.username
            events = self._timeline.apply_action(
                content.action,
                *who,
                direct_conversation(content.to if mine else parsed.sender),
                content.sent_at,
                content.id,
            )
            return Opened("control", events=events)
        return Opened("control", events=self._signals.apply(content, *who))

    def _store_text(self, item: Inbound, content: Plaintext) -> Opened:
        parsed = item.parsed
        mine = content.sender.username == self._me.username
        message = self._timeline.receive(
            content,
            conversation=direct_conversation(content.to if mine else parsed.sender),
            sender=parsed.sender,
            sender_device=parsed.sender_device,
            server_seq=int(parsed.env.get("seq", 0)),
        )
        self._db.mark_processed(parsed.key, "received", self._clock())
        return Opened("received", message=message)

    def verify_content(self, plaintext: bytes, device: StoredDevice) -> Plaintext:
        try:
            content = Plaintext.model_validate_json(plaintext)
        except pydantic.ValidationError:
            raise InvalidContent("decrypted content is not a valid message") from None
        if (
            content.sender.username != device.username
            or content.sender.device_id != device.device_id
            or content.sender.ed25519 != device.ed25519
        ):
            raise InvalidContent("content names another sender than the envelope")
        if (
            content.recipient.username != self._me.username
            or content.recipient.device_id != self._me.device_id
            or content.recipient.ed25519 != self._me.ed25519
        ):
            raise InvalidContent("content was encrypted for another device")
        if not in_time_window(content.sent_at, self._clock()):
            raise InvalidContent("the message's time is impossible (a clock far off, or forged)")
        return content


class Encryptor:
    """Picks the devices a payload goes to and encrypts it for each."""

    def __init__(self, db: LocalStore, machine: OlmMachine, me: DeviceStamp) -> None:
        self._db = db
        self._machine = machine
        self._me = me

    def targets_among(
        self, peer: str, scope: str, lists: dict[str, list[StoredDevice]]
    ) -> list[StoredDevice]:
        """Every device in ``lists`` but this one.

        Raises:
            ClientError: ``peer`` should be among them and has no device.
        """
        me = (self._me.username, self._me.device_id)
        targets = list(
            {
                (d.username, d.device_id): d
                for devices in lists.values()
                for d in devices
                if (d.username, d.device_id) != me
            }.values()
        )
        has_peer = any(d.username == peer for d in targets)
        if scope != "own" and peer != self._me.username and not has_peer:
            raise ClientError(f"{peer} has no verified device to send to")
        return targets

    def has_sessions(self, devices: list[StoredDevice]) -> bool:
        return all(self._machine.has_session(d.curve25519) for d in devices)

    def content(
        self, message_id: str, payload: dict[str, Any], devices: list[StoredDevice]
    ) -> list[dict[str, Any]]:
        """An outbox payload encrypted for ``devices`` (one envelope each)."""
        if not devices:
            return []
        return self.envelopes(
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

    def envelopes(
        self, devices: list[StoredDevice], *, to: str | None = None, **content: Any
    ) -> list[dict[str, Any]]:
        """One Olm envelope per device; each content names its sender and recipient
        device (``to`` defaults to the recipient's username)."""
        envelopes: list[dict[str, Any]] = []
        with self._db.transaction():
            for device in devices:
                plaintext = Plaintext(
                    sender=self._me,
                    recipient=DeviceStamp(
                        username=device.username, device_id=device.device_id, ed25519=device.ed25519
                    ),
                    to=device.username if to is None else to,
                    **content,
                )
                msg_type, body = self._machine.encrypt(device.curve25519, padded(plaintext))
                envelopes.append(
                    {
                        "username": device.username,
                        "device_id": device.device_id,
                        "type": msg_type,
                        "body": body,
                    }
                )
        return envelopes


def target_users(peer: str, scope: str, me: str) -> list[str]:
    """Whose devices a payload for ``peer`` goes to.

    ``scope``: ``all`` (the default: the peer's devices and our other devices),
    ``peer`` (only theirs: receipts, typing) or ``own`` (only our other
    devices: read sync).
    """
    users = [peer] if scope in ("all", "peer") else []
    if (scope in ("all", "own") and peer != me) or scope == "own":
        users.append(me)
    return users
