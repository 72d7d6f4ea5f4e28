"""The database schema: numbered migrations, the version check the app makes at start, and each
embedding model's HNSW index. All the DDL of the project is here, and it runs only from the operator
commands (``migrate``, ``reindex``, ``reembed``, ``drop-model``), never from a request.

Layout:
- ``images``: one row per blob (container + name) with its metadata and status (``indexed`` or
  ``failed`` with the reason). Its id is derived from container and name, so a blob keeps its id
  across re-uploads and the table can be distributed on Citus by that id.
- ``image_vectors``: one row per image and embedding model. Vectors of a second model can live beside
  the first during a re-embedding; the ``embedding`` column has no fixed dimension, and each model
  gets its own partial HNSW index over ``embedding::halfvec(<dim>)`` (or ``::vector(<dim>)``), which also
  makes a vector of the wrong length for its model impossible to store. Each row also holds its
  image's container and name (migration 4), so that a search by name prefix reads the matching
  vectors from their own index; rows written by older code have none and are judged by ``images``.
- ``embedding_models``: the models known to the collection; exactly one is ``active`` for queries,
  and each row names the HNSW index its queries use (precision, m, ef_construction).
- ``ingest_claims``: short leases that let concurrent deliveries of the same bytes share one
  embedding call without holding a database connection during the call.
- ``schema_migrations``: which migrations ran.

On Citus the tables are distributed by image id (co-located), ``embedding_models`` is a reference
table, and ``schema_migrations`` stays on the coordinator.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from .db import citus_installed, translate_errors
from .errors import AppError, DatabaseUnavailable, InvalidInput

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process (migrations, model changes).
SCHEMA_LOCK: Final = 7_246_113_001

PRECISIONS: Final = ("halfvec", "vector")
# pgvector's HNSW limits: 2,000 dimensions for vector, 4,000 for halfvec.
MAX_INDEX_DIMENSIONS: Final = {"vector": 2_000, "halfvec": 4_000}


class SchemaOutdated(AppError):
    """The database's schema is older than this code (or no model is prepared): an operator must run
    ``migrate``. Not transient: waiting does not help, but the request or delivery is not at fault
    either, so HTTP answers 503 and a delivery fails (the host retries it once the operator acted)."""

    code = "SchemaOutdated"


# --- migrations ------------------------------------------------------------------------------------
Step = Callable[[psycopg.Connection[Any], bool], None]
AfterStep = Callable[[psycopg.Connection[Any], Callable[[str], None]], None]


@dataclass(frozen=True)
class Migration:
    """One numbered change. ``steps`` run in one transaction; ``after`` run one by one outside it, so a
    large table stays writable: index builds (``CREATE INDEX CONCURRENTLY`` statements) and work done in
    batches of short transactions (callables, told how to report progress). Every step is safe to run
    again: a migration interrupted half-way is finished by the next ``migrate``."""

    version: int
    name: str
    steps: tuple[Step, ...]
    after: tuple[str | AfterStep, ...] = ()


def _sql(statement: str, *, citus: bool | None = None) -> Step:
    """A step running ``statement``; only on Citus (``citus=True``) or only on a single node (False)."""

    # One statement per call: Citus passes a DDL command's text on to the workers as it came, and a
    # text holding several commands is refused there.
    statements = [part.strip() for part in statement.split(";") if part.strip()]

    def step(conn: psycopg.Connection[Any], on_citus: bool) -> None:
        if citus is None or citus == on_citus:
            for one in statements:
                conn.execute(one)

    return step


def _distributed(table: str, how: str) -> Step:
    """On Citus, distribute ``table`` (``reference``, or co-located with ``images`` by ``column``)."""

    def step(conn: psycopg.Connection[Any], on_citus: bool) -> None:
        if not on_citus:
            return
        known = conn.execute(
            "SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass(%s)", (table,)
        ).fetchone()
        if known is not None:
            return
        if how == "reference":
            conn.execute("SELECT create_reference_table(%s)", (table,))
        elif table == "images":
            conn.execute("SELECT create_distributed_table(%s, %s)", (table, how))
        else:
            conn.execute("SELECT create_distributed_table(%s, %s, colocate_with => 'images')", (table, how))

    return step


def _constraint(table: str, name: str, definition: str) -> Step:
    def step(conn: psycopg.Connection[Any], on_citus: bool) -> None:
        exists = conn.execute(
            "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s", (table, name)
        ).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(table),
                    sql.Identifier(name),
                    sql.SQL(definition),
                )
            )

    return step


def _shard_count(conn: psycopg.Connection[Any], on_citus: bool) -> None:
    if not on_citus:
        return
    source = conn.execute("SELECT source FROM pg_settings WHERE name = 'citus.shard_count'").fetchone()
    if source is not None and source[0] != "default":
        return  # the operator chose (ALTER DATABASE/ROLE ... SET citus.shard_count, or PGOPTIONS)
    # Few shards: a search fans out to every shard, so each costs a task on every query, while a shard
    # holds millions of vectors comfortably. Two per worker keeps both cores of a small node busy and
    # leaves room to rebalance onto more nodes; docs/databases.md has the measurements. This
    # transaction only.
    workers = conn.execute("SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND isactive").fetchone()
    count = max(2, 2 * int(workers[0] if workers else 1))
    conn.execute(sql.SQL("SET LOCAL citus.shard_count = {}").format(sql.Literal(count)))


_INITIAL_TABLES: Final = """
CREATE TABLE IF NOT EXISTS embedding_models (
    model_id     text PRIMARY KEY,
    dimension    integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    state        text NOT NULL CHECK (state IN ('active', 'building', 'retired')),
    config       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);
