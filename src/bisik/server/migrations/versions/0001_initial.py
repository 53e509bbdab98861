"""Accounts, devices, key directory, authentication, message queue.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(32), nullable=False, unique=True),
        sa.Column("identity_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "devices",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("curve25519", sa.String(64), nullable=False, unique=True),
        sa.Column("ed25519", sa.String(64), nullable=False),
        sa.Column("identity_signature", sa.String(128), nullable=False),
        sa.Column("device_signature", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_seen_at", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("user_id", "device_id", name="uq_devices_user_device"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "one_time_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.UniqueConstraint("device_pk", "key_id", name="uq_otk_device_key"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "fallback_keys",
        sa.Column(
            "device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("used", sa.Boolean, nullable=False),
    )
    op.create_table(
        "auth_challenges",
        sa.Column("challenge", sa.String(64), primary_key=True),
        sa.Column("device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "access_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "invites",
        sa.Column("code_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=True),
        sa.Column("used_by", Id, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    )
    op.create_table(
        "messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "sender_device_pk",
            Id,
            sa.ForeignKey("devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("client_message_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("sender_device_pk", "client_message_id", name="uq_messages_client_id"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "envelopes",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "message_id", Id, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "recipient_device_pk",
            Id,
            sa.ForeignKey("devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("type", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_envelopes_recipient", "envelopes", ["recipient_device_pk", "id"])


def downgrade() -> None:
    for table in (
        "envelopes",
        "messages",
        "invites",
        "access_tokens",
        "auth_challenges",
        "fallback_keys",
        "one_time_keys",
        "devices",
        "users",
    ):
        op.drop_table(table)
