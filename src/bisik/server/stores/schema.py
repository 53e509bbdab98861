"""Table definitions for queries. Alembic migrations (``migrations/``) create them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    select,
)
from sqlalchemy.sql.selectable import ScalarSelect

# Autoincrement primary keys must be INTEGER on SQLite to alias the rowid, and
# AUTOINCREMENT there so ids of deleted rows are never reused: clients remember
# envelope ids they have handled, and a reused id would look like a duplicate.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


def user_pk_of(username: str) -> ScalarSelect[Any]:
    """The primary key of a username, as a subquery for a WHERE or VALUES clause."""
    return select(users.c.id).where(users.c.username == username).scalar_subquery()


users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(32), nullable=False, unique=True),
    Column("identity_key", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

devices = Table(
    "devices",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("curve25519", String(64), nullable=False, unique=True),
    Column("ed25519", String(64), nullable=False),
    Column("identity_signature", String(128), nullable=False),
    Column("device_signature", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=True),
    Column("name", String(256), nullable=True),
    # A revoked device keeps its row, so its signed keys can never be registered again.
    Column("revoked_at", BigInteger, nullable=True),
    # Live sockets of this device across server processes (presence).
    Column("online_count", Integer, nullable=False, server_default="0"),
    UniqueConstraint("user_id", "device_id", name="uq_devices_user_device"),
    sqlite_autoincrement=True,
)

one_time_keys = Table(
    "one_time_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    UniqueConstraint("device_pk", "key_id", name="uq_otk_device_key"),
    sqlite_autoincrement=True,
)

fallback_keys = Table(
    "fallback_keys",
    metadata,
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("key_id", String(64), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

auth_challenges = Table(
    "auth_challenges",
    metadata,
    Column("challenge", String(64), primary_key=True),
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

access_tokens = Table(
    "access_tokens",
    metadata,
    # SHA-256 of the token: a database leak does not hand out sessions.
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

invites = Table(
    "invites",
    metadata,
    Column("code_hash", LargeBinary(32), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Column("used_by", Id, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sender_device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("client_message_id", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Group messages: the group, and the one Megolm ciphertext all its envelopes share.
    Column("group_id", String(32), nullable=True),
    Column("body", Text, nullable=True),
    # Disappearing messages: purged (with their envelopes) after this time.
    Column("expires_at", BigInteger, nullable=True),
    UniqueConstraint("sender_device_pk", "client_message_id", name="uq_messages_client_id"),
    sqlite_autoincrement=True,
)

envelopes = Table(
    "envelopes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("recipient_device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("type", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_envelopes_recipient", "recipient_device_pk", "id"),
    sqlite_autoincrement=True,
)

rendezvous = Table(
    "rendezvous",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("new_token_hash", LargeBinary(32), nullable=False),
    Column("existing_token_hash", LargeBinary(32), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    # Sum of the messages' sizes, capped (ServerConfig.rendezvous_bytes_per_channel).
    Column("bytes_written", BigInteger, nullable=False, server_default="0"),
)

rendezvous_messages = Table(
    "rendezvous_messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "channel", String(64), ForeignKey("rendezvous.channel", ondelete="CASCADE"), nullable=False
    ),
    Column("role", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_rendezvous_messages_channel", "channel", "id"),
    sqlite_autoincrement=True,
)

backups = Table(
    "backups",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("auth_key", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("ciphertext", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Outstanding challenges to fetch a backup, one per request (a few per user, the
# oldest evicted), each used once and short-lived.
backup_challenges = Table(
    "backup_challenges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("challenge", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_backup_challenges_user", "user_id", "id"),
    sqlite_autoincrement=True,
)

# Two users who wrote to each other (user_a < user_b): the membership test for
# presence and typing, which a pair passes only once each side has sent the other
# a stored message. Forgotten ``conversation_ttl_s`` after its last use.
conversations = Table(
    "conversations",
    metadata,
    Column("user_a", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("user_b", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("a_sent", Boolean, nullable=False, server_default=false()),
    Column("b_sent", Boolean, nullable=False, server_default=false()),
    # The start (UTC) of the last day a message passed between them: a day, not a
    # time, so that it tells little and is written once a day at most.
    Column("used_on", BigInteger, nullable=False),
    Index("ix_conversations_user_b", "user_b"),
    Index("ix_conversations_used_on", "used_on"),
)

user_settings = Table(
    "user_settings",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("share_presence", Boolean, nullable=False),
)

push_subscriptions = Table(
    "push_subscriptions",
    metadata,
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("endpoint", String(1024), nullable=False),
    Column("p256dh", String(128), nullable=False),
    Column("auth", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_push_at", BigInteger, nullable=False),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

device_grants = Table(
    "device_grants",
    metadata,
    Column("grant_hash", LargeBinary(32), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The issuing device: a grant dies with it (revocation).
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", String(32), ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(8), nullable=False),
    Column("added_at", BigInteger, nullable=False),
    Index("ix_group_members_user", "user_id"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The uploading device: only it may send parts (an upload is per device).
    Column("device_pk", Id, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("part_size", Integer, nullable=False),
    Column("complete", Boolean, nullable=False),
    # The backend's handle on an unfinished upload (an S3 multipart upload id).
    Column("backend_ref", String(1024), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    # A disappearing message's attachment: deleted this long after upload at the latest.
    Column("ttl_ms", BigInteger, nullable=True),
    Index("ix_blobs_user", "user_id"),
    Index("ix_blobs_expires", "expires_at"),
)
