"""guardrails: used credentials, approval tiers and votes, approvers, risk on decisions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_credentials",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("used_at", sa.String(32), nullable=False),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("required", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("role", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("on_expiry", sa.String(16), nullable=False, server_default="deny"))
        batch_op.add_column(sa.Column("escalate_to", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("risk", sa.Float(), nullable=True))
    op.create_table(
        "approval_votes",
        sa.Column("approval_id", sa.String(40), sa.ForeignKey("approvals.id"), primary_key=True),
        sa.Column("voter_key", sa.String(200), primary_key=True),
        sa.Column("voter", sa.String(200), nullable=False),
        sa.Column("approve", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("voted_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "approvers",
        sa.Column("name_key", sa.String(200), primary_key=True),
        sa.Column("role", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tools", sa.String(200), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approvers")
    op.drop_table("approval_votes")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        for col in ("risk", "escalate_to", "on_expiry", "expires_at", "role", "required"):
            batch_op.drop_column(col)
    op.drop_table("used_credentials")
