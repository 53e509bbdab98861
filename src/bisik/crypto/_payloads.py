"""The exact bytes each signature covers. Both sides build them the same way."""

from __future__ import annotations

from bisik.crypto._encoding import canonical_json


def device_payload(
    *, username: str, device_id: str, curve25519: str, ed25519: str, identity_key: str
) -> bytes:
    """What a user's identity key and the device's own key sign for a device."""
    return canonical_json(
        {
            "type": "bisik.device.v1",
            "username": username,
            "device_id": device_id,
            "curve25519": curve25519,
            "ed25519": ed25519,
            "identity_key": identity_key,
        }
    )


def one_time_key_payload(*, key_id: str, key: str, fallback: bool) -> bytes:
    """What a device signs for each one-time or fallback key it publishes."""
    return canonical_json(
        {"type": "bisik.otk.v1", "key_id": key_id, "key": key, "fallback": fallback}
    )


def auth_payload(*, challenge: str, username: str, device_id: str) -> bytes:
    """What a device signs to answer an authentication challenge."""
    return canonical_json(
        {
            "type": "bisik.auth.v1",
            "challenge": challenge,
            "username": username,
            "device_id": device_id,
        }
    )


def backup_auth_payload(*, username: str, challenge: str) -> bytes:
    """What the recovery key's auth key signs to fetch the account backup."""
    return canonical_json(
        {"type": "bisik.backup-auth.v1", "username": username, "challenge": challenge}
    )
