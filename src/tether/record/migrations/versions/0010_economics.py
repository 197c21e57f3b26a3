"""economics: the run's cost ceiling, per-action spend, cache hit counters, pgvector on PostgreSQL

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost_ceiling_usd", sa.Float(), nullable=True))
    with op.batch_alter_table("model_calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("action", sa.String(200), nullable=True))  # the tool its step proposed
    op.create_index("ix_model_calls_action", "model_calls", ["action"])
    op.create_table(
        "cache_stats",
        sa.Column("cache", sa.String(32), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("hits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("misses", sa.BigInteger(), nullable=False, server_default="0"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _pgvector(bind)


def _pgvector(bind: sa.Connection) -> None:
    """The vector side table, where the server has pgvector; else the store keeps its numpy path."""
    available = bind.exec_driver_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").first()
    if not available:
        return
    try:
        with bind.begin_nested():  # no right to create it: the migration goes on without
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except sa.exc.DBAPIError:
        return
    # No fixed dimension: embedders differ, and a search only compares rows of one embedder.
    bind.exec_driver_sql(
        "CREATE TABLE memory_vectors (item_id INTEGER PRIMARY KEY REFERENCES memory_items(id) ON DELETE CASCADE,"
        " embedding vector NOT NULL)"
    )
    import numpy as np

    for item_id, blob in bind.exec_driver_sql("SELECT id, vector FROM memory_items").all():
        text = "[" + ",".join(repr(float(x)) for x in np.frombuffer(blob, dtype=np.float32)) + "]"
        bind.execute(sa.text("INSERT INTO memory_vectors (item_id, embedding) VALUES (:i, CAST(:v AS vector))"), {"i": item_id, "v": text})


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS memory_vectors")
    op.drop_table("cache_stats")
    op.drop_index("ix_model_calls_action", "model_calls")
    with op.batch_alter_table("model_calls", schema=None) as batch_op:
        batch_op.drop_column("action")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("cost_ceiling_usd")
