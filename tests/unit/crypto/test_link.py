from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bisik.crypto import (
    SAS_EMOJI,
    CryptoError,
    LinkChannel,
    LinkDecryptError,
    PairingCode,
    PairingCodeError,
    b64decode,
    b64encode,
    new_device_keypair,
)

SERVER = "https://chat.example.org"
CHANNEL = "Zq3_x-9aB7cD2eF4gH6iJ8"  # 22 chars, like secrets.token_urlsafe(16)


def make_code(
    *,
    server_url: str = SERVER,
    channel: str = CHANNEL,
    new_key: bytes | None = None,
    expires_at: int = 1_900_000_000_000,
) -> tuple[PairingCode, X25519PrivateKey]:
    private, public = new_device_keypair()
    code = PairingCode.create(
        server_url=server_url,
        channel=channel,
        new_key=public if new_key is None else new_key,
        expires_at=expires_at,
    )
    return code, private


def linked() -> tuple[LinkChannel, LinkChannel]:
    """(new device's side, existing device's side), as over a real rendezvous."""
    code, private = make_code()
    # The existing device only ever sees the text code.
    existing, existing_public = LinkChannel.for_existing_device(PairingCode.decode(code.encode()))
    new = LinkChannel.for_new_device(code, private, existing_public)
    return new, existing


def flip(text: str, index: int) -> str:
    raw = bytearray(b64decode(text))
    raw[index] ^= 0x01
    return b64encode(bytes(raw))


# -- pairing code ---------------------------------------------------------------


def test_code_round_trip_and_size() -> None:
    code, _ = make_code()
    text = code.encode()
    assert text.startswith("BISIK1-")
    assert len(text) < 200
    assert set(text[7:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    again = PairingCode.decode(f"  {text}\n")
    assert again == code
    assert again.secret == code.secret


def test_code_secret_is_random() -> None:
    a, _ = make_code()
    b, _ = make_code()
    assert a.secret != b.secret
    assert len(a.secret) == 32


def test_code_expiry() -> None:
    code, _ = make_code(expires_at=1000)
    assert not code.is_expired(999)
    assert code.is_expired(1000)


def test_code_repr_hides_secret() -> None:
    code, _ = make_code()
    text = repr(code)
    assert "secret" not in text
    assert code.secret.hex() not in text
    assert b64encode(code.secret) not in text
    assert CHANNEL in text
    assert b64encode(code.new_key) in text


def _body(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a Bisik pairing code"),
        ("hello world", "not a Bisik pairing code"),
        ("MATRIX1-abcdef", "not a Bisik pairing code"),
        ("BISIK2-abcdef", "unsupported pairing code version '2'"),
        ("BISIK-abcdef", "unsupported pairing code version ''"),
        ("BISIK1-", "outside base64url"),
        ("BISIK1-abc def", "outside base64url"),
        ("BISIK1-ab+/cd", "outside base64url"),
        ("BISIK1-a", "not valid base64url"),
        ("BISIK1-" + _body(b"\x01" + bytes(40)), "truncated"),
        ("BISIK1-" + _body(b"\x02" + bytes(100)), "truncated or corrupted"),
    ],
)
def test_malformed_codes_rejected(text: str, message: str) -> None:
    with pytest.raises(PairingCodeError, match=message):
        PairingCode.decode(text)


def test_truncated_real_codes_rejected() -> None:
    code, _ = make_code()
    raw = base64.urlsafe_b64decode(code.encode()[7:] + "==")
    channel_end = 1 + 32 + 32 + 8 + 1 + len(CHANNEL)
    # Cut inside the channel: its length byte no longer fits.
    with pytest.raises(PairingCodeError, match="truncated"):
        PairingCode.decode("BISIK1-" + _body(raw[: channel_end - 3]))
    # Cut off the whole URL: still parses, but the URL is then invalid.
    with pytest.raises(PairingCodeError, match="server URL"):
        PairingCode.decode("BISIK1-" + _body(raw[:channel_end]))
    # A corrupted channel length byte.
    bad = bytearray(raw)
    bad[channel_end - len(CHANNEL) - 1] = 5
    with pytest.raises(PairingCodeError):
        PairingCode.decode("BISIK1-" + _body(bytes(bad)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"server_url": "ftp://x"}, "server URL"),
        ({"server_url": "https://" + "a" * 300}, "server URL"),
        ({"channel": "short"}, "channel"),
        ({"channel": "a" * 65}, "channel"),
        ({"channel": "has space in it!!"}, "channel"),
        ({"new_key": b"\x01" * 31}, "key must be 32"),
        ({"expires_at": -1}, "expiry"),
    ],
)
def test_invalid_fields_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PairingCodeError, match=message):
        make_code(**changes)


