"""PostgreSQL + pgvector storage: the schema and every SQL statement of the application.

Layout:
- ``images``: one row per blob (container + name) with its metadata and status (``indexed`` or
  ``failed`` with the reason). Its id is derived from container and name, so a blob keeps its id
  across re-uploads and the table can be distributed on Citus by that id.
- ``image_vectors``: one row per image and embedding model. Vectors of a second model can live beside
  the first during a re-embedding; the ``embedding`` column has no fixed dimension, and each model
  gets its own partial HNSW index over ``embedding::vector(<dim>)``, which also makes a vector of
  the wrong length for its model impossible to store.
- ``embedding_models``: the models known to the collection; exactly one is ``active`` for queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector as PgVector
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .db import translate_errors
from .embeddings import Vector
from .errors import InvalidInput

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every worker.
_SCHEMA_LOCK = 7_246_113_001

SCHEMA = """
CREATE TABLE IF NOT EXISTS embedding_models (
    model_id     text PRIMARY KEY,
    dimension    integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    state        text NOT NULL CHECK (state IN ('active', 'building', 'retired')),
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
CREATE INDEX IF NOT EXISTS images_status ON images (status);
CREATE INDEX IF NOT EXISTS images_name ON images (container, name text_pattern_ops);
CREATE INDEX IF NOT EXISTS images_created_at ON images (created_at);
CREATE TABLE IF NOT EXISTS image_vectors (
    image_id   bigint NOT NULL,
    model_id   text NOT NULL,
    sha256     bytea NOT NULL,
    embedding  vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model_id)
);
CREATE INDEX IF NOT EXISTS image_vectors_model ON image_vectors (model_id);
"""

# Single node only: Citus cannot enforce a unique index that leaves out the distribution column
# (there the id, derived from container and name, carries the uniqueness instead).
SINGLE_NODE_SCHEMA = """
CREATE UNIQUE INDEX IF NOT EXISTS images_container_name ON images (container, name);
CREATE UNIQUE INDEX IF NOT EXISTS embedding_models_one_active ON embedding_models ((true)) WHERE state = 'active';
DO $$ BEGIN
    ALTER TABLE image_vectors ADD CONSTRAINT image_vectors_image_fk
        FOREIGN KEY (image_id) REFERENCES images (id) ON DELETE CASCADE;
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    ALTER TABLE image_vectors ADD CONSTRAINT image_vectors_model_fk
        FOREIGN KEY (model_id) REFERENCES embedding_models (model_id);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
