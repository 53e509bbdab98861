"""Device linking: the pairing code and the encrypted channel between two devices.

The NEW device makes an X25519 key pair and a random secret, asks the server
for a rendezvous channel, and shows a ``PairingCode`` (text or QR). The
EXISTING device reads it, makes its own ephemeral X25519 key and sends the
public half through the server in the clear. Both then derive the channel
keys with HKDF, salted with the code's secret: the server relays everything
but never saw the secret, so it cannot read or forge channel messages even if
it swaps the public keys. The SAS (emoji or numbers) lets the two users
confirm on both screens that they hold the same keys before anything secret
is sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bisik.crypto._encoding import b64decode, b64encode
from bisik.crypto._errors import CryptoError, LinkDecryptError, PairingCodeError

Role = Literal["new", "existing"]

CODE_PREFIX = "BISIK"
CODE_VERSION = 1
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_KEY_LEN = 32
# version, secret, new_key, expires_at, channel length; then channel, then the URL.
_FIXED_LEN = 1 + _KEY_LEN + _KEY_LEN + 8 + 1
_MAX_URL_BYTES = 255

_INFO_PREFIX = b"bisik/link/v1|"
_NEW_TO_EXISTING = b"new->existing"
_EXISTING_TO_NEW = b"existing->new"
_COUNTER_LEN = 8
_TAG_LEN = 16
_SAS_LEN = 6

# The Matrix SAS emoji table (spec: data-definitions/sas-emoji.json), index = 6-bit value.
SAS_EMOJI: tuple[tuple[str, str], ...] = (
    ("\U0001f436", "Dog"),
    ("\U0001f431", "Cat"),
    ("\U0001f981", "Lion"),
    ("\U0001f40e", "Horse"),
    ("\U0001f984", "Unicorn"),
    ("\U0001f437", "Pig"),
    ("\U0001f418", "Elephant"),
    ("\U0001f430", "Rabbit"),
    ("\U0001f43c", "Panda"),
    ("\U0001f413", "Rooster"),
    ("\U0001f427", "Penguin"),
    ("\U0001f422", "Turtle"),
    ("\U0001f41f", "Fish"),
    ("\U0001f419", "Octopus"),
    ("\U0001f98b", "Butterfly"),
    ("\U0001f337", "Flower"),
    ("\U0001f333", "Tree"),
    ("\U0001f335", "Cactus"),
    ("\U0001f344", "Mushroom"),
    ("\U0001f30f", "Globe"),
    ("\U0001f319", "Moon"),
    ("\u2601\ufe0f", "Cloud"),
    ("\U0001f525", "Fire"),
    ("\U0001f34c", "Banana"),
    ("\U0001f34e", "Apple"),
    ("\U0001f353", "Strawberry"),
    ("\U0001f33d", "Corn"),
    ("\U0001f355", "Pizza"),
    ("\U0001f382", "Cake"),
    ("\u2764\ufe0f", "Heart"),
    ("\U0001f600", "Smiley"),
    ("\U0001f916", "Robot"),
    ("\U0001f3a9", "Hat"),
    ("\U0001f453", "Glasses"),
    ("\U0001f527", "Spanner"),
    ("\U0001f385", "Santa"),
    ("\U0001f44d", "Thumbs Up"),
    ("\u2602\ufe0f", "Umbrella"),
    ("\u231b", "Hourglass"),
    ("\u23f0", "Clock"),
    ("\U0001f381", "Gift"),
    ("\U0001f4a1", "Light Bulb"),
    ("\U0001f4d5", "Book"),
    ("\u270f\ufe0f", "Pencil"),
    ("\U0001f4ce", "Paperclip"),
    ("\u2702\ufe0f", "Scissors"),
    ("\U0001f512", "Lock"),
    ("\U0001f511", "Key"),
    ("\U0001f528", "Hammer"),
    ("\u260e\ufe0f", "Telephone"),
    ("\U0001f3c1", "Flag"),
    ("\U0001f682", "Train"),
    ("\U0001f6b2", "Bicycle"),
    ("\u2708\ufe0f", "Aeroplane"),
    ("\U0001f680", "Rocket"),
    ("\U0001f3c6", "Trophy"),
    ("\u26bd", "Ball"),
    ("\U0001f3b8", "Guitar"),
    ("\U0001f3ba", "Trumpet"),
    ("\U0001f514", "Bell"),
    ("\u2693", "Anchor"),
    ("\U0001f3a7", "Headphones"),
    ("\U0001f4c1", "Folder"),
    ("\U0001f4cc", "Pin"),
)


@dataclass(frozen=True)
class PairingCode:
    """What the new device shows and the existing device reads (as text or QR).

    Attributes:
        server_url: the homeserver both devices talk to (``http://`` or ``https://``).
        channel: the server-assigned rendezvous id, ``[A-Za-z0-9_-]{16,64}``.
        new_key: the new device's 32-byte X25519 public key.
        secret: 32 random bytes that salt the channel keys; never printed.
        expires_at: unix time in milliseconds after which the code is refused.

    Raises:
        PairingCodeError: on construction, if any field is out of range.
    """

    server_url: str
    channel: str
    new_key: bytes
    secret: bytes = field(repr=False)
    expires_at: int

    def __post_init__(self) -> None:
        if not self.server_url.startswith(("https://", "http://")):
            raise PairingCodeError("pairing code server URL must start with https:// or http://")
        if len(self.server_url.encode()) > _MAX_URL_BYTES:
            raise PairingCodeError(f"pairing code server URL is over {_MAX_URL_BYTES} bytes")
        if not _CHANNEL_RE.fullmatch(self.channel):
            raise PairingCodeError("pairing code channel must be 16-64 of [A-Za-z0-9_-]")
        if len(self.new_key) != _KEY_LEN:
            raise PairingCodeError(f"pairing code key must be {_KEY_LEN} bytes")
        if len(self.secret) != _KEY_LEN:
            raise PairingCodeError(f"pairing code secret must be {_KEY_LEN} bytes")
        if not 0 <= self.expires_at < 2**63:
            raise PairingCodeError("pairing code expiry is out of range")

    @classmethod
    def create(
        cls, *, server_url: str, channel: str, new_key: bytes, expires_at: int
    ) -> PairingCode:
        """A code with a fresh random secret, for the new device to show."""
        return cls(server_url, channel, new_key, os.urandom(_KEY_LEN), expires_at)

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at

    def encode(self) -> str:
        """``BISIK1-`` then unpadded base64url of a compact binary record.

        About 170 characters for a 22-character channel and a short server URL.
        """
        channel = self.channel.encode()
        raw = b"".join(
            (
                bytes([CODE_VERSION]),
                self.secret,
                self.new_key,
                self.expires_at.to_bytes(8, "big"),
                bytes([len(channel)]),
                channel,
                self.server_url.encode(),
            )
        )
        body = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        return f"{CODE_PREFIX}{CODE_VERSION}-{body}"

    @classmethod
    def decode(cls, text: str) -> PairingCode:
        """Parse what ``encode`` produced (surrounding whitespace is ignored).

        Raises:
            PairingCodeError: wrong prefix, unknown version, bad base64, truncated
                or otherwise malformed code.
        """
        text = text.strip()
        prefix, sep, body = text.partition("-")
        if not sep or not prefix.upper().startswith(CODE_PREFIX):
            raise PairingCodeError(f"not a Bisik pairing code (expected {CODE_PREFIX}1-...)")
        version = prefix[len(CODE_PREFIX) :]
        if version != str(CODE_VERSION):
            raise PairingCodeError(
                f"unsupported pairing code version {version!r}; update Bisik on this device"
            )
        if not body or not re.fullmatch(r"[A-Za-z0-9_-]+", body):
            raise PairingCodeError("pairing code contains characters outside base64url")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise PairingCodeError("pairing code is not valid base64url") from None
        if len(raw) < _FIXED_LEN or raw[0] != CODE_VERSION:
            raise PairingCodeError("pairing code is truncated or corrupted")
        pos = 1
        secret = raw[pos : pos + _KEY_LEN]
        pos += _KEY_LEN
        new_key = raw[pos : pos + _KEY_LEN]
        pos += _KEY_LEN
        expires_at = int.from_bytes(raw[pos : pos + 8], "big")
        pos += 8
        channel_len = raw[pos]
        pos += 1
        if len(raw) < pos + channel_len:
            raise PairingCodeError("pairing code is truncated or corrupted")
        try:
            channel = raw[pos : pos + channel_len].decode("ascii")
            server_url = raw[pos + channel_len :].decode("utf-8")
        except UnicodeDecodeError:
            raise PairingCodeError("pairing code is truncated or corrupted") from None
        return cls(server_url, channel, new_key, secret, expires_at)

    def __repr__(self) -> str:
        return (
            f"PairingCode(server_url={self.server_url!r}, channel={self.channel!r}, "
            f"new_key={b64encode(self.new_key)}, expires_at={self.expires_at})"
        )


def new_device_keypair() -> tuple[X25519PrivateKey, bytes]:
    """The new device's ephemeral X25519 key pair, and its 32-byte public key."""
    private = X25519PrivateKey.generate()
    return private, _public_bytes(private)


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


class LinkChannel:
    """One side of the encrypted channel between a new and an existing device.

    Build it with ``for_new_device`` or ``for_existing_device``. Each direction
    has its own AES-256-GCM key and a message counter that starts at 0; the
    counter is the nonce, so each side must keep one ``LinkChannel`` for the
    whole exchange and never rebuild it from the same keys.
    """

    __slots__ = (
        "_channel",
        "_recv_count",
        "_recv_key",
        "_role",
        "_sas",
        "_send_count",
        "_send_key",
    )

    def __init__(
        self, role: Role, channel: str, send_key: bytes, recv_key: bytes, sas: bytes
    ) -> None:
        """Internal: use the ``for_new_device`` / ``for_existing_device`` classmethods."""
        self._role: Role = role
        self._channel = channel
        self._send_key = AESGCM(send_key)
        self._recv_key = AESGCM(recv_key)
        self._sas = sas
        self._send_count = 0
        self._recv_count = 0

    @classmethod
    def for_new_device(
        cls, code: PairingCode, new_private: X25519PrivateKey, existing_public: bytes
    ) -> LinkChannel:
        """The new device's side, once the existing device's public key has arrived.

        Args:
            code: the pairing code this device showed.
            new_private: the private half of ``code.new_key``.
            existing_public: the 32 bytes the existing device sent back.

        Raises:
            CryptoError: if ``new_private`` does not match the code or the peer key is bad.
        """
        if _public_bytes(new_private) != code.new_key:
            raise CryptoError("this private key is not the one in the pairing code")
        shared = _exchange(new_private, existing_public)
        return cls._derive("new", code, shared, existing_public)

    @classmethod
    def for_existing_device(cls, code: PairingCode) -> tuple[LinkChannel, bytes]:
        """The existing device's side, from the code it read.

        Returns:
            the channel, and this device's 32-byte ephemeral public key to send to
            the new device through the server (in the clear).
        """
        private = X25519PrivateKey.generate()
        shared = _exchange(private, code.new_key)
        public = _public_bytes(private)
        return cls._derive("existing", code, shared, public), public

    @classmethod
    def _derive(
        cls, role: Role, code: PairingCode, shared: bytes, existing_public: bytes
    ) -> LinkChannel:
        info = _INFO_PREFIX + code.channel.encode() + code.new_key + existing_public
        okm = HKDF(
            algorithm=hashes.SHA256(), length=2 * _KEY_LEN + _SAS_LEN, salt=code.secret, info=info
        ).derive(shared)
        new_to_existing = okm[:_KEY_LEN]
        existing_to_new = okm[_KEY_LEN : 2 * _KEY_LEN]
        sas = okm[2 * _KEY_LEN :]
        if role == "new":
            return cls(role, code.channel, new_to_existing, existing_to_new, sas)
        return cls(role, code.channel, existing_to_new, new_to_existing, sas)

    @property
    def role(self) -> Role:
        return self._role

    @property
    def channel(self) -> str:
        return self._channel

    def _direction(self, sending: bool) -> bytes:
        from_new = (self._role == "new") == sending
        return _NEW_TO_EXISTING if from_new else _EXISTING_TO_NEW

    def _aad(self, sending: bool, counter: bytes) -> bytes:
        return b"|".join((_INFO_PREFIX + self._channel.encode(), self._direction(sending), counter))

    def seal(self, obj: dict[str, Any]) -> str:
        """Encrypt a JSON object for the peer; the result is unpadded base64."""
        if self._send_count >= 2**64:
            raise CryptoError("link channel message counter exhausted")
        counter = self._send_count.to_bytes(_COUNTER_LEN, "big")
        plaintext = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = self._send_key.encrypt(
            bytes(4) + counter, plaintext, self._aad(sending=True, counter=counter)
        )
        self._send_count += 1
        return b64encode(counter + sealed)

    def open(self, text: str) -> dict[str, Any]:
        """Decrypt the peer's next message.

        Messages must arrive in the order they were sealed; a failed message
        does not advance the counter.

        Raises:
            LinkDecryptError: malformed, replayed, out of order, sealed with other
                keys (wrong secret, swapped public key) or tampered with.
        """
        expected = self._recv_count
        try:
            raw = b64decode(text)
        except CryptoError:
            raise LinkDecryptError("not base64", expected=expected) from None
        if len(raw) < _COUNTER_LEN + _TAG_LEN:
            raise LinkDecryptError("message too short", expected=expected)
        counter = raw[:_COUNTER_LEN]
        got = int.from_bytes(counter, "big")
        if got < expected:
            raise LinkDecryptError("replayed message", expected=expected, got=got)
        if got > expected:
            raise LinkDecryptError("message out of order", expected=expected, got=got)
        try:
            plaintext = self._recv_key.decrypt(
                bytes(4) + counter, raw[_COUNTER_LEN:], self._aad(sending=False, counter=counter)
            )
        except InvalidTag:
            raise LinkDecryptError(
                "authentication failed (wrong keys or tampered)", expected=expected, got=got
            ) from None
        try:
            obj = json.loads(plaintext)
        except ValueError:
            raise LinkDecryptError("payload is not JSON", expected=expected, got=got) from None
        if not isinstance(obj, dict):
            raise LinkDecryptError("payload is not a JSON object", expected=expected, got=got)
        self._recv_count += 1
        return obj

    def sas_decimals(self) -> tuple[int, int, int]:
        """Three numbers in 1000..9191 (Matrix SAS decimal): 13 bits each of 5 SAS bytes."""
        bits = int.from_bytes(self._sas[:5], "big") >> 1
        return ((bits >> 26) + 1000, ((bits >> 13) & 0x1FFF) + 1000, (bits & 0x1FFF) + 1000)

    def _sas_indices(self) -> list[int]:
        bits = int.from_bytes(self._sas[:6], "big") >> 6
        return [(bits >> (6 * (6 - i))) & 0x3F for i in range(7)]

    def sas_emoji(self) -> list[str]:
        """Seven emoji from the Matrix SAS table: 6 bits each of 6 SAS bytes."""
        return [SAS_EMOJI[i][0] for i in self._sas_indices()]

    def sas_emoji_names(self) -> list[str]:
        """The English names of ``sas_emoji()``, in the same order."""
        return [SAS_EMOJI[i][1] for i in self._sas_indices()]

    def __repr__(self) -> str:
        return (
            f"LinkChannel(role={self._role!r}, channel={self._channel!r}, "
            f"sent={self._send_count}, received={self._recv_count})"
        )


def _exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    if len(peer_public) != _KEY_LEN:
        raise CryptoError(f"peer X25519 key must be {_KEY_LEN} bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        # OpenSSL refuses low-order points (an all-zero shared secret).
        raise CryptoError(f"unusable peer X25519 key: {exc}") from None
