from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start.

    Args:
        data_dir: holds the SQLite database (unless ``database_url`` says otherwise).
        database_url: SQLAlchemy async URL; ``None`` means SQLite in ``data_dir``.
        invite_only: registration needs a code from ``bisik server invite``.
        redis_url: with several server processes, fan-out goes through Redis.
    """

    data_dir: Path
    database_url: str | None = None
    invite_only: bool = False
    redis_url: str | None = None
    token_ttl_s: int = 7 * 24 * 3600
    challenge_ttl_s: int = 120
    low_key_threshold: int = 10
    max_body_bytes: int = 1024 * 1024
    # Engine.IO heartbeat: a socket that answers no ping within interval + timeout is closed.
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    # Abuse limits (see _limits.py), per server process; these networks are exempt.
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    registrations_per_ip_per_min: int = 10
    sign_ins_per_ip_per_min: int = 120
    messages_per_device_per_s: float = 20.0
    message_burst: int = 200
    max_connections_per_ip: int = 200
    # Device-linking channels need no account. Per address: at most this many opened
    # in any 20 minutes (a channel's longest life, so never more open at once), and
    # the other rendezvous requests (claim, write, read, close) at this rate. A
    # channel holds at most this many bytes of messages, both sides together.
    rendezvous_channels_per_ip: int = 5
    rendezvous_requests_per_ip_per_min: int = 600
    rendezvous_bytes_per_channel: int = 32 * 1024**2
    # One-time keys handed out, per claiming device and per claimed device, in an
    # hour (burst and refill); past either, the claim gets the fallback key, so a
    # drain cannot use up a device's keys and a sender is never refused.
    key_claims_per_device_per_hour: int = 200
    key_claims_per_target_per_hour: int = 20
    # A socket must authenticate (Socket.IO CONNECT with a valid token) within this long.
    socket_auth_timeout_s: float = 5.0
    # devices_watch: users one socket may watch, and events per device (a minute, burst as many).
    max_watched_users_per_socket: int = 5000
    devices_watch_per_min: int = 120
    # Web Push: at most one push per device in this many seconds.
    push_interval_s: int = 30
    push_contact: str = "mailto:admin@localhost"
    # Allow push endpoints on loopback/private addresses (tests, closed networks).
    push_allow_private: bool = False
    # Attachments (ciphertext blobs): a local directory (default: data_dir/blobs),
    # or an S3-compatible bucket when ``s3_bucket`` is set (credentials from the
    # usual AWS_* environment variables).
    blob_dir: Path | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Largest blob: a 2 GiB file plus the cipher's tags (16 bytes per 64 KiB).
    max_blob_bytes: int = 2 * 1024**3 + 1024**2
    # What one account may store at once, uploads in progress included.
    blob_quota_bytes: int = 10 * 1024**3
    # Upload part size: the unit of resumption (and of S3 multipart, >= 5 MiB there).
    blob_part_bytes: int = 8 * 1024**2
    # Blobs are deleted this long after their upload completed (like Signal's 30 days);
    # unfinished uploads after ``upload_ttl_s``.
    blob_ttl_s: int = 30 * 24 * 3600
    upload_ttl_s: int = 24 * 3600
    blob_gc_interval_s: float = 600.0
    # Undelivered envelopes are dropped after this long (disappearing messages
    # at the time their sender set); the purge runs every ``purge_interval_s``.
    retention_s: int = 30 * 24 * 3600
    purge_interval_s: float = 60.0
    # A message's record (sender device, client id, time) outlives its last
    # envelope this long, to recognise a retry whose answer was lost (the client
    # resends on its next connect).
    dedup_window_s: int = 48 * 3600
    # Conversation pairs (presence and typing between two users) are forgotten
    # when no message passed between them for this long.
    conversation_ttl_s: int = 90 * 24 * 3600

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'bisik.sqlite3').resolve()}"
