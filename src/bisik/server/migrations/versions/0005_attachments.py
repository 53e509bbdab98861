"""Attachment blobs: size, upload progress and expiry of each opaque ciphertext blob.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_pk", Id, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("received", sa.BigInteger, nullable=False),
        sa.Column("part_size", sa.Integer, nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.Column("backend_ref", sa.String(1024), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_blobs_user", "blobs", ["user_id"])
    op.create_index("ix_blobs_expires", "blobs", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_blobs_expires", "blobs")
    op.drop_index("ix_blobs_user", "blobs")
    op.drop_table("blobs")
