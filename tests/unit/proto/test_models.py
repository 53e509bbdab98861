from __future__ import annotations

import pytest
from pydantic import ValidationError

from bisik.proto import ErrorCode, ProtocolError, SendRequest, validate_username


@pytest.mark.parametrize("name", ["abc", "alice", "a.b-c_d", "x" * 32, "123"])
def test_valid_usernames(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["ab", "Alice", "x" * 33, "al ice", "al/ice", "", "ä" * 5])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(ProtocolError) as err:
        validate_username(name)
    assert err.value.code == ErrorCode.INVALID_USERNAME


def test_send_request_is_strict() -> None:
    good = {
        "client_message_id": "abcdefgh",
        "envelopes": [{"username": "bob", "device_id": "DEVICE1", "type": 0, "body": "eA"}],
    }
    assert SendRequest.model_validate(good).envelopes[0].kind == "olm"
    for bad in (
        {**good, "extra": 1},
        {**good, "client_message_id": "short"},
        {**good, "envelopes": []},
        {**good, "envelopes": [{**good["envelopes"][0], "type": "0"}]},  # type: ignore[dict-item]
        {**good, "envelopes": [{**good["envelopes"][0], "type": 2}]},  # type: ignore[dict-item]
    ):
        with pytest.raises(ValidationError):
            SendRequest.model_validate(bad)


def test_error_body_round_trip() -> None:
    err = ProtocolError(ErrorCode.UNKNOWN_USER, "no user 'x'")
    again = ProtocolError.from_body(err.to_body())
    assert again.code == ErrorCode.UNKNOWN_USER
    assert again.message == "no user 'x'"
    assert err.http_status == 404
    assert ProtocolError.from_body("garbage").code == ErrorCode.INTERNAL