def test_bad_secret_length_rejected() -> None:
    _, public = new_device_keypair()
    with pytest.raises(PairingCodeError, match="secret"):
        PairingCode(SERVER, CHANNEL, public, b"short", 0)


# -- channel --------------------------------------------------------------------


def test_round_trip_both_directions() -> None:
    new, existing = linked()
    for i in range(3):
        assert existing.open(new.seal({"n": i, "hello": "wörld"})) == {"n": i, "hello": "wörld"}
    assert new.open(existing.seal({"identity": "key"})) == {"identity": "key"}
    assert new.open(existing.seal({})) == {}


def test_both_sides_get_the_same_sas() -> None:
    new, existing = linked()
    assert new.sas_decimals() == existing.sas_decimals()
    assert new.sas_emoji() == existing.sas_emoji()
    assert new.sas_emoji_names() == existing.sas_emoji_names()
    assert all(1000 <= n <= 9191 for n in new.sas_decimals())
    assert len(new.sas_emoji()) == 7
    table = dict(SAS_EMOJI)
    assert [table[e] for e in new.sas_emoji()] == new.sas_emoji_names()


def test_different_links_get_different_sas() -> None:
    a, _ = linked()
    b, _ = linked()
    assert (a.sas_decimals(), a.sas_emoji()) != (b.sas_decimals(), b.sas_emoji())


def _with_sas(sas: bytes) -> LinkChannel:
    return LinkChannel("new", CHANNEL, bytes(32), bytes(32), sas)


def test_sas_bit_splitting_matches_matrix() -> None:
    assert _with_sas(bytes(6)).sas_decimals() == (1000, 1000, 1000)
    assert _with_sas(b"\xff" * 6).sas_decimals() == (9191, 9191, 9191)
    assert _with_sas(bytes(6)).sas_emoji_names() == ["Dog"] * 7
    assert _with_sas(b"\xff" * 6).sas_emoji_names() == ["Pin"] * 7
    sas = bytes.fromhex("3a9c51e7b406")
    bits = "".join(f"{b:08b}" for b in sas)
    assert _with_sas(sas).sas_decimals() == tuple(
        int(bits[13 * i : 13 * i + 13], 2) + 1000 for i in range(3)
    )
    assert _with_sas(sas).sas_emoji() == [
        SAS_EMOJI[int(bits[6 * i : 6 * i + 6], 2)][0] for i in range(7)
    ]


def test_sas_emoji_table() -> None:
    assert len(SAS_EMOJI) == 64
    assert len({e for e, _ in SAS_EMOJI}) == 64
    assert len({n for _, n in SAS_EMOJI}) == 64
    assert SAS_EMOJI[0] == ("\U0001f436", "Dog")
    assert SAS_EMOJI[29] == ("\u2764\ufe0f", "Heart")
    assert SAS_EMOJI[63] == ("\U0001f4cc", "Pin")


def test_replay_rejected() -> None:
    new, existing = linked()
    first = new.seal({"n": 0})
    existing.open(first)
    with pytest.raises(LinkDecryptError, match="replayed") as info:
        existing.open(first)
    assert (info.value.expected, info.value.got) == (1, 0)