CREATE TABLE IF NOT EXISTS images (
    id             bigint PRIMARY KEY,
    container      text NOT NULL,
    name           text NOT NULL,
    status         text NOT NULL CHECK (status IN ('indexed', 'failed')),
    sha256         bytea,
    content_type   text,
    width          integer,
    height         integer,
    byte_size      bigint,
    etag           text,
    last_modified  timestamptz,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    failure_code   text,
    failure_reason text,
    failure_count  integer NOT NULL DEFAULT 0,
    failed_at      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE images ADD COLUMN IF NOT EXISTS thumbnail boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS image_vectors (
    image_id   bigint NOT NULL,
    model_id   text NOT NULL,
    sha256     bytea NOT NULL,
    embedding  vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model_id)
);
"""

_INITIAL_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS images_status ON images (status);
CREATE INDEX IF NOT EXISTS images_name ON images (container, name text_pattern_ops);
CREATE INDEX IF NOT EXISTS images_created_at ON images (created_at);
CREATE INDEX IF NOT EXISTS image_vectors_model ON image_vectors (model_id);
CREATE UNIQUE INDEX IF NOT EXISTS embedding_models_one_active ON embedding_models ((true)) WHERE state = 'active';
"""

# The schema the app created on first use before migrations existed; a database made by that code
# is at version 1 once this (all of it IF NOT EXISTS) has run over it.
_V1 = Migration(
    1,
    "initial schema",
    (
        _sql(_INITIAL_TABLES),
        _shard_count,
        _distributed("embedding_models", "reference"),
        _distributed("images", "id"),
        _distributed("image_vectors", "image_id"),
        _sql(_INITIAL_INDEXES),
        # Citus cannot enforce a unique index that leaves out the distribution column: there the id,
        # derived from container and name, carries the uniqueness alone.
        _sql("CREATE UNIQUE INDEX IF NOT EXISTS images_container_name ON images (container, name)", citus=False),
        # Both foreign keys hold on Citus too: image_vectors and images are co-located on the image id,
        # and embedding_models is a reference table.
        _constraint(
            "image_vectors", "image_vectors_image_fk", "FOREIGN KEY (image_id) REFERENCES images (id) ON DELETE CASCADE"
        ),
        _constraint(
            "image_vectors", "image_vectors_model_fk", "FOREIGN KEY (model_id) REFERENCES embedding_models (model_id)"
        ),
    ),
)


def _record_legacy_indexes(conn: psycopg.Connection[Any], on_citus: bool) -> None:
    """Name, in each model's row, the HNSW index the code before migrations built for it (vector)."""
    rows = conn.execute("SELECT model_id, dimension FROM embedding_models WHERE index_name IS NULL").fetchall()
    for model_id, dimension in rows:
        name = _legacy_index_name(model_id, dimension)
        found = conn.execute(
            "SELECT c.reloptions FROM pg_class c WHERE c.relname = %s AND c.relkind = 'i'", (name,)
        ).fetchone()
        if found is None:
            continue
        options = dict(str(o).split("=", 1) for o in (found[0] or []))
        conn.execute(
            "UPDATE embedding_models SET index_name = %s, index_precision = 'vector', index_m = %s, "
            "index_ef_construction = %s WHERE model_id = %s",
            (name, int(options.get("m", 16)), int(options.get("ef_construction", 64)), model_id),
        )


