"""Connections to PostgreSQL: one pool per worker process, Entra tokens, error classification, and
what kind of server is at the other end (single node or Citus, which pgvector).

The SQL of the application lives in the modules of each job (schema, registry, catalogue, bulk,
vectorsearch); this module only knows how to connect.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
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


class Database:
    """The connection pool and what it connects to: Citus or not, which pgvector (read once)."""

    # Class-level defaults: learnt on first use (tests may set and delete them to simulate a server).
    _citus: bool | None = None
    _pgvector_version: tuple[int, ...] | None = None

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def is_citus(self) -> bool:
        if self._citus is None:
            with translate_errors("inspecting the database"), self.pool.connection() as conn:
                self._citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None
        return self._citus

    def pgvector_version(self) -> tuple[int, ...]:
        """The installed pgvector version, e.g. (0, 8, 2)."""
        if self._pgvector_version is None:
            with translate_errors("inspecting the database"), self.pool.connection() as conn:
                row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            text = str(row[0]) if row else "0"
            self._pgvector_version = tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)
        return self._pgvector_version

    def set_local(self, conn: psycopg.Connection[Any], name: str, value: int | str) -> None:
        if self.is_citus():
            # Without this, SET LOCAL stays on the coordinator and the shards search with defaults.
            conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value)))
