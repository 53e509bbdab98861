"""Conversation pairs (membership for presence and typing), privacy settings,
online device counts, Web Push subscriptions, device grants and the server's VAPID key.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "conversations",
        # A 1:1 conversation, recorded when the first message between two users
        # passes; user_a < user_b.
        sa.Column("user_a", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_b", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_conversations_user_b", "conversations", ["user_b"])
    op.create_table(
        "user_settings",
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("share_presence", sa.Boolean, nullable=False),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("online_count", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "push_subscriptions",
        sa.Column(
            "device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("endpoint", sa.String(1024), nullable=False),
        sa.Column("p256dh", sa.String(128), nullable=False),
        sa.Column("auth", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_push_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "device_grants",
        # One-time permissions to add a device, issued to a signed-in device.
        sa.Column("grant_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
    op.drop_table("device_grants")
    op.drop_table("push_subscriptions")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("online_count")
    op.drop_table("user_settings")
    op.drop_table("conversations")