_V2 = Migration(
    2,
    "ingest claims, model index records, filter indexes",
    (
        _sql(
            """
            CREATE TABLE IF NOT EXISTS ingest_claims (
                image_id   bigint NOT NULL,
                sha256     bytea NOT NULL,
                owner      uuid NOT NULL,
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (image_id, sha256)
            );
            ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_name text;
            ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_precision text;
            ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_m integer;
            ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_ef_construction integer;
            """
        ),
        # Named, and apart from ADD COLUMN: Citus takes constraints only with explicit names.
        _constraint(
            "embedding_models", "embedding_models_index_precision", "CHECK (index_precision IN ('halfvec', 'vector'))"
        ),
        _distributed("ingest_claims", "image_id"),
        _record_legacy_indexes,
    ),
    after=(
        # Search filters by content type and upload time; at a million rows a filtered count or exact
        # scan without these reads every row.
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS images_content_type ON images (content_type)",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS images_uploaded ON images ((COALESCE(last_modified, created_at)))",
    ),
)


def _vectors_inline(conn: psycopg.Connection[Any], on_citus: bool) -> None:
    """Store each vector in its row (``STORAGE MAIN``) instead of out of line in the TOAST table.

    pgvector's types default to EXTERNAL: a 1024-d vector (4 KB), over TOAST's 2 KB threshold, is cut
    into three chunks in another table, and reading one costs a TOAST index lookup and three more page
    reads. Inline, one page holds the row and its vector. Measured with ``python -m bench.storage``
    (100,000 x 1024-d, 2 cores, the store's exact scan of a filtered search, p50 in the row / TOASTed):
    1,000 matching images 13.0 / 15.4 ms, 10,000 36.7 / 65.1 ms (the join to ``images`` is most of
    the rest); the vectors take about 47 % more space (one row per 8 KB page). MAIN still moves a
    vector out of line when the row would not fit in a page (above ~2,000 dimensions). Rows already
    written move when rewritten (``VACUUM FULL image_vectors``, docs/deploy.md)."""
    statement = "ALTER TABLE {} ALTER COLUMN embedding SET STORAGE MAIN"
    if not on_citus:
        conn.execute(statement.format("image_vectors"))
        return
    # Citus refuses SET STORAGE on a distributed table: the coordinator's table without passing the
    # command on, then each shard.
    conn.execute("SET LOCAL citus.enable_ddl_propagation = off")
    conn.execute(statement.format("image_vectors"))
    conn.execute("SET LOCAL citus.enable_ddl_propagation = on")
    failed = conn.execute(
        "SELECT shardid, result FROM run_command_on_shards('image_vectors', %s) WHERE NOT success",
        (statement.format("%s"),),
    ).fetchall()
    if failed:  # run_command_on_shards reports a shard's error in its result instead of raising it
        shards = "; ".join(f"shard {shard}: {result}" for shard, result in failed)
        raise DatabaseUnavailable(
            f"could not store the vectors in their rows on every shard ({shards}): run migrate again once every "
            "worker answers"
        )


_V3 = Migration(3, "vectors stored in their rows", (_vectors_inline,))

NAMING_BATCH_ROWS: Final = 5_000


def _name_vectors(conn: psycopg.Connection[Any], say: Callable[[str], None]) -> None:
    """Copy each image's container and name onto its vectors that have none (written before migration 4,
    or by code older than it while this ran), in batches of NAMING_BATCH_ROWS by image id, each its own
    transaction: the table stays writable, and an interrupted run goes on where it stopped.

    Every row written is a new version of the row, so each batch also enters its rows in the HNSW
    indexes again (pgvector finds each vector's entry by a search of the graph and adds the row's new
    place to it) and leaves dead rows for autovacuum: measured, 100,000 x 1024-d on 2 cores, 131 s, the
    table 782 -> 1,316 MB until vacuumed, the HNSW index unchanged. Searches are right throughout: they
    judge a vector without a name by its image's row."""
    if conn.execute("SELECT 1 FROM image_vectors WHERE name IS NULL LIMIT 1").fetchone() is None:
        return
    estimate = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'image_vectors'::regclass").fetchone()
    total = int(estimate[0]) if estimate and estimate[0] and estimate[0] > 0 else None
    about = f"about {total:,}" if total else "all"
    say(f"naming the vectors: {about} rows, {NAMING_BATCH_ROWS:,} at a time")
    last: int | None = None
    seen = named = 0
    started = time.monotonic()
    while True:
        after = sql.SQL("" if last is None else "WHERE image_id > %(last)s")
        row = conn.execute(
            sql.SQL(
                "SELECT max(image_id), count(*) FROM "
                "(SELECT image_id FROM image_vectors {} ORDER BY image_id LIMIT %(rows)s) AS b"
            ).format(after),
            {"last": last, "rows": NAMING_BATCH_ROWS},
        ).fetchone()
        if row is None or not row[1]:
            break
        upper, count = int(row[0]), int(row[1])
        done = conn.execute(
            sql.SQL(
                "UPDATE image_vectors v SET container = i.container, name = i.name FROM images i "
                "WHERE i.id = v.image_id AND v.name IS NULL AND v.image_id <= %(upper)s {}"
            ).format(sql.SQL("" if last is None else "AND v.image_id > %(last)s")),
            {"upper": upper, "last": last},
        )
        named += max(0, done.rowcount)
        seen += count
        last = upper
        elapsed = time.monotonic() - started
        share = f" ({min(100.0, 100.0 * seen / total):.0f} %)" if total else ""
        say(f"  {seen:,} vectors looked at{share}, {named:,} named, {elapsed:.0f} s")
    say(f"named {named:,} vectors in {time.monotonic() - started:.0f} s")


