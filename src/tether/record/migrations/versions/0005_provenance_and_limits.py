"""provenance, shared limits, deadlines: untrusted arguments of calls awaiting approval; rate buckets shared by processes; active seconds per run

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("untrusted_args", sa.JSON(), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("active_s", sa.Float(), nullable=True))
    op.create_table(
        "rate_buckets",
        sa.Column("limit_name", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("active_s")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_column("untrusted_args")
