"""Alembic environment: runs on the connection tether hands it (see db.Database)."""

from alembic import context

from tether.record.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
context.run_migrations()