# The image's container and name beside each vector (both immutable: the image id is their hash). A
# search filtered by container and name prefix reads the matching vectors from their own index, without
# joining every one to `images`: 100,000 images, a 1 % prefix, 2 cores, the exact scan 6.5 -> 2.5 ms p50
# (bench.search); and the index path drops a candidate outside the prefix before joining it. Nullable: rows
# written by older code (during a deployment) have none, and searches read those through `images`.
_V4 = Migration(
    4,
    "image names beside their vectors",
    (
        _sql(
            """
            ALTER TABLE image_vectors ADD COLUMN IF NOT EXISTS container text;
            ALTER TABLE image_vectors ADD COLUMN IF NOT EXISTS name text
            """
        ),
    ),
    after=(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS image_vectors_unnamed ON image_vectors (model_id) WHERE name IS NULL",
        _name_vectors,
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS image_vectors_name ON image_vectors "
        "(model_id, container, name text_pattern_ops)",
    ),
)

MIGRATIONS: Final[tuple[Migration, ...]] = (_V1, _V2, _V3, _V4)
LATEST_VERSION: Final = MIGRATIONS[-1].version

_MIGRATIONS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class MigrationReport:
    citus: bool
    before: int
    after: int
    applied: tuple[str, ...]


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema's version: 0 for an empty database, 1 for one made before migrations existed."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() != (None,):
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        if row is not None and row[0] is not None:
            return int(row[0])
    return 1 if conn.execute("SELECT to_regclass('images')").fetchone() != (None,) else 0


def migrate(conn: psycopg.Connection[Any], *, say: Callable[[str], None] = log.info) -> MigrationReport:
    """Bring the schema to :data:`LATEST_VERSION`; a no-op when it is there. ``conn`` must be in
    autocommit mode (the index builds run outside transactions). Concurrent runs take turns."""
    if not conn.autocommit:
        raise ValueError("migrate needs a connection in autocommit mode")
    with translate_errors("migrating the schema"):
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            citus = citus_installed(conn)
            _create_vector_extension(conn)
            before = schema_version(conn)
            applied: list[str] = []
            for migration in MIGRATIONS:
                if migration.version <= before:
                    continue
                say(f"migration {migration.version}: {migration.name}")
                with conn.transaction():
                    if citus:
                        # A foreign key to a reference table (image_vectors -> embedding_models) needs every
                        # command of the transaction on one connection per node.
                        conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
                    conn.execute(_MIGRATIONS_TABLE)
                    for step in migration.steps:
                        step(conn, citus)
                for after in migration.after:
                    if isinstance(after, str):
                        _build_index(conn, after)
                    else:
                        after(conn, say)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s) ON CONFLICT (version) DO NOTHING",
                    (migration.version, migration.name),
                )
                applied.append(f"{migration.version} {migration.name}")
            return MigrationReport(citus, before, schema_version(conn), tuple(applied))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def _create_vector_extension(conn: psycopg.Connection[Any]) -> None:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is not None:
        return
    # Azure Cosmos DB for PostgreSQL only lets users create extensions through this function.
    managed = conn.execute("SELECT to_regprocedure('create_extension(text)')").fetchone()
    if managed is not None and managed[0] is not None:
        conn.execute("SELECT create_extension('vector')")
    else:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def _build_index(conn: psycopg.Connection[Any], statement: str) -> None:
    """Run a ``CREATE INDEX CONCURRENTLY IF NOT EXISTS``; an invalid leftover of an interrupted build
    (which IF NOT EXISTS would keep) is dropped first."""
    match = re.search(r"IF NOT EXISTS (\w+)", statement)
    if match is not None:
        _drop_if_invalid(conn, match.group(1))
    conn.execute(statement)


