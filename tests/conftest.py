from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tether.record.db import Database


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The offline classifier trains once per test session (a few seconds), then loads from here.
    os.environ["TETHER_CACHE_DIR"] = str(tmp_path_factory.mktemp("models"))
    os.environ.pop("TETHER_DB", None)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default .tether/ lands in the test's own folder


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tether.db'}"


@pytest.fixture
def db(db_url: str) -> Database:
    d = Database(db_url)
    yield d
    d.dispose()


# -- PostgreSQL from the machine's own binaries ----------------------------------
sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from pgtemp import TempPostgres, find_bin, find_pgvector_bin  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> TempPostgres:
    if find_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH; `.ci/run` installs them")
    pg = TempPostgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def pg_url(postgres: TempPostgres) -> str:
    """A new, empty PostgreSQL database for one test."""
    postgres.created = getattr(postgres, "created", 0) + 1
    return postgres.create_db(f"t{postgres.created}")


@pytest.fixture(scope="session")
def pgvector_postgres() -> TempPostgres:
    """A PostgreSQL server with pgvector: the machine's, or the build in the `pgserver` wheel."""
    found = find_pgvector_bin()
    if found is None:
        pytest.skip("no PostgreSQL with pgvector: neither a postgresql-NN-pgvector package nor the pgserver wheel (test extra)")
    pg = TempPostgres(found).start()
    yield pg
    pg.stop()


@pytest.fixture
def pgvector_url(pgvector_postgres: TempPostgres) -> str:
    pgvector_postgres.created = getattr(pgvector_postgres, "created", 0) + 1
    return pgvector_postgres.create_db(f"v{pgvector_postgres.created}")
