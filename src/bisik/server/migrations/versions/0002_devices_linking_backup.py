"""Device names and revocation, linking rendezvous, encrypted account backups.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        # Encrypted by the account's devices; the server never sees the name.
        batch.add_column(sa.Column("name", sa.String(256), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.BigInteger, nullable=True))
    op.create_table(
        "rendezvous",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("new_token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("existing_token_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rendezvous_messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "channel",
            sa.String(64),
            sa.ForeignKey("rendezvous.channel", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_rendezvous_messages_channel", "rendezvous_messages", ["channel", "id"])
    op.create_table(
        "backups",
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("auth_key", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("challenge", sa.String(64), nullable=True),
        sa.Column("challenge_expires_at", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("backups")
    op.drop_table("rendezvous_messages")
    op.drop_table("rendezvous")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("name")