def _drop_if_invalid(conn: psycopg.Connection[Any], name: str) -> None:
    invalid = conn.execute(
        "SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid WHERE c.relname = %s AND NOT x.indisvalid",
        (name,),
    ).fetchone()
    if invalid is not None:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))


@dataclass(frozen=True)
class SchemaStatus:
    version: int
    latest: int

    @property
    def ok(self) -> bool:
        # Migrations only add: code may run on a schema newer than itself (a rolling deployment).
        return self.version >= self.latest

    def problem(self) -> str | None:
        if self.version == 0:
            return "the database has no schema: run `python -m shared.cli migrate`"
        if self.version < self.latest:
            return (
                f"the database schema is at version {self.version}, this code needs {self.latest}: "
                "run `python -m shared.cli migrate`"
            )
        return None


def check_schema(conn: psycopg.Connection[Any]) -> SchemaStatus:
    return SchemaStatus(schema_version(conn), LATEST_VERSION)


def require_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise :class:`SchemaOutdated` (with the command to run) unless the schema is current."""
    status = check_schema(conn)
    problem = status.problem()
    if problem is not None:
        raise SchemaOutdated(problem)


# --- the HNSW index of each model -----------------------------------------------------------------
@dataclass(frozen=True)
class IndexSpec:
    """How a model's HNSW index is built: element precision and graph parameters."""

    precision: str = "halfvec"
    m: int = 32
    ef_construction: int = 128

    def name(self, model_id: str, dimension: int) -> str:
        # Every parameter is part of the name: an index built with other parameters (or left behind
        # by a dropped model of the same name but another size) is never mistaken for this one.
        slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:24]
        key = f"{model_id}/{dimension}/{self.precision}/{self.m}/{self.ef_construction}"
        return f"image_vectors_hnsw_{slug}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def check(self, dimension: int) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"index precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        limit = MAX_INDEX_DIMENSIONS[self.precision]
        if dimension > limit:
            raise InvalidInput(
                f"an HNSW index over {self.precision} takes at most {limit:,} dimensions; this model has "
                f"{dimension:,}" + (": set HNSW_PRECISION=halfvec" if self.precision == "vector" else "")
            )


def _legacy_index_name(model_id: str, dimension: int) -> str:
    """The name the code before migrations gave a model's (vector, m 16) index."""
    slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:30]
    digest = hashlib.sha256(f"{model_id}/{dimension}".encode()).hexdigest()[:8]
    return f"image_vectors_hnsw_{slug}_{digest}"


def create_model_index(
    conn: psycopg.Connection[Any], model_id: str, dimension: int, spec: IndexSpec, *, concurrently: bool = True
) -> str:
    """Build the model's partial HNSW index if missing; returns its name. ``concurrently`` (autocommit
    connection) keeps the table writable and searchable while it builds."""
    spec.check(dimension)
    name = spec.name(model_id, dimension)
    if concurrently:
        _drop_if_invalid(conn, name)
    conn.execute(
        sql.SQL(
            "CREATE INDEX {how} IF NOT EXISTS {name} ON image_vectors USING hnsw "
            "((embedding::{type}({dim})) {ops}) WITH (m = {m}, ef_construction = {efc}) "
            "WHERE model_id = {model}"
        ).format(
            how=sql.SQL("CONCURRENTLY" if concurrently else ""),
            name=sql.Identifier(name),
            type=sql.SQL(spec.precision),
            dim=sql.Literal(int(dimension)),
            ops=sql.SQL(f"{spec.precision}_cosine_ops"),
            m=sql.Literal(int(spec.m)),
            efc=sql.Literal(int(spec.ef_construction)),
            model=sql.Literal(model_id),
        )
    )
    return name


def model_indexes(conn: psycopg.Connection[Any], model_id: str) -> list[str]:
    """The HNSW indexes on ``image_vectors`` restricted to ``model_id``."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
           WHERE x.indrelid = 'image_vectors'::regclass AND c.relname LIKE 'image\\_vectors\\_hnsw\\_%%'
             AND pg_get_expr(x.indpred, x.indrelid) = %s ORDER BY c.relname""",
        (f"(model_id = {sql.quote(model_id)}::text)",),
    ).fetchall()
    return [str(r[0]) for r in rows]


def drop_indexes(conn: psycopg.Connection[Any], names: Sequence[str], *, concurrently: bool = True) -> None:
    for name in names:
        conn.execute(
            sql.SQL("DROP INDEX {how} IF EXISTS {name}").format(
                how=sql.SQL("CONCURRENTLY" if concurrently else ""), name=sql.Identifier(name)
            )
        )
