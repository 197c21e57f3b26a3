"""Alembic migrations of tether's own tables."""

# The newest revision in versions/. Checked against alembic by a test; opening a
# database compares with it without importing alembic.
SCHEMA_REVISION = "0012"
