"""Conversation pairs count only once each side has sent (issue 19, item 5), and
are forgotten when unused: each side's flag and the day of last use replace the
time the first message passed.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Who sent first was never recorded: every existing pair starts one-sided on
    # both sides, and the next message each way (a delivered receipt counts)
    # makes it a pair again.
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("a_sent", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("b_sent", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("used_on", sa.BigInteger, nullable=False, server_default="0"))
    # The start of the (UTC) day of the first message: 86,400,000 ms a day.
    op.execute("UPDATE conversations SET used_on = created_at - created_at % 86400000")
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column("used_on", server_default=None)
        batch.drop_column("created_at")
    op.create_index("ix_conversations_used_on", "conversations", ["used_on"])


def downgrade() -> None:
    op.drop_index("ix_conversations_used_on", table_name="conversations")
    # The old schema counts every row as a pair: keep only the mutual ones.
    op.execute("DELETE FROM conversations WHERE NOT (a_sent AND b_sent)")
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("created_at", sa.BigInteger, nullable=False, server_default="0"))
    op.execute("UPDATE conversations SET created_at = used_on")
    with op.batch_alter_table("conversations") as batch:
        batch.alter_column("created_at", server_default=None)
        batch.drop_column("used_on")
        batch.drop_column("b_sent")
        batch.drop_column("a_sent")
