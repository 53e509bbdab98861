from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bisik.crypto import KdfParams, KeyFile, KeyFileError, WrongPassword, create_master_key

FAST = KdfParams(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)


def test_round_trip_and_subkeys_differ() -> None:
    keyfile, master = create_master_key("pw", FAST)
    again = KeyFile.from_json(keyfile.to_json()).unlock("pw")
    assert again.derive("database") == master.derive("database")
    assert master.derive("database") != master.derive("pickle")
    assert len(master.derive("pickle")) == 32


def test_wrong_password() -> None:
    keyfile, _ = create_master_key("pw", FAST)
    with pytest.raises(WrongPassword):
        keyfile.unlock("pw ")


def test_tampered_kdf_params_fail_to_unlock() -> None:
    keyfile, _ = create_master_key("pw", FAST)
    raw = json.loads(keyfile.to_json())
    raw["time_cost"] = 2
    with pytest.raises(WrongPassword):
        KeyFile.from_json(json.dumps(raw)).unlock("pw")


def test_rewrap_keeps_master_key() -> None:
    keyfile, master = create_master_key("old", FAST)
    rewrapped = keyfile.rewrap("old", "new")
    assert rewrapped.unlock("new").derive("x") == master.derive("x")
    with pytest.raises(WrongPassword):
        rewrapped.unlock("old")


@pytest.mark.parametrize("text", ["", "{}", '{"v": 99, "kdf": "argon2id"}', "[1]", "nonsense"])
def test_malformed_keyfile(text: str) -> None:
    with pytest.raises(KeyFileError):
        KeyFile.from_json(text)


def test_reprs_hide_secrets() -> None:
    keyfile, master = create_master_key("pw", FAST)
    assert "hidden" in repr(master)
    assert master.derive("database").hex() not in repr(master)
    assert keyfile.wrapped.hex() not in repr(keyfile)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time_cost", 0),
        ("time_cost", 65),
        ("parallelism", 0),
        ("parallelism", 2**25),
        ("memory_cost_kib", 7),
        ("memory_cost_kib", 2**40),
    ],
)
def test_out_of_range_kdf_params_are_a_malformed_keyfile(field: str, value: object) -> None:
    raw = json.loads(create_master_key("pw", FAST)[0].to_json())
    raw[field] = value
    with pytest.raises(KeyFileError, match=field):
        KeyFile.from_json(json.dumps(raw))
    with pytest.raises(ValueError, match=field):
        KdfParams(**{**asdict(FAST), field: value})  # type: ignore[arg-type]
