"""Fixtures that start the real services: PostgreSQL + pgvector, Azurite and the fake Vision server.

Each test run gets a fresh PostgreSQL data directory and database, a fresh Azurite workspace and a
fake Vision server on free ports; all are stopped and removed at the end of the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from scripts.services import Azurite, Postgres, remove_tree, start_azurite, start_postgres
from shared.db import connect, make_pool
from shared.settings import Settings
from shared.store import Store


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("services")
    yield path
    remove_tree(path)


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[Postgres]:
    pg = start_postgres(services_dir / "pgdata")
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def database_url(postgres: Postgres) -> str:
    """A fresh database for this test run, with the application schema."""
    url = postgres.create_database(f"test_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(url) as conn:
        Store.create_schema(conn)
    return url


@pytest.fixture(scope="session")
def azurite(services_dir: Path) -> Iterator[Azurite]:
    az = start_azurite(services_dir / "azurite")
    yield az
    az.stop()


def make_settings(**values: str) -> Settings:
    return Settings({k: v for k, v in values.items() if v is not None})


@pytest.fixture
def db_settings(database_url: str) -> Settings:
    return make_settings(DATABASE_URL=database_url)


@pytest.fixture(scope="session")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = make_pool(make_settings(DATABASE_URL=database_url), min_size=1)
    p.wait(timeout=30)
    yield p
    p.close()


@pytest.fixture
def store(pool: ConnectionPool) -> Store:
    """A store over an emptied collection."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models")
    return Store(pool)


__all__ = ["connect"]
