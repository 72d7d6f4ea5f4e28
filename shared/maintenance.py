"""The operator's database commands: ``migrate`` (schema, then the configured model and its index),
``reindex`` (rebuild model indexes whose parameters changed, with search answering throughout),
``grant-app-role`` (what the app's own role may do) and dropping a model's indexes.

They run as a role that may change the schema (the PostgreSQL administrator, or the local superuser),
from ``make run``, the deployment's post-provision step, or by hand; the app itself never does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from .db import citus_installed, connect, make_pool, pgvector_version, translate_errors
from .embeddings import EmbeddingProvider, make_provider, provider_config
from .errors import InvalidInput
from .registry import Model, Registry
from .runtime import MODEL_REFRESH_SECONDS, index_spec
from .schema import (
    IndexSpec,
    MigrationReport,
    create_model_index,
    drop_indexes,
    model_indexes,
)
from .schema import (
    migrate as migrate_schema,
)
from .settings import Settings
from .store import Store

Say = Callable[[str], None]

# What the app's role may do at run time, table by table: read and write its rows, nothing else (no
# DDL: `migrate` runs as the administrator). Kept next to the migrations that create the tables; the
# deployment runs `grant-app-role` after every `migrate`.
APP_TABLE_PRIVILEGES: Final = {
    "images": "SELECT, INSERT, UPDATE, DELETE",
    "image_vectors": "SELECT, INSERT, UPDATE, DELETE",
    "ingest_claims": "SELECT, INSERT, UPDATE, DELETE",
    "embedding_models": "SELECT",
    "schema_migrations": "SELECT",
}


@dataclass
class MigrateResult:
    schema: MigrationReport
    model: Model | None = None
    built: str | None = None
    notes: list[str] = field(default_factory=list)


@contextmanager
def _admin(settings: Settings, credential: object | None = None) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(settings, credential)
    try:
        conn.autocommit = True
        yield conn
    finally:
        conn.close()


@contextmanager
def _store(settings: Settings, credential: object | None = None) -> Iterator[Store]:
    store = Store(make_pool(settings, credential, role="admin"), index=index_spec(settings))
    try:
        yield store
    finally:
        store.close()


def migrate(
    settings: Settings,
    *,
    credential: object | None = None,
    provider: EmbeddingProvider | None = None,
    prepare_model: bool = True,
    say: Say = print,
) -> MigrateResult:
    """Bring the schema up to date, then prepare the model ``EMBEDDING_PROVIDER`` names: its row (active
    when the collection has none) and its HNSW index, built concurrently, so the first upload builds
    nothing. Safe to run again: a second run changes nothing."""
    with _admin(settings, credential) as conn:
        report = migrate_schema(conn, say=say)
        result = MigrateResult(report)
        if report.citus:
            result.notes.extend(cluster_settings(conn, settings, say))
    if not prepare_model:
        return result
    provider = provider or make_provider(settings, credential=credential)
    with _store(settings, credential) as store:
        model = store.registry.register(provider.model_id, provider.dimension, provider_config(settings))
        result.model = model
        spec = index_spec(settings)
        status = store.registry.model_status(model.model_id)
        with _admin(settings, credential) as conn:
            existing = model_indexes(conn, model.model_id)
            recorded = status.index if status is not None else None
            if model.index_name is None or model.index_name not in existing:
                # Leftovers of an earlier registration of this name (another size) would refuse its vectors.
                wanted = spec.name(model.model_id, model.dimension)
                drop_indexes(conn, [n for n in existing if n != wanted], concurrently=True)
                say(f"building the HNSW index of {model.model_id} ({_describe(spec)})")
                result.built = _build(conn, store, model, spec, say)
            elif recorded != spec:
                result.notes.append(
                    f"the index of {model.model_id} was built with {_describe(recorded)}; the settings ask for "
                    f"{_describe(spec)}: run `python -m shared.cli reindex` to rebuild it (search keeps answering)"
                )
    return result


def _cluster_values(conn: psycopg.Connection[Any], settings: Settings) -> dict[str, str]:
    """A common search's settings on Citus, and the connections to each worker a session should keep
    between searches (one per shard it holds)."""
    from .vectorsearch import cluster_defaults

    values = cluster_defaults(pgvector_version(conn), settings.hnsw_ef_search)
    shards = conn.execute(
        "SELECT count(*)::float / greatest(1, (SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND isactive)) "
        "FROM pg_dist_shard WHERE logicalrelid = 'images'::regclass"
    ).fetchone()
    per_worker = max(1, round(float(shards[0]))) if shards and shards[0] else 1
    values["citus.max_cached_conns_per_worker"] = str(per_worker)
    return values


def cluster_settings(conn: psycopg.Connection[Any], settings: Settings, say: Say) -> list[str]:
    """On Citus, make a common search's settings this database's defaults (Citus gives the workers the
    same), so searches need no SET LOCAL and no transaction around them, and let each session keep its
    connections to the workers between searches. Returns a note when this role may not do so."""
    values = _cluster_values(conn, settings)
    database = conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    try:
        for name, value in values.items():
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(database[0]), sql.Identifier(*name.split(".")), sql.Literal(value)
                )
            )
    except psycopg.errors.InsufficientPrivilege:
        listed = ", ".join(f"{k}={v}" for k, v in values.items())
        return [
            f"could not make the search settings database defaults ({listed}): only the database's owner may; "
            "`grant-app-role` sets them for the app's role instead (searches work either way, slower without)"
        ]
    say(f"search defaults for {database[0]}: {', '.join(f'{k}={v}' for k, v in values.items())}")
    return []


def _describe(spec: IndexSpec | None) -> str:
    if spec is None:
        return "unknown parameters"
    return f"{spec.precision}, m={spec.m}, ef_construction={spec.ef_construction}"


def _build(conn: psycopg.Connection[Any], store: Store, model: Model, spec: IndexSpec, say: Say) -> str:
    """Build the model's index concurrently (progress from pg_stat_progress_create_index) and make it
    the one its queries use."""
    with _progress(conn.info.dsn, say, model.model_id):
        name = create_model_index(conn, model.model_id, model.dimension, spec, concurrently=True)
    store.registry.record_index(model.model_id, name, spec)
    return name


@contextmanager
def _progress(dsn: str, say: Say, what: str) -> Iterator[None]:
    """Report an index build's phase and tuples every few seconds, from a second connection."""
    done = threading.Event()

    def watch() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as watcher:
                while not done.wait(5.0):
                    row = watcher.execute(
                        "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index "
                        "WHERE relid = 'image_vectors'::regclass LIMIT 1"
                    ).fetchone()
                    if row is not None:
                        total = f" of {row[2]:,}" if row[2] else ""
                        say(f"  {what}: {row[0]}, {row[1]:,}{total} rows")
        except psycopg.Error:
            return  # progress is a courtesy

    started = time.monotonic()
    thread = threading.Thread(target=watch, name="index-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1)
        say(f"  {what}: index ready in {time.monotonic() - started:.1f} s")


@dataclass
class ReindexResult:
    rebuilt: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def reindex(
    settings: Settings,
    *,
    model_id: str | None = None,
    credential: object | None = None,
    wait_seconds: float = MODEL_REFRESH_SECONDS + 5,
    say: Say = print,
    sleep: Callable[[float], None] = time.sleep,
) -> ReindexResult:
    """Rebuild the HNSW index of each active or building model (or of ``model_id``) whose precision,
    m or ef_construction differ from the settings: the new index is built concurrently beside the old
    one, queries switch to it (workers follow within their refresh interval, so this waits that long),
    then the old one is dropped concurrently. Search answers throughout."""
    spec = index_spec(settings)
    result = ReindexResult()
    with _store(settings, credential) as store, _admin(settings, credential) as conn:
        statuses = [
            s
            for s in store.registry.models()
            if (model_id is None and s.model.state in ("active", "building")) or s.model.model_id == model_id
        ]
        if model_id is not None and not statuses:
            raise InvalidInput(f"model {model_id} is not registered")
        for status in statuses:
            model = status.model
            existing = model_indexes(conn, model.model_id)
            if status.index == spec and model.index_name in existing:
                result.current.append(model.model_id)
                say(f"{model.model_id}: index is current ({_describe(spec)})")
                continue
            say(f"{model.model_id}: building a new index ({_describe(status.index)} -> {_describe(spec)})")
            name = _build(conn, store, model, spec, say)
            result.rebuilt.append(model.model_id)
            old = [n for n in model_indexes(conn, model.model_id) if n != name]
            if old:
                say(f"{model.model_id}: queries switch to the new index within {wait_seconds:.0f} s; then the old goes")
                sleep(wait_seconds)
                drop_indexes(conn, old, concurrently=True)
                result.dropped.extend(old)
    return result


def drop_model(settings: Settings, model_id: str, *, credential: object | None = None) -> int:
    """Remove a model that is not active: its vectors, its row, and its indexes."""
    with _store(settings, credential) as store:
        removed = store.registry.drop_model(model_id)
    with _admin(settings, credential) as conn:
        drop_indexes(conn, model_indexes(conn, model_id), concurrently=True)
    return removed


def prepare_target(settings: Settings, provider: EmbeddingProvider, config: dict[str, str]) -> Model:
    """Register a model to re-embed into (``building``) with its index, built concurrently."""
    spec = index_spec(settings)
    with _store(settings) as store, _admin(settings) as conn:
        model = store.registry.register(provider.model_id, provider.dimension, config)
        existing = model_indexes(conn, model.model_id)
        if model.index_name is None or model.index_name not in existing:
            wanted = spec.name(model.model_id, model.dimension)
            drop_indexes(conn, [n for n in existing if n != wanted], concurrently=True)
            _build(conn, store, model, spec, lambda _: None)
        registry: Registry = store.registry
        return next(s.model for s in registry.models() if s.model.model_id == model.model_id)


def grant_app_role(settings: Settings, role: str, *, credential: object | None = None) -> list[str]:
    """Grant ``role`` (the Function App's database role) what the app needs at run time, and nothing
    more: CONNECT, USAGE on the schema, and :data:`APP_TABLE_PRIVILEGES`. Returns the statements run."""
    if not role or len(role) > 128:
        raise InvalidInput("give the app's database role name (the Function App's name in Azure)")
    statements: list[sql.Composed] = []
    with _admin(settings, credential) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            raise InvalidInput(
                f"role {role!r} does not exist: create it first (in Azure, with "
                "pgaadauth_create_principal_with_oid; see docs/deploy.md)"
            )
        who = sql.Identifier(role)
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        statements.append(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database[0]), who))
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who))
        for table, privileges in APP_TABLE_PRIVILEGES.items():
            statements.append(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(sql.SQL(privileges), sql.Identifier(table), who)
            )
        if citus_installed(conn):
            # The search defaults for the app's role here too (Citus passes ALTER ROLE ... SET on to the
            # workers): where the administrator may not set them for the database (not its owner).
            for name, value in _cluster_values(conn, settings).items():
                statements.append(
                    sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                        who, sql.Identifier(database[0]), sql.Identifier(*name.split(".")), sql.Literal(value)
                    )
                )
        with translate_errors("granting the app's role"), conn.transaction():
            for statement in statements:
                conn.execute(statement)
        return [statement.as_string(conn) for statement in statements]
