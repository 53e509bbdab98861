"""DeviceRow and the DeviceHandle that an open socket keeps instead."""

from __future__ import annotations

import pytest

from bisik.server.stores import DeviceHandle, DeviceRow


def test_a_device_row_is_a_handle_with_its_keys() -> None:
    row = DeviceRow(
        pk=7,
        username="alice",
        identity_key="IK",
        device_id="DEV1",
        curve25519="CK",
        ed25519="EK",
        identity_signature="IS",
        device_signature="DS",
    )
    assert isinstance(row, DeviceHandle)
    assert (row.pk, row.username, row.device_id, row.ed25519) == (7, "alice", "DEV1", "EK")
    handle = DeviceHandle(row.pk, row.username, row.device_id)
    assert not hasattr(handle, "ed25519")
    # Slotted: no per-instance dict; frozen: a socket's device cannot be swapped in place.
    assert not hasattr(handle, "__dict__") and not hasattr(row, "__dict__")
    with pytest.raises(AttributeError):
        handle.pk = 8  # type: ignore[misc]