def test_reorder_rejected_then_in_order_accepted() -> None:
    new, existing = linked()
    m0, m1 = new.seal({"n": 0}), new.seal({"n": 1})
    with pytest.raises(LinkDecryptError, match="out of order") as info:
        existing.open(m1)
    assert (info.value.expected, info.value.got) == (0, 1)
    assert existing.open(m0) == {"n": 0}
    assert existing.open(m1) == {"n": 1}


@pytest.mark.parametrize("index", [0, 7, 8, 12, -1])
def test_tampering_rejected_and_does_not_advance(index: int) -> None:
    new, existing = linked()
    message = new.seal({"device": "laptop"})
    with pytest.raises(LinkDecryptError):
        existing.open(flip(message, index))
    assert existing.open(message) == {"device": "laptop"}


def test_reflected_message_rejected() -> None:
    new, existing = linked()
    mine = new.seal({"n": 0})
    with pytest.raises(LinkDecryptError, match="authentication failed"):
        new.open(mine)
    assert existing.open(mine) == {"n": 0}


@pytest.mark.parametrize("text", ["", "!!!", b64encode(b"short")])
def test_malformed_message_rejected(text: str) -> None:
    new, _ = linked()
    with pytest.raises(LinkDecryptError) as info:
        new.open(text)
    assert info.value.got is None


def test_wrong_secret_gives_no_shared_key() -> None:
    code, private = make_code()
    forged = PairingCode(code.server_url, code.channel, code.new_key, os.urandom(32), 0)
    existing, existing_public = LinkChannel.for_existing_device(forged)
    new = LinkChannel.for_new_device(code, private, existing_public)
    assert new.sas_decimals() != existing.sas_decimals()
    with pytest.raises(LinkDecryptError, match="authentication failed"):
        new.open(existing.seal({"x": 1}))
    with pytest.raises(LinkDecryptError, match="authentication failed"):
        existing.open(new.seal({"x": 1}))


def test_swapped_public_key_gives_no_shared_key() -> None:
    # A malicious server substitutes its own key for the existing device's.
    code, private = make_code()
    existing, _ = LinkChannel.for_existing_device(code)
    _, attacker_public = new_device_keypair()
    new = LinkChannel.for_new_device(code, private, attacker_public)
    assert new.sas_emoji() != existing.sas_emoji()
    with pytest.raises(LinkDecryptError):
        new.open(existing.seal({"x": 1}))


def test_other_channel_id_gives_no_shared_key() -> None:
    code, private = make_code()
    moved = PairingCode(code.server_url, "Other-channel-id-123", code.new_key, code.secret, 0)
    existing, existing_public = LinkChannel.for_existing_device(moved)
    new = LinkChannel.for_new_device(code, private, existing_public)
    with pytest.raises(LinkDecryptError):
        new.open(existing.seal({"x": 1}))


def test_new_device_private_key_must_match_code() -> None:
    code, _ = make_code()
    other, _ = new_device_keypair()
    _, existing_public = LinkChannel.for_existing_device(code)
    with pytest.raises(CryptoError, match="not the one in the pairing code"):
        LinkChannel.for_new_device(code, other, existing_public)


@pytest.mark.parametrize(("peer", "message"), [(b"\x01" * 31, "32 bytes"), (bytes(32), "unusable")])
def test_bad_peer_key_rejected(peer: bytes, message: str) -> None:
    code, private = make_code()
    with pytest.raises(CryptoError, match=message):
        LinkChannel.for_new_device(code, private, peer)


def test_channel_repr_hides_secrets() -> None:
    new, existing = linked()
    new.seal({"n": 0})
    assert repr(new) == f"LinkChannel(role='new', channel='{CHANNEL}', sent=1, received=0)"
    assert (
        repr(existing) == f"LinkChannel(role='existing', channel='{CHANNEL}', sent=0, received=0)"
    )
