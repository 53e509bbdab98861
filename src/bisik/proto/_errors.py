"""Error codes carried by every refused HTTP request and socket event."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_USERNAME = "invalid_username"
    USERNAME_TAKEN = "username_taken"
    DEVICE_EXISTS = "device_exists"
    INVITE_REQUIRED = "invite_required"
    INVALID_INVITE = "invalid_invite"
    BAD_SIGNATURE = "bad_signature"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 (an error code)
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_DEVICE = "unknown_device"
    NOT_YOUR_ENVELOPE = "not_your_envelope"
    TOO_MANY_KEYS = "too_many_keys"
    UNKNOWN_EVENT = "unknown_event"
    NOT_FOUND = "not_found"
    NOT_IN_CONVERSATION = "not_in_conversation"
    NOT_A_MEMBER = "not_a_member"
    NOT_AN_ADMIN = "not_an_admin"
    TOO_MANY_MEMBERS = "too_many_members"
    BLOB_NOT_FOUND = "blob_not_found"
    BLOB_TOO_LARGE = "blob_too_large"
    BLOB_INCOMPLETE = "blob_incomplete"
    QUOTA_EXCEEDED = "quota_exceeded"
    OFFSET_MISMATCH = "offset_mismatch"
    NOT_YOUR_UPLOAD = "not_your_upload"
    RATE_LIMITED = "rate_limited"
    NOT_SENT = "not_sent"  # send_many: after a refused message, the rest is not stored
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_WATCHED = "too_many_watched"  # devices_watch past the per-socket cap
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# HTTP status for each code; socket events carry the code alone.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_SENT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.INVALID_USERNAME: 400,
    ErrorCode.USERNAME_TAKEN: 409,
    ErrorCode.DEVICE_EXISTS: 409,
    ErrorCode.INVITE_REQUIRED: 403,
    ErrorCode.INVALID_INVITE: 403,
    ErrorCode.BAD_SIGNATURE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.UNKNOWN_USER: 404,
    ErrorCode.UNKNOWN_DEVICE: 404,
    ErrorCode.NOT_YOUR_ENVELOPE: 403,
    ErrorCode.TOO_MANY_KEYS: 400,
    ErrorCode.UNKNOWN_EVENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_IN_CONVERSATION: 403,
    ErrorCode.NOT_A_MEMBER: 403,
    ErrorCode.NOT_AN_ADMIN: 403,
    ErrorCode.TOO_MANY_MEMBERS: 400,
    ErrorCode.BLOB_NOT_FOUND: 404,
    ErrorCode.BLOB_TOO_LARGE: 413,
    ErrorCode.BLOB_INCOMPLETE: 409,
    ErrorCode.QUOTA_EXCEEDED: 403,
    ErrorCode.OFFSET_MISMATCH: 409,
    ErrorCode.NOT_YOUR_UPLOAD: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.TOO_MANY_WATCHED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ProtocolError(Exception):
    """A request the other side refused, with a machine-readable code.

    Raised by server handlers (turned into an error body) and by the client SDK
    when the server answers with an error.
    """

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = ErrorCode(code) if code in ErrorCode.__members__.values() else code
        self.message = message

    @property
    def http_status(self) -> int:
        if isinstance(self.code, ErrorCode):
            return HTTP_STATUS[self.code]
        return 400

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": str(self.code), "message": self.message}}

    @classmethod
    def from_body(cls, body: object) -> ProtocolError:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            return cls(str(err.get("code", "internal")), str(err.get("message", "")))
        return cls(ErrorCode.INTERNAL, f"unexpected error body: {str(body)[:200]}")