"""


def image_id(container: str, name: str) -> int:
    """Stable positive 63-bit id of a blob, derived from its container and name."""
    digest = hashlib.sha256(f"{container}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class ImageRecord:
    """What ingestion knows about one blob, stored beside its vector."""

    container: str
    name: str
    sha256: bytes
    content_type: str
    width: int
    height: int
    byte_size: int
    etag: str | None = None
    last_modified: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredImage:
    id: int
    container: str
    name: str
    status: str
    sha256: bytes | None
    content_type: str | None
    width: int | None
    height: int | None
    byte_size: int | None
    etag: str | None
    last_modified: datetime | None
    metadata: dict[str, Any]
    failure_code: str | None
    failure_reason: str | None
    failure_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Model:
    model_id: str
    dimension: int
    state: str


@dataclass(frozen=True)
class IndexState:
    """The stored state of one blob, as reconcile compares it with the container."""

    etag: str | None
    sha256: bytes | None
    status: str
    models: set[str]


@dataclass(frozen=True)
class Hit:
    """One search result: the image and its cosine distance to the query."""

    id: int
    name: str
    distance: float
    content_type: str | None
    width: int | None
    height: int | None
    created_at: datetime

    @property
    def score(self) -> float:
        return 1.0 - self.distance


def _index_name(model_id: str, dimension: int) -> str:
    # The dimension is part of the name: an index left behind by a dropped model of the same name
    # but another size must never be mistaken for this one.
    slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:30]
    digest = hashlib.sha256(f"{model_id}/{dimension}".encode()).hexdigest()[:8]
    return f"image_vectors_hnsw_{slug}_{digest}"


class Store:
    """All reads and writes of the image collection, over one connection pool."""

    def __init__(self, pool: ConnectionPool, *, hnsw_m: int = 16, hnsw_ef_construction: int = 64, ef_search: int = 40):
        self.pool = pool
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = ef_search
        self._citus: bool | None = None
        self._models: dict[str, Model] = {}

    # --- schema -----------------------------------------------------------------------------------
    @staticmethod
    def create_schema(conn: psycopg.Connection[Any]) -> bool:
        """Create the extension, tables and indexes if missing; safe to run again, and concurrently.

        Returns True when the database is a Citus cluster (the tables are then distributed).
        """
        with translate_errors("creating the schema"), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None
            has_vector = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is not None
            if not has_vector:
                # Azure Cosmos DB for PostgreSQL only lets users create extensions through this function.
                managed = conn.execute("SELECT to_regprocedure('create_extension(text)')").fetchone()
                if managed is not None and managed[0] is not None:
                    conn.execute("SELECT create_extension('vector')")
                else:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            fresh = conn.execute("SELECT to_regclass('images')").fetchone() == (None,)
            conn.execute(SCHEMA)
            if citus:
                if fresh:
                    conn.execute("SELECT create_reference_table('embedding_models')")
                    conn.execute("SELECT create_distributed_table('images', 'id')")
                    conn.execute(
                        "SELECT create_distributed_table('image_vectors', 'image_id', colocate_with => 'images')"
                    )
            else:
                conn.execute(SINGLE_NODE_SCHEMA)
        return citus

    def ensure_model(self, model_id: str, dimension: int) -> Model:
        """Register a model (active if the collection has none yet) and its HNSW index; idempotent."""
        known = self._models.get(model_id)
        if known is not None and known.state == "active":
            return known
        with translate_errors("registering the embedding model"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            row = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE model_id = %s", (model_id,)
            ).fetchone()
            if row is None:
                has_active = conn.execute("SELECT 1 FROM embedding_models WHERE state = 'active'").fetchone()
                state = "building" if has_active else "active"
                conn.execute(
                    "INSERT INTO embedding_models (model_id, dimension, state, activated_at) "
                    "VALUES (%s, %s, %s, CASE WHEN %s = 'active' THEN now() END)",
                    (model_id, dimension, state, state),
                )
                row = (model_id, dimension, state)
                self._drop_indexes(conn, model_id, keep=_index_name(model_id, dimension))
            elif row[1] != dimension:
                raise InvalidInput(
                    f"model {model_id} is registered with {row[1]} dimensions but the provider returns {dimension}"
                )
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {name} ON image_vectors USING hnsw "
                    "((embedding::vector({dim})) vector_cosine_ops) WITH (m = {m}, ef_construction = {efc}) "
                    "WHERE model_id = {model}"
                ).format(
                    name=sql.Identifier(_index_name(model_id, dimension)),
                    dim=sql.Literal(int(dimension)),
                    m=sql.Literal(int(self.hnsw_m)),
                    efc=sql.Literal(int(self.hnsw_ef_construction)),
                    model=sql.Literal(model_id),
                )
            )
        model = Model(*row)
        self._models[model_id] = model
        return model

    @staticmethod
    def _drop_indexes(conn: psycopg.Connection[Any], model_id: str, keep: str | None = None) -> None:
        """Drop the model's HNSW indexes (all, or all but ``keep``): leftovers of an earlier registration."""
        rows = conn.execute(
            """SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
               WHERE x.indrelid = 'image_vectors'::regclass AND c.relname LIKE 'image\\_vectors\\_hnsw\\_%%'
                 AND pg_get_expr(x.indpred, x.indrelid) = %s""",
            (f"(model_id = {sql.quote(model_id)}::text)",),
        ).fetchall()
        for (name,) in rows:
            if name != keep:
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))

    def drop_model(self, model_id: str) -> int:
        """Remove a model, its vectors and its index; returns how many vectors went."""
        with translate_errors("dropping a model"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            deleted = conn.execute("DELETE FROM image_vectors WHERE model_id = %s", (model_id,)).rowcount
            conn.execute("DELETE FROM embedding_models WHERE model_id = %s", (model_id,))
            self._drop_indexes(conn, model_id)
        self._models.pop(model_id, None)
        return deleted

    def active_model(self) -> Model | None:
        with translate_errors("reading the active model"), self.pool.connection() as conn:
            row = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE state = 'active'"
            ).fetchone()
        return Model(*row) if row else None

    def target_models(self) -> list[Model]:
        """Models ingestion writes: the active one first, then any being built by a re-embedding."""
        with translate_errors("reading the embedding models"), self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE state IN ('active', 'building') "
                "ORDER BY state = 'active' DESC, model_id"
            ).fetchall()
        return [Model(*r) for r in rows]

    def index_state(self, container: str, model_ids: Sequence[str]) -> dict[str, IndexState]:
        """Per blob name: what is stored, to tell which blobs changed since they were indexed."""
        with translate_errors("listing indexed images"), self.pool.connection() as conn:
            rows = conn.execute(
                """SELECT i.name, i.etag, i.sha256, i.status,
                          coalesce(array_agg(v.model_id) FILTER (WHERE v.model_id = ANY(%s)), '{}')
                   FROM images i LEFT JOIN image_vectors v ON v.image_id = i.id AND v.sha256 = i.sha256
                   WHERE i.container = %s GROUP BY i.id, i.name, i.etag, i.sha256, i.status""",
                (list(model_ids), container),
            ).fetchall()
        return {
            r[0]: IndexState(etag=r[1], sha256=bytes(r[2]) if r[2] is not None else None, status=r[3], models=set(r[4]))
            for r in rows
        }

    def is_citus(self) -> bool:
        if self._citus is None:
            with translate_errors("inspecting the database"), self.pool.connection() as conn:
                self._citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None
        return self._citus

    # --- writes -----------------------------------------------------------------------------------
    @contextmanager
    def locked(self, container: str, name: str) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding the blob's advisory lock: concurrent deliveries of one blob take turns."""
        with translate_errors(f"indexing {name}"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (image_id(container, name),))
            yield conn

    @staticmethod
    def current(conn: psycopg.Connection[Any], container: str, name: str) -> StoredImage | None:
        return _fetch_image(conn, image_id(container, name))

    @staticmethod
    def vector_models(conn: psycopg.Connection[Any], container: str, name: str, sha256: bytes) -> set[str]:
        """Models that already hold a vector of exactly these bytes for this blob."""
        rows = conn.execute(
            "SELECT model_id FROM image_vectors WHERE image_id = %s AND sha256 = %s",
            (image_id(container, name), sha256),
        ).fetchall()
        return {r[0] for r in rows}

    @staticmethod
    def save_indexed(conn: psycopg.Connection[Any], record: ImageRecord, vectors: dict[str, Vector]) -> int:
        """Upsert the image as indexed with its vectors (one per model); vectors of old bytes go."""
        iid = image_id(record.container, record.name)
        conn.execute(
            """
            INSERT INTO images (id, container, name, status, sha256, content_type, width, height, byte_size,
                                etag, last_modified, metadata, failure_code, failure_reason, failure_count, failed_at)
            VALUES (%s, %s, %s, 'indexed', %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, 0, NULL)
            ON CONFLICT (id) DO UPDATE SET
                status = 'indexed', sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,
                width = EXCLUDED.width, height = EXCLUDED.height, byte_size = EXCLUDED.byte_size,
                etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, metadata = EXCLUDED.metadata,
                failure_code = NULL, failure_reason = NULL, failure_count = 0, failed_at = NULL,
                updated_at = now()
            """,
            (
                iid,
                record.container,
                record.name,
                record.sha256,
                record.content_type,
                record.width,
                record.height,
                record.byte_size,
                record.etag,
                record.last_modified,
                json.dumps(record.metadata),
            ),
        )
        conn.execute("DELETE FROM image_vectors WHERE image_id = %s AND sha256 <> %s", (iid, record.sha256))
        for model_id, vector in vectors.items():
            conn.execute(
                """
                INSERT INTO image_vectors (image_id, model_id, sha256, embedding) VALUES (%s, %s, %s, %s)
                ON CONFLICT (image_id, model_id) DO UPDATE
                    SET sha256 = EXCLUDED.sha256, embedding = EXCLUDED.embedding, created_at = now()
                """,
                (iid, model_id, record.sha256, PgVector(np.asarray(vector, dtype=np.float32))),
            )
        return iid

    @staticmethod
    def save_failure(
        conn: psycopg.Connection[Any],
        container: str,
        name: str,
        code: str,
        reason: str,
        *,
        sha256: bytes | None = None,
        byte_size: int | None = None,
        etag: str | None = None,
        last_modified: datetime | None = None,
    ) -> int:
        """Record a permanent failure (its vectors go: they described bytes that are no longer there)."""
        iid = image_id(container, name)
        conn.execute(
            """
            INSERT INTO images (id, container, name, status, sha256, byte_size, etag, last_modified,
                                failure_code, failure_reason, failure_count, failed_at)
            VALUES (%s, %s, %s, 'failed', %s, %s, %s, %s, %s, %s, 1, now())
            ON CONFLICT (id) DO UPDATE SET
                status = 'failed', sha256 = EXCLUDED.sha256, byte_size = EXCLUDED.byte_size,
                etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified,
                content_type = NULL, width = NULL, height = NULL,
                failure_code = EXCLUDED.failure_code, failure_reason = EXCLUDED.failure_reason,
                failure_count = images.failure_count + 1, failed_at = now(), updated_at = now()
            """,
            (iid, container, name, sha256, byte_size, etag, last_modified, code, reason[:2000]),
        )
        conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (iid,))
        return iid

    def delete_image(self, container: str, name: str) -> bool:
        """Remove the blob's row and vectors; True when there was one."""
        iid = image_id(container, name)
        with self.locked(container, name) as conn:
            conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (iid,))
            cur = conn.execute("DELETE FROM images WHERE id = %s", (iid,))
            return cur.rowcount > 0

    # --- reads ------------------------------------------------------------------------------------
    def get_image(self, iid: int) -> StoredImage | None:
        with translate_errors("reading an image"), self.pool.connection() as conn:
            return _fetch_image(conn, iid)

    def get_vector(self, iid: int, model_id: str) -> Vector | None:
        with translate_errors("reading a vector"), self.pool.connection() as conn:
            row = conn.execute(
                "SELECT embedding FROM image_vectors WHERE image_id = %s AND model_id = %s", (iid, model_id)
            ).fetchone()
        return None if row is None else np.asarray(row[0].to_numpy(), dtype=np.float32)

    def nearest(
        self, model: Model, vector: Vector, k: int, *, exclude_id: int | None = None, ef_search: int | None = None
    ) -> list[Hit]:
        """The k images nearest to ``vector`` under ``model``, by cosine distance then id."""
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (model.dimension,):
            raise InvalidInput(
                f"query vector has {query.size} dimensions; model {model.model_id} has {model.dimension}"
            )
        ef = max(int(ef_search or self.ef_search), k)
        stmt = sql.SQL(
            """
            SELECT i.id, i.name, v.embedding::vector({dim}) <=> %(q)s::vector({dim}) AS distance,
                   i.content_type, i.width, i.height, i.created_at
            FROM image_vectors v JOIN images i ON i.id = v.image_id
            WHERE v.model_id = %(model)s AND i.status = 'indexed'
              AND (%(exclude)s::bigint IS NULL OR i.id <> %(exclude)s)
            ORDER BY v.embedding::vector({dim}) <=> %(q)s::vector({dim}), i.id
            LIMIT %(k)s
            """
        ).format(dim=sql.Literal(model.dimension))
        with translate_errors("searching"), self.pool.connection() as conn, conn.transaction():
            self._set_local(conn, "hnsw.ef_search", ef)
            rows = conn.execute(
                stmt, {"q": PgVector(query), "model": model.model_id, "exclude": exclude_id, "k": k}
            ).fetchall()
        return [Hit(*row) for row in rows]

    def _set_local(self, conn: psycopg.Connection[Any], name: str, value: int | str) -> None:
        if self.is_citus():
            # Without this, SET LOCAL stays on the coordinator and the shards search with defaults.
            conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value)))

    def explain_nearest(self, model: Model, vector: Vector, k: int) -> str:
        """The query plan of :meth:`nearest` (used by tests and operators to see the index at work)."""
        stmt = sql.SQL(
            "EXPLAIN SELECT v.image_id FROM image_vectors v WHERE v.model_id = %(model)s "
            "ORDER BY v.embedding::vector({dim}) <=> %(q)s::vector({dim}) LIMIT %(k)s"
        ).format(dim=sql.Literal(model.dimension))
        with self.pool.connection() as conn:
            rows = conn.execute(
                stmt, {"q": PgVector(np.asarray(vector, dtype=np.float32)), "model": model.model_id, "k": k}
            )
            return "\n".join(r[0] for r in rows)

    def count(self, status: str | None = None) -> int:
        with translate_errors("counting images"), self.pool.connection() as conn:
            if status is None:
                row = conn.execute("SELECT count(*) FROM images").fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM images WHERE status = %s", (status,)).fetchone()
        return int(row[0]) if row else 0

    def stats(self, recent_failures: int = 20) -> dict[str, Any]:
        """Counts by status and by model, and the most recent recorded failures."""
        with translate_errors("reading statistics"), self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            by_status = cur.execute(
                "SELECT status, count(*) AS n FROM images GROUP BY status ORDER BY status"
            ).fetchall()
            by_model = cur.execute(
                "SELECT m.model_id, m.state, m.dimension, count(v.image_id) AS n FROM embedding_models m "
                "LEFT JOIN image_vectors v ON v.model_id = m.model_id GROUP BY m.model_id, m.state, m.dimension "
                "ORDER BY m.model_id"
            ).fetchall()
            failures = cur.execute(
                "SELECT name, failure_code, failure_reason, failure_count, failed_at FROM images "
                "WHERE status = 'failed' ORDER BY failed_at DESC, name LIMIT %s",
                (recent_failures,),
            ).fetchall()
        return {
            "by_status": {r["status"]: r["n"] for r in by_status},
            "by_model": by_model,
            "failures": failures,
        }


def _fetch_image(conn: psycopg.Connection[Any], iid: int) -> StoredImage | None:
    row = conn.execute(
        """SELECT id, container, name, status, sha256, content_type, width, height, byte_size, etag,
                  last_modified, metadata, failure_code, failure_reason, failure_count, created_at, updated_at
           FROM images WHERE id = %s""",
        (iid,),
    ).fetchone()
    if row is None:
        return None
    values = list(row)
    if values[4] is not None:
        values[4] = bytes(values[4])
    return StoredImage(*values)


def ids(hits: Sequence[Hit]) -> list[int]:
    return [h.id for h in hits]
