import pytest

from bisik.crypto import (
    CryptoError,
    MegolmDecryptError,
    MegolmInbound,
    MegolmOutbound,
    MissingGroupKey,
    parse_megolm,
)

KEY = bytes(range(32))


def test_round_trip_and_indices() -> None:
    out = MegolmOutbound.create()
    inbound = MegolmInbound.from_session_key(out.session_key())
    first = out.encrypt(b"one")
    second = out.encrypt(b"two")
    assert out.message_index == 2
    header = parse_megolm(second)
    assert header.session_id == out.session_id == inbound.session_id
    assert header.message_index == 1
    assert inbound.decrypt(header) == b"two"
    assert inbound.decrypt(parse_megolm(first)) == b"one"


def test_key_shared_later_cannot_read_earlier_messages() -> None:
    out = MegolmOutbound.create()
    early = out.encrypt(b"before you joined")
    late_key = out.session_key()
    late = MegolmInbound.from_session_key(late_key)
    assert late.first_known_index == 1
    with pytest.raises(MissingGroupKey):
        late.decrypt(parse_megolm(early))
    assert late.decrypt(parse_megolm(out.encrypt(b"after"))) == b"after"


def test_export_from_index_reveals_nothing_earlier() -> None:
    out = MegolmOutbound.create()
    full = MegolmInbound.from_session_key(out.session_key())
    messages = [out.encrypt(f"m{i}".encode()) for i in range(3)]
    exported = full.export_at(2)
    assert exported is not None
    forwarded = MegolmInbound.from_export(exported)
    assert forwarded.decrypt(parse_megolm(messages[2])) == b"m2"
    with pytest.raises(MissingGroupKey):
        forwarded.decrypt(parse_megolm(messages[1]))
    assert forwarded.export_at(0) is None


def test_pickles_round_trip_and_keep_the_ratchet() -> None:
    out = MegolmOutbound.create()
    inbound = MegolmInbound.from_session_key(out.session_key())
    out.encrypt(b"x")
    out = MegolmOutbound.from_pickle(out.pickle(KEY), KEY)
    assert out.message_index == 1
    inbound = MegolmInbound.from_pickle(inbound.pickle(KEY), KEY)
    assert inbound.decrypt(parse_megolm(out.encrypt(b"y"))) == b"y"
    with pytest.raises(CryptoError):
        MegolmOutbound.from_pickle(out.pickle(KEY), bytes(32))


def test_tampered_or_foreign_messages_are_refused() -> None:
    out = MegolmOutbound.create()
    other = MegolmOutbound.create()
    inbound = MegolmInbound.from_session_key(out.session_key())
    body = out.encrypt(b"hello")
    session_id, _, ciphertext = body.partition(":")
    flipped = ciphertext[:10] + ("A" if ciphertext[10] != "A" else "B") + ciphertext[11:]
    with pytest.raises(MegolmDecryptError):
        inbound.decrypt(parse_megolm(f"{session_id}:{flipped}"))
    # Another session's ciphertext under this session's id: the signature fails.
    foreign = other.encrypt(b"hello").partition(":")[2]
    with pytest.raises(MegolmDecryptError):
        inbound.decrypt(parse_megolm(f"{session_id}:{foreign}"))
    with pytest.raises(MegolmDecryptError):
        inbound.decrypt(parse_megolm(other.encrypt(b"x")))
    for bad in ("", "no-separator", ":abc", "id:not base64!"):
        with pytest.raises(MegolmDecryptError):
            parse_megolm(bad)
    with pytest.raises(CryptoError):
        MegolmInbound.from_session_key("garbage")
