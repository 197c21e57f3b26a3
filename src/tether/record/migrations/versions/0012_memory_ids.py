"""memory_items ids are never reused on SQLite (AUTOINCREMENT): live caches hold item ids across a purge

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL sequences never hand an id out twice
    with op.batch_alter_table("memory_items", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("memory_items", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
