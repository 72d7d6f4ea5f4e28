"""Connections to PostgreSQL: one pool per worker process, Entra tokens, error classification, and
what kind of server is at the other end (single node or Citus, which pgvector).

The SQL of the application lives in the modules of each job (schema, registry, catalogue, bulk,
vectorsearch); this module only knows how to connect.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from .errors import DatabaseUnavailable, SettingError
from .settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# psycopg's classes name the caller's next step: OperationalError (connection lost, server
# shutting down, too many connections) may succeed later; everything else is a bug or bad data.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)


def connection_kwargs(settings: Settings, credential: object | None = None) -> Callable[[], dict[str, Any]]:
    """Keyword arguments for each new connection; with ``DATABASE_AUTH=entra`` a fresh token as password."""
    from psycopg.conninfo import conninfo_to_dict

    base: dict[str, Any] = {"application_name": "image-search", "connect_timeout": 10}
    base.update(_trust_store(conninfo_to_dict(settings.database_url)))
    if settings.database_auth == "password":
        return lambda: dict(base)

    from .auth import POSTGRES_SCOPE, CachedToken

    if not conninfo_to_dict(settings.database_url).get("user"):
        raise SettingError(
            "DATABASE_URL",
            "has no user name: with DATABASE_AUTH=entra put the Entra principal's name in the URL "
            "(postgresql://<principal>@<server>.postgres.database.azure.com/<db>?sslmode=verify-full&sslrootcert=system)",
        )
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    token = CachedToken(credential, POSTGRES_SCOPE)  # type: ignore[arg-type]
    return lambda: {**base, "password": token.get()}


def _trust_store(params: dict[str, Any]) -> dict[str, Any]:
    """``sslrootcert=system`` means the operating system's CA certificates; the libpq inside
    psycopg[binary] carries its own OpenSSL, which looks for them in a folder of its own and finds
    none unless SSL_CERT_FILE or SSL_CERT_DIR says where they are. Then certifi's bundle (Mozilla's
    roots, which hold the CAs of Azure Database for PostgreSQL) stands in for them."""
    if (
        str(params.get("sslrootcert", "")) != "system"
        or os.environ.get("SSL_CERT_FILE")
        or os.environ.get("SSL_CERT_DIR")
    ):
        return {}
    import certifi

    return {"sslrootcert": certifi.where()}


def connect(
    settings: Settings, credential: object | None = None, *, connect_timeout: int | None = None
) -> psycopg.Connection[Any]:
    """One connection outside the pool (migrations, health, CLI)."""
    kwargs = connection_kwargs(settings, credential)()
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    try:
        return psycopg.connect(settings.database_url, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database in DATABASE_URL: {_first_line(exc)}") from exc


def _configure(conn: psycopg.Connection[Any]) -> None:
    register_vector(conn)
    conn.commit()  # configure must leave the connection idle


class SearchConnection(psycopg.Connection[Any]):
    """A connection of the search pool: it keeps one cursor, with binary results, for the searches it
    runs. Measured (100,000 vectors, 2 cores, the search benchmark's loop), a new cursor per statement
    (``conn.execute``) with text results cost 60-110 us of a 1.1-1.3 ms search: psycopg finds the dumper
    of each parameter and the loader of each column again for every new cursor, and parses text."""

    _search_cursor: psycopg.Cursor[Any] | None = None

    def search_cursor(self) -> psycopg.Cursor[Any]:
        cursor = self._search_cursor
        if cursor is None or cursor.closed:
            cursor = self._search_cursor = self.cursor(binary=True)
        return cursor


def search_cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """The cursor a search runs on: the connection's own on a search pool's connection, else a new one
    (a single pool shared with ingestion); either way with binary results."""
    if isinstance(conn, SearchConnection):
        return conn.search_cursor()
    return conn.cursor(binary=True)


def _configure_search(conn: psycopg.Connection[Any]) -> None:
    register_vector(conn)
    # Autocommit: a search is one statement, with no BEGIN and COMMIT round trips around it.
    conn.commit()
    conn.autocommit = True


# A search someone waits for gives up on the database after this long (503 + Retry-After), instead of
# queueing behind a pool that cannot serve it; ingestion waits longer (the host retries it anyway).
SEARCH_POOL_TIMEOUT: Final = 3.0
WORK_POOL_TIMEOUT: Final = 30.0
SEARCH_CONNECT_TIMEOUT: Final = 3


def pool_sizes(total: int) -> tuple[int, int]:
    """(work, search) connections out of ``DATABASE_POOL_MAX``: searches get half, and never fewer than
    one of their own, so ingestion can never hold every connection a search needs."""
    if total < 2:
        return 1, 0  # one connection in all: searches share it
    search = max(1, total // 2)
    return total - search, search


def make_pool(
    settings: Settings, credential: object | None = None, *, min_size: int = 1, role: str = "work"
) -> ConnectionPool:
    """Open a pool; the ``vector`` extension must already exist (the adapter is registered per connection).

    ``role``: ``work`` (ingestion, reconcile, commands; the default) or ``search`` (autocommit, a short
    wait for a connection and a bounded queue, see :data:`SEARCH_POOL_TIMEOUT`). Both pools together
    hold at most ``DATABASE_POOL_MAX`` connections, see :func:`pool_sizes`; a pool opens connections
    only as it needs them beyond ``min_size``."""
    work, search = pool_sizes(settings.database_pool_max)
    kwargs = connection_kwargs(settings, credential)
    if role == "search":
        size = max(1, search)
        base = kwargs
        kwargs = lambda: {**base(), "connect_timeout": SEARCH_CONNECT_TIMEOUT}  # noqa: E731
    else:
        size = work if role == "work" else settings.database_pool_max
    pool = ConnectionPool(
        settings.database_url,
        connection_class=SearchConnection if role == "search" else psycopg.Connection,
        kwargs=kwargs,
        min_size=min(min_size, size),
        max_size=size,
        configure=_configure_search if role == "search" else _configure,
        # A server restart must not hand out dead connections. Ingestion tests each connection it takes
        # (a round trip); a search, as fast as one statement, finds out when it runs (Database.read).
        check=None if role == "search" else ConnectionPool.check_connection,
        timeout=SEARCH_POOL_TIMEOUT if role == "search" else WORK_POOL_TIMEOUT,
        max_waiting=8 * size if role == "search" else 0,
        reconnect_timeout=60,
        name=f"image-search-{role}",
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


def citus_installed(conn: psycopg.Connection[Any]) -> bool:
    """Whether the database is a Citus coordinator (or worker): the extension is installed."""
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None


def pgvector_version(conn: psycopg.Connection[Any]) -> tuple[int, ...]:
    """The installed pgvector version, e.g. (0, 8, 2); (0,) when it is not installed."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return tuple(int(p) for p in re.findall(r"\d+", str(row[0]) if row else "0")[:3]) or (0,)


class Database:
    """The connection pool and what it connects to: Citus or not, which pgvector (read once)."""

    # Class-level defaults: learnt on first use (tests may set and delete them to simulate a server).
    _citus: bool | None = None
    _pgvector_version: tuple[int, ...] | None = None

    def __init__(self, pool: ConnectionPool, search_pool: ConnectionPool | None = None) -> None:
        self.pool = pool
        # Searches take their connections from a pool of their own (short timeout, bounded queue), so
        # that ingestion can never hold every connection a search needs; one pool when not given.
        self.search_pool = search_pool or pool

    # Both are read once, through the search pool: searches ask, and must never wait on the ingestion pool.
    def is_citus(self) -> bool:
        if self._citus is None:
            with translate_errors("inspecting the database"):
                self._citus = self.read(citus_installed)
        return self._citus

    def pgvector_version(self) -> tuple[int, ...]:
        """The installed pgvector version, e.g. (0, 8, 2)."""
        if self._pgvector_version is None:
            with translate_errors("inspecting the database"):
                self._pgvector_version = self.read(pgvector_version)
        return self._pgvector_version

    def sequential(self, conn: psycopg.Connection[Any]) -> None:
        """On Citus, run this transaction's commands over one connection per node: required before
        modifying ``embedding_models`` (a reference table that a distributed table's key points at) in a
        transaction that also read or wrote the distributed tables. Nothing on a single node."""
        if self.is_citus():
            conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")

    def read(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run read-only ``work`` on a search connection. The search pool does not test the connections
        it hands out (a round trip per search); one the server dropped since (a restart, a failover)
        fails here instead, and ``work`` runs once more after the pool has weeded out its dead
        connections, which a read-only statement may."""
        for attempt in (1, 2):
            conn: psycopg.Connection[Any] | None = None
            try:
                # getconn and putconn, not the pool's connection(): its context manager's own work (a
                # generator, the connection's context, usage statistics) is not needed by an autocommit
                # search. Measured on one backend, 100,000 vectors, 2 cores, each version of Store.search
                # in turn: 1-2 % of a 0.78 ms p50 search (stamps in place: 35 -> 17 us out and back).
                conn = self.search_pool.getconn()
                try:
                    if conn.autocommit:  # the search pool's: no transaction to end
                        return work(conn)
                    with conn:  # one pool shared with ingestion: commit, or roll back on error
                        return work(conn)
                finally:
                    self.search_pool.putconn(conn)
            except psycopg.OperationalError:
                if attempt == 2 or conn is None or not conn.broken:
                    raise
                log.info("a search connection was dropped by the server; trying again")
                self.search_pool.check()
        raise AssertionError("unreachable")

    def set_local(self, conn: psycopg.Connection[Any], name: str, value: int | str) -> None:
        if self.is_citus():
            # Without this, SET LOCAL stays on the coordinator and the shards search with defaults.
            conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value)))
