"""The database: one SQLAlchemy engine, schema migrations, write transactions.

SQLite (the embedded default) is opened in WAL mode with synchronous=FULL, so a
committed transaction survives a crash, and every transaction starts with
BEGIN IMMEDIATE, so concurrent writers queue instead of failing mid-way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tether.errors import StoreError
from tether.record.migrations import SCHEMA_REVISION
from tether.record.redaction import Redactor, load_key

DEFAULT_URL = "sqlite:///.tether/tether.db"
# PostgreSQL advisory lock ids (any fixed numbers unique to tether).
MIGRATION_LOCK, LEDGER_LOCK, RATE_LOCK = 7_465_746_801, 7_465_746_802, 7_465_746_803


def pg_lock(conn: sa.Connection, key: int) -> None:
    """On PostgreSQL, serialize a read-then-insert section until the transaction ends, as SQLite's
    BEGIN IMMEDIATE already does (row locks cannot guard a row that does not exist yet)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")


def timestamp() -> str:
    """UTC time as ISO 8601 text with microseconds (stable under hashing)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "tether.record:migrations")
    return cfg


def _sqlite_path(url: sa.URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _install_sqlite_pragmas(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's lazy BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        # Readers take a snapshot; writers take the write lock up front.
        readonly = conn.get_execution_options().get("tether_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class Database:
    """A tether database at `url`.

    With `create=False` the database must already exist and hold tether's
    schema (read-only commands never create files); otherwise it is created
    and migrated to the current schema.
    """

    def __init__(self, url: str = DEFAULT_URL, *, create: bool = True) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as e:
            raise StoreError(f"bad database URL {url!r}: {e}") from None
        if parsed.drivername == "postgresql":  # psycopg 3 is the driver tether ships with
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        path = _sqlite_path(parsed)
        if path is not None:
            if not path.exists():
                if not create:
                    raise StoreError(f"database not found: {path} (run `tether demo` or pass --db)")
                path.parent.mkdir(parents=True, exist_ok=True)
            elif path.is_dir():
                raise StoreError(f"database path is a directory: {path}")
        try:
            self.engine = sa.create_engine(parsed)
        except (sa.exc.ArgumentError, ImportError) as e:
            raise StoreError(f"cannot open database {url!r}: {e}") from None
        if self.engine.dialect.name == "sqlite":
            _install_sqlite_pragmas(self.engine)
        self._migrate(create)

    @property
    def key_folder(self) -> Path:
        """Where this database's keys live: beside a SQLite file, else .tether/ (or set them by environment)."""
        path = _sqlite_path(self.url)
        return path.parent if path is not None else Path(".tether")

    @functools.cached_property
    def redactor(self) -> Redactor:
        return Redactor(load_key(self.key_folder))

    @property
    def label(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def _migrate(self, create: bool) -> None:
        try:
            with self.read() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                current = None
                if "alembic_version" in tables:
                    current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except sa.exc.DatabaseError as e:
            raise StoreError(f"cannot read database {self.label}: {_first_line(e)}") from None
        if current == SCHEMA_REVISION:
            return
        if current is None and tables:
            raise StoreError(f"{self.label} is not a tether database (it has tables but no tether schema)")
        if current is None and not create:
            raise StoreError(f"{self.label} is not a tether database (empty)")
        from alembic import (
            command,  # only when the schema must change: alembic is slow to import
        )

        cfg = _alembic_config()
        try:
            with self.engine.begin() as conn:
                pg_lock(conn, MIGRATION_LOCK)  # workers starting together migrate once
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except Exception as e:  # a failed migration rolls back as one transaction
            raise StoreError(f"cannot migrate database {self.label}: {_first_line(e)}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One write transaction; committed (durably) when the block exits."""
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(tether_readonly=True)
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def pgvector_ready(db: Database) -> bool:
    """PostgreSQL with the pgvector side table (made by migration 0010 when the extension could be created).

    Here, not in memory, because the migration that makes the table is record's and
    `tether metrics` (record) reports it; `tether.memory.store` uses this one."""
    if db.engine.dialect.name != "postgresql":
        return False
    with db.read() as conn:
        return bool(conn.exec_driver_sql("SELECT to_regclass('memory_vectors') IS NOT NULL").scalar())


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def database_from_env(url: str | None, *, create: bool) -> Database:
    return Database(url or os.environ.get("TETHER_DB") or DEFAULT_URL, create=create)
