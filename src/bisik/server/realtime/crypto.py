"""Key-directory events over the socket (the HTTP API has the same operations)."""

from __future__ import annotations

from typing import Any

from bisik.proto import ClaimRequest, ErrorCode, ProtocolError, UploadKeysRequest
from bisik.server.realtime._base import ConcernBase, Connection, EventHandler
from bisik.server.rest._util import parse_model


class CryptoConcern(ConcernBase):
    def events(self) -> dict[str, EventHandler]:
        return {
            "keys_upload": self.upload,
            "keys_count": self.count,
            "keys_claim": self.claim,
            "devices": self.devices,
        }

    async def upload(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(UploadKeysRequest, data)
        return (await self.services.keys.upload(conn.device, req)).model_dump()

    async def count(self, conn: Connection, data: Any) -> dict[str, Any]:
        return (await self.services.keys.count(conn.device)).model_dump()

    async def claim(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = parse_model(ClaimRequest, data)
        return (await self.services.keys.claim(req, conn.device)).model_dump()

    async def devices(self, conn: Connection, data: Any) -> dict[str, Any]:
        username = data.get("username") if isinstance(data, dict) else None
        if not isinstance(username, str) or not 1 <= len(username) <= 64:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "expected {'username': str}")
        return (await self.services.accounts.device_list(username)).model_dump()
