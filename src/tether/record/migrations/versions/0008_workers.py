"""workers: the heartbeats of `tether worker` processes, so live workers take over a dead one's runs

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), primary_key=True),  # also the engine's executor id
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),  # Unix time of the last beat
        sa.Column("recovered_by", sa.String(100), nullable=True),  # set when a live worker takes its runs over
    )


def downgrade() -> None:
    op.drop_table("workers")
