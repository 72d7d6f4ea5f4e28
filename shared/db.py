"""Connections to PostgreSQL: one pool per worker process, Entra tokens, and error classification.

SQL itself lives in shared/store.py; this module only knows how to connect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from .errors import DatabaseUnavailable, SettingError
from .settings import Settings

log = logging.getLogger(__name__)

# psycopg's classes name the caller's next step: OperationalError (connection lost, server
# shutting down, too many connections) may succeed later; everything else is a bug or bad data.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)


def connection_kwargs(settings: Settings, credential: object | None = None) -> Callable[[], dict[str, Any]]:
    """Keyword arguments for each new connection; with ``DATABASE_AUTH=entra`` a fresh token as password."""
    base: dict[str, Any] = {"application_name": "image-search", "connect_timeout": 10}
    if settings.database_auth == "password":
        return lambda: dict(base)

    from psycopg.conninfo import conninfo_to_dict

    from .auth import POSTGRES_SCOPE, CachedToken

    if not conninfo_to_dict(settings.database_url).get("user"):
        raise SettingError(
            "DATABASE_URL",
            "has no user name: with DATABASE_AUTH=entra put the Entra principal's name in the URL "
            "(postgresql://<principal>@<server>.postgres.database.azure.com/<db>?sslmode=require)",
        )
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    token = CachedToken(credential, POSTGRES_SCOPE)  # type: ignore[arg-type]
    return lambda: {**base, "password": token.get()}


def connect(settings: Settings, credential: object | None = None) -> psycopg.Connection[Any]:
    """One connection outside the pool (schema creation, CLI)."""
    try:
        return psycopg.connect(settings.database_url, **connection_kwargs(settings, credential)())
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database in DATABASE_URL: {_first_line(exc)}") from exc


def _configure(conn: psycopg.Connection[Any]) -> None:
    register_vector(conn)
    conn.commit()  # configure must leave the connection idle


def make_pool(settings: Settings, credential: object | None = None, *, min_size: int = 1) -> ConnectionPool:
    """Open a pool; the ``vector`` extension must already exist (the adapter is registered per connection)."""
    pool = ConnectionPool(
        settings.database_url,
        kwargs=connection_kwargs(settings, credential),
        min_size=min(min_size, settings.database_pool_max),
        max_size=settings.database_pool_max,
        configure=_configure,
        check=ConnectionPool.check_connection,  # a server restart must not hand out dead connections
        timeout=30,
        reconnect_timeout=60,
        name="image-search",
        open=False,
    )
    pool.open(wait=False)
    return pool


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn connection-level failures into :class:`DatabaseUnavailable` (transient)."""
    try:
        yield
    except TRANSIENT_DB_ERRORS as exc:
        raise DatabaseUnavailable(f"database unavailable while {what}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
