from __future__ import annotations

from bisik.proto import (
    ClaimedKey,
    ClaimRequest,
    ClaimResponse,
    DeviceRef,
    ErrorCode,
    KeyCount,
    ProtocolError,
    SignedKey,
    UploadKeysRequest,
)
from bisik.server._config import ServerConfig
from bisik.server._limits import RateLimiter
from bisik.server.handlers._notifier import Notifier
from bisik.server.handlers.accounts import verify_signed_keys
from bisik.server.stores import AccountStore, DeviceHandle, KeyStore
from bisik.server.stores.keys import KeyCounts

# Clients keep 50; the cap stops a device from filling the server with keys.
MAX_STORED_ONE_TIME_KEYS = 200
HOUR_S = 3600.0


def _key_count(counts: KeyCounts) -> KeyCount:
    return KeyCount(
        one_time_keys=counts.one_time,
        fallback_key=counts.has_fallback,
        fallback_used=counts.fallback_used,
    )


class KeysHandler:
    """The key directory: one-time keys, fallback keys, atomic claims."""

    def __init__(
        self, config: ServerConfig, accounts: AccountStore, keys: KeyStore, notifier: Notifier
    ) -> None:
        self._config = config
        self._accounts = accounts
        self._keys = keys
        self._notifier = notifier
        # One-time keys handed out per claiming and per claimed device (per process).
        # Past either, the fallback key: a drain cannot use a device's keys up, and
        # a sender still gets a key to start a session with.
        per_device = config.key_claims_per_device_per_hour
        per_target = config.key_claims_per_target_per_hour
        self._by_requester = RateLimiter(per_device / HOUR_S, per_device)
        self._by_target = RateLimiter(per_target / HOUR_S, per_target)

    async def upload(self, device: DeviceHandle, req: UploadKeysRequest) -> KeyCount:
        # Callers hold only the device's handle; uploads are rare enough to load its key.
        row = await self._accounts.get_device_by_pk(device.pk)
        if row is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "this device was removed from its account")
        one_time, fallback = verify_signed_keys(row.ed25519, req.one_time_keys, req.fallback_key)
        held = await self._keys.counts(device.pk)
        if held.one_time + len(one_time) > MAX_STORED_ONE_TIME_KEYS:
            raise ProtocolError(
                ErrorCode.TOO_MANY_KEYS,
                f"a device keeps at most {MAX_STORED_ONE_TIME_KEYS} one-time keys on the server",
            )
        return _key_count(await self._keys.upload(device.pk, one_time, fallback))

    async def count(self, device: DeviceHandle) -> KeyCount:
        return _key_count(await self._keys.counts(device.pk))

    def _one_time_allowed(self, requester: DeviceHandle | None, target_pk: int) -> bool:
        if requester is not None and self._by_requester.take(requester.pk):
            return False
        return not self._by_target.take(target_pk)

    async def claim(
        self, req: ClaimRequest, requester: DeviceHandle | None = None, *, limited: bool = True
    ) -> ClaimResponse:
        """Hand out exactly one key per requested device (never the same one-time key twice).

        Args:
            req: the devices to claim a key of.
            requester: the claiming device, whose claims are limited too (the
                claimed device's are in any case).
            limited: ``False`` for an address exempt from abuse limits.

        Returns:
            A one-time key per device while the limits allow, else its fallback
            key; ``missing`` lists devices that are unknown or have neither.
        """
        refs = list(dict.fromkeys((d.username, d.device_id) for d in req.devices))
        resolved = await self._accounts.resolve_devices(refs)
        claimed: list[ClaimedKey] = []
        missing: list[DeviceRef] = []
        for username, device_id in refs:
            device_pk = resolved.get((username, device_id))
            row = None
            if device_pk is not None:
                one_time = not limited or self._one_time_allowed(requester, device_pk)
                row = await self._keys.claim(device_pk, one_time=one_time)
            if row is None:
                missing.append(DeviceRef(username=username, device_id=device_id))
                continue
            claimed.append(
                ClaimedKey(
                    username=username,
                    device_id=device_id,
                    key=SignedKey(
                        key_id=row.key.key_id, key=row.key.public_key, signature=row.key.signature
                    ),
                    fallback=row.fallback,
                )
            )
            if row.remaining < self._config.low_key_threshold:
                await self._notifier.keys_low(row.device_pk, row.remaining)
        return ClaimResponse(keys=claimed, missing=missing)
