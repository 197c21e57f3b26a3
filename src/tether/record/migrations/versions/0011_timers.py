"""runs.wake_at: when a run waiting on a timer is due (durable timers hold no process)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("wake_at", sa.String(32), nullable=True))
        batch.create_index("ix_runs_wake_at", ["wake_at"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_wake_at")
        batch.drop_column("wake_at")
