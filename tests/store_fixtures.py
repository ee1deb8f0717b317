"""Database fixtures for the store and server tests: SQLite in a temp folder, and a real
PostgreSQL server started once per test session (skipped, with the reason, if impossible).
Import the fixtures into a test module with `from store_fixtures import *`."""

from __future__ import annotations

import uuid

import pytest
from pg_server import start_postgres

__all__ = ["db_url", "pg_server", "postgres_url", "sqlite_url"]


@pytest.fixture(scope="session")
def pg_server():
    server, why = start_postgres()
    if server is None:
        pytest.skip(f"no PostgreSQL server for the tests: {why}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(pg_server) -> str:
    return pg_server.create_database(f"cf_{uuid.uuid4().hex[:12]}")  # an empty database per test


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'chat.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
