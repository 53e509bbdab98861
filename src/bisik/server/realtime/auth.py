"""Connection authentication: a bearer token from the challenge-response, or refusal."""

from __future__ import annotations

from typing import Any

import socketio

from bisik.proto import ErrorCode, ProtocolError
from bisik.server.realtime._base import ConcernBase
from bisik.server.stores import DeviceRow


class AuthConcern(ConcernBase):
    async def authenticate(self, auth: Any) -> DeviceRow:
        """The connecting device, or ``ConnectionRefusedError`` with a code and reason."""
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            if token is None:
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "connect with auth={'token': ...}")
            return await self.services.auth.authenticate(token)
        except ProtocolError as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": str(exc.code)}
            ) from None
