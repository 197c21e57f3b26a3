"""control plane: API keys, rollouts and kill switches, stored eval results

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(200), nullable=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.String(32), nullable=True),
    )
    op.create_table(
        "rollouts",
        sa.Column("workflow", sa.String(200), primary_key=True),
        sa.Column("stable_ref", sa.String(400), nullable=False),
        sa.Column("candidate_ref", sa.String(400), nullable=True),
        sa.Column("percent", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("key_field", sa.String(100), nullable=False),
        sa.Column("killed", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("kill_reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(400), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
    )
    op.create_index("ix_eval_results_created_at", "eval_results", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_eval_results_created_at", "eval_results")
    op.drop_table("eval_results")
    op.drop_table("rollouts")
    op.drop_table("api_keys")
