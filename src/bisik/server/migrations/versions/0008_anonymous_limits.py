"""What a stranger can store or spoil: pairing channels count their bytes, and
backup challenges are one per request instead of one per account.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("rendezvous") as batch:
        batch.add_column(
            sa.Column("bytes_written", sa.BigInteger, nullable=False, server_default="0")
        )
    op.create_table(
        "backup_challenges",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("challenge", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_backup_challenges_user", "backup_challenges", ["user_id", "id"])
    # Outstanding challenges (2 minutes at most) are dropped: a fetch in flight
    # during the upgrade asks again.
    with op.batch_alter_table("backups") as batch:
        batch.drop_column("challenge")
        batch.drop_column("challenge_expires_at")


def downgrade() -> None:
    with op.batch_alter_table("backups") as batch:
        batch.add_column(sa.Column("challenge", sa.String(64), nullable=True))
        batch.add_column(sa.Column("challenge_expires_at", sa.BigInteger, nullable=True))
    op.drop_index("ix_backup_challenges_user", table_name="backup_challenges")
    op.drop_table("backup_challenges")
    with op.batch_alter_table("rendezvous") as batch:
        batch.drop_column("bytes_written")
