"""Create and drop a test database on a Citus cluster the reader already has (``TEST_DATABASE_URL``
naming the coordinator's maintenance database).

A Citus database is a database of the same name on the coordinator and on every worker, each with the
``citus`` extension, and the coordinator's metadata naming the workers (node metadata is per database).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _nodes(admin_url: str) -> tuple[tuple[str, int], list[tuple[str, int]]]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nodename, nodeport, groupid FROM pg_dist_node WHERE noderole = 'primary' AND isactive "
            "ORDER BY groupid"
        ).fetchall()
    params = conninfo_to_dict(admin_url)
    coordinator = next(((str(r[0]), int(r[1])) for r in rows if r[2] == 0), None)
    if coordinator is None:
        coordinator = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    workers = [(str(r[0]), int(r[1])) for r in rows if r[2] != 0]
    if not workers:
        raise RuntimeError(f"the Citus coordinator at {admin_url} has no active workers in pg_dist_node")
    return coordinator, workers


def _url(admin_url: str, host: str, port: int, database: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(admin_url)
    params.update(host=host, port=port, dbname=database)
    return make_conninfo(**params)


def create_database(admin_url: str, name: str) -> None:
    """Create ``name`` on every node (Citus propagates CREATE DATABASE when asked to), with citus and
    vector in it, and register the coordinator and the workers in it; needs a superuser."""
    coordinator, workers = _nodes(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SET citus.enable_create_database_propagation = on")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(_url(admin_url, *coordinator, name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            conn.execute("SELECT citus_set_coordinator_host(%s, %s)", coordinator)
            # citus_add_node needs the extension on the worker's database already.
            hosts, ports = [h for h, _ in workers], [p for _, p in workers]
            statements = ["CREATE EXTENSION IF NOT EXISTS citus"] * len(workers)
            for host, port, ok, result in conn.execute(
                "SELECT * FROM master_run_on_worker(%s, %s, %s, false)", (hosts, ports, statements)
            ).fetchall():
                if not ok:
                    raise RuntimeError(f"creating citus on worker {host}:{port} failed: {result}")
            for host, port in workers:
                conn.execute("SELECT citus_add_node(%s, %s)", (host, port))
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # Citus creates it on the workers too
    except BaseException:
        drop_database(admin_url, name)
        raise


def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name`` from every node; FORCE, because Citus's own background sessions hold it open."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SET citus.enable_create_database_propagation = on")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
