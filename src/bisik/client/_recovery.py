"""The encrypted account backup on the server, and recovery from it.

The backup holds the identity key, the recovery key, contacts with their
verification state and recent history, sealed under a key derived from the
recovery key (shown to the user once, at account creation). Fetching it needs
a signature by another key derived from the recovery key, so the server
neither reads it nor hands it to anyone else.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bisik.client._errors import ClientError
from bisik.client._setup import ReadyDevice, new_device
from bisik.client._store import LocalStore
from bisik.client._transfer import export_account, identity_secret, import_account
from bisik.client._transport import Transport
from bisik.crypto import (
    CryptoError,
    IdentityKey,
    KdfParams,
    RecoveryKey,
    backup_auth_payload,
    decrypt_backup,
    encrypt_backup,
)
from bisik.proto import MAX_BACKUP_BYTES

BACKUP_HISTORY_DAYS = 365


class RecoveryError(ClientError):
    """Recovery failed: no backup, a wrong recovery key, or a corrupt backup."""


def build_backup(store: LocalStore, username: str) -> dict[str, Any] | None:
    """The ``PUT /v1/backup`` body, or ``None`` if this profile has no recovery key.

    History is trimmed (oldest first) until the sealed backup fits the limit.
    """
    text = store.get_meta("recovery_key")
    if text is None:
        return None
    key = RecoveryKey.from_text(text)
    data = export_account(store, history_days=BACKUP_HISTORY_DAYS)
    while True:
        blob = encrypt_backup(key, data.to_json(), username=username)
        if len(blob) <= MAX_BACKUP_BYTES or not data.history:
            break
        data = replace(data, history=data.history[len(data.history) // 4 + 1 :])
    return {
        "auth_key": key.auth_public_key(),
        "ciphertext": blob,
    }


async def recover(
    home: Path,
    *,
    server_url: str,
    username: str,
    recovery_key: str,
    password: str,
    kdf: KdfParams | None = None,
    device_name: str | None = None,
) -> ReadyDevice:
    """Restore an account on a fresh device from its backup and the recovery key.

    Returns:
        The new device, registered, with the account's contacts and history.
    """

    try:
        key = RecoveryKey.from_text(recovery_key)
    except CryptoError as exc:
        raise RecoveryError(f"not a recovery key: {exc}") from None
    transport = Transport(server_url)
    try:
        challenge = await transport.request(
            "POST", "/v1/backup/challenge", {"username": username}, auth=False
        )
        signature = key.sign_auth(
            backup_auth_payload(username=username, challenge=str(challenge["challenge"]))
        )
        blob = await transport.request(
            "POST",
            "/v1/backup/fetch",
            {"username": username, "challenge": challenge["challenge"], "signature": signature},
            auth=False,
        )
        try:
            account = decrypt_backup(key, str(blob["ciphertext"]), username=username)
            identity = IdentityKey.from_private_bytes(identity_secret(account))
        except (CryptoError, ValueError) as exc:
            raise RecoveryError(f"the backup does not open with this key: {exc}") from None
        async with new_device(home, password, kdf) as device:
            # A second proof of the recovery key lets this device join the account.
            again = await transport.request(
                "POST", "/v1/backup/challenge", {"username": username}, auth=False
            )
            proof = {
                "challenge": str(again["challenge"]),
                "signature": key.sign_auth(
                    backup_auth_payload(username=username, challenge=str(again["challenge"]))
                ),
            }
            body = device.add_device_body(username, identity, device_name, recovery=proof)
            await transport.request("POST", "/v1/devices", body, auth=False)
            device.finish(server_url=server_url, username=username, identity=identity)
            with device.profile.store.transaction():
                import_account(device.profile.store, account)
                device.profile.store.set_meta("recovery_key", key.to_text())
    finally:
        await transport.http.aclose()
    return ReadyDevice(device.profile, device.machine, identity)


__all__ = ["RecoveryError", "build_backup", "recover"]
