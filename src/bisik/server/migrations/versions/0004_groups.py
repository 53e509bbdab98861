"""Groups: the member list and roles (the server must know them to route and
to check membership); name and other metadata stay end-to-end encrypted.
Group messages store their one Megolm ciphertext once, on the message row.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        # Bumped by every membership or role change; clients compare it.
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "group_members",
        sa.Column(
            "group_id",
            sa.String(32),
            sa.ForeignKey("groups.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("added_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_group_members_user", "group_members", ["user_id"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("group_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("body", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("body")
        batch.drop_column("group_id")
    op.drop_index("ix_group_members_user", "group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
