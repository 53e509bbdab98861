"""Disappearing messages: a message may carry the time after which nobody may
still read it (its envelopes and its row are purged then).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger, nullable=True))
    op.create_index("ix_messages_expires_at", "messages", ["expires_at"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.create_index("ix_envelopes_created_at", "envelopes", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_envelopes_created_at", "envelopes")
    op.drop_index("ix_messages_created_at", "messages")
    op.drop_index("ix_messages_expires_at", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("expires_at")
