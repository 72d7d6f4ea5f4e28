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
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector import Vector as PgVector
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
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


UNFILTERED_COUNT_SECONDS = 30.0


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
class ModelStatus:
    """A registered model, the settings that identify it, and how many indexed images it covers."""

    model: Model
    config: dict[str, str]
    covered: int
    total: int

    @property
    def missing(self) -> int:
        return max(0, self.total - self.covered)


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
    byte_size: int | None = None
    container: str | None = None
    thumbnail: bool = False

    @property
    def score(self) -> float:
        return 1.0 - self.distance


# --- search: filters, keyset position, strategies -----------------------------------------------
SEARCH_STRATEGIES: Final = ("auto", "exact", "index")
# At or below this many matching rows an exact scan (every matching vector, sorted) is both exact
# and cheap (a few ms for 2,000 x 1024-d); above it the HNSW index answers.
EXACT_SCAN_MAX_ROWS: Final = 2_000
# pgvector's own default, stated here because the fallback below depends on it: an iterative scan
# that visits this many tuples without finding enough matches stops, and the exact scan takes over.
HNSW_MAX_SCAN_TUPLES: Final = 20_000
# pgvector < 0.8 has no iterative scans: a filtered query can only widen the candidate list, to at
# most 1000 (hnsw.ef_search's upper bound).
HNSW_MAX_EF_SEARCH: Final = 1_000
# relaxed_order returns rows slightly out of order: the index path fetches this many more than it
# returns (at least as many again as asked), so the re-sort can put late arrivals in their place.
INDEX_SLACK_ROWS: Final = 20


@dataclass(frozen=True)
class SearchFilters:
    """Which images a search may return, besides being indexed under the query's model.

    ``uploaded_after`` (inclusive) and ``uploaded_before`` (exclusive) apply to the blob's
    Last-Modified time, or to the time the row was created when Storage reported none.
    """

    container: str | None = None
    prefix: str | None = None
    content_types: tuple[str, ...] = ()
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    exclude_id: int | None = None


@dataclass(frozen=True)
class After:
    """Keyset position: results strictly after (distance, id) in the order (distance, id)."""

    distance: float
    id: int


@dataclass(frozen=True)
class Nearest:
    """The hits of one search, and how they were found (``exact``, ``index`` or ``index+exact``)."""

    hits: list[Hit]
    strategy: str


# Rows per transaction of Store.bulk_upsert: large enough that per-transaction costs vanish, small
# enough that a batch (about 4 KB per 1024-d vector) stays a few tens of megabytes.
BULK_BATCH_ROWS: Final = 5_000


def _index_name(model_id: str, dimension: int) -> str:
    # The dimension is part of the name: an index left behind by a dropped model of the same name
    # but another size must never be mistaken for this one.
    slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:30]
    digest = hashlib.sha256(f"{model_id}/{dimension}".encode()).hexdigest()[:8]
    return f"image_vectors_hnsw_{slug}_{digest}"


class Store:
    """All reads and writes of the image collection, over one connection pool."""

    def __init__(self, pool: ConnectionPool, *, hnsw_m: int = 16, hnsw_ef_construction: int = 64, ef_search: int = 80):
        self.pool = pool
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = ef_search
        self._citus: bool | None = None
        self._unfiltered_counts: dict[tuple[str, str | None], tuple[int, float]] = {}

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

    def ensure_model(
        self, model_id: str, dimension: int, config: dict[str, str] | None = None, *, create_index: bool = True
    ) -> Model:
        """Register a model (active if the collection has none yet, else ``building``) and its HNSW index.

        Idempotent. ``config`` holds the settings that identify the model (provider, model version),
        never secrets: workers rebuild the provider of a model being built from it.
        """
        with translate_errors("registering the embedding model"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            row = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE model_id = %s", (model_id,)
            ).fetchone()
            if row is None:
                has_active = conn.execute("SELECT 1 FROM embedding_models WHERE state = 'active'").fetchone()
                state = "building" if has_active else "active"
                conn.execute(
                    "INSERT INTO embedding_models (model_id, dimension, state, config, activated_at) "
                    "VALUES (%s, %s, %s, %s, CASE WHEN %s = 'active' THEN now() END)",
                    (model_id, dimension, state, json.dumps(config or {}), state),
                )
                row = (model_id, dimension, state)
                self._drop_indexes(conn, model_id, keep=_index_name(model_id, dimension))
            elif row[1] != dimension:
                raise InvalidInput(
                    f"model {model_id} is registered with {row[1]} dimensions but the provider returns {dimension}"
                )
            elif row[2] == "retired":
                # Registered again (e.g. a re-embedding back to an earlier model): build it afresh.
                conn.execute("UPDATE embedding_models SET state = 'building' WHERE model_id = %s", (model_id,))
                row = (model_id, dimension, "building")
            if create_index:
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
        return Model(*row)

    def models(self) -> list[ModelStatus]:
        """Every registered model with its state, config and coverage of the indexed images."""
        with translate_errors("reading the embedding models"), self.pool.connection() as conn:
            return self._models_on(conn)

    @staticmethod
    def _models_on(conn: psycopg.Connection[Any]) -> list[ModelStatus]:
        total_row = conn.execute("SELECT count(*) FROM images WHERE status = 'indexed'").fetchone()
        total = int(total_row[0]) if total_row else 0
        rows = conn.execute(
            """SELECT m.model_id, m.dimension, m.state, m.config,
                      (SELECT count(*) FROM image_vectors v JOIN images i ON i.id = v.image_id
                        WHERE v.model_id = m.model_id AND i.status = 'indexed' AND v.sha256 = i.sha256)
               FROM embedding_models m ORDER BY m.state = 'active' DESC, m.created_at, m.model_id"""
        ).fetchall()
        return [ModelStatus(Model(r[0], r[1], r[2]), dict(r[3] or {}), int(r[4]), total) for r in rows]

    def model_status(self, model_id: str) -> ModelStatus | None:
        return next((m for m in self.models() if m.model.model_id == model_id), None)

    def activate(self, model_id: str, *, force: bool = False) -> ModelStatus:
        """Make ``model_id`` the one queries use, in one transaction; refuses while coverage is incomplete."""
        with translate_errors("activating a model"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            status = next((m for m in self._models_on(conn) if m.model.model_id == model_id), None)
            if status is None:
                raise InvalidInput(f"model {model_id} is not registered; run `reembed` first")
            if status.missing and not force:
                raise InvalidInput(
                    f"model {model_id} covers {status.covered} of {status.total} indexed images; "
                    "run `reembed` again to finish (or activate with --force to accept the gap)"
                )
            conn.execute(
                "UPDATE embedding_models SET state = 'retired' WHERE state = 'active' AND model_id <> %s", (model_id,)
            )
            conn.execute(
                "UPDATE embedding_models SET state = 'active', activated_at = now() WHERE model_id = %s", (model_id,)
            )
        result = self.model_status(model_id)
        assert result is not None
        return result

    def missing_vectors(self, model_id: str, *, after_id: int = -1, limit: int = 256) -> list[tuple[int, str, bytes]]:
        """Indexed images without a vector of their current bytes under ``model_id``, by id (resumable)."""
        with translate_errors("listing images to re-embed"), self.pool.connection() as conn:
            rows = conn.execute(
                """SELECT i.id, i.name, i.sha256 FROM images i
                   WHERE i.status = 'indexed' AND i.id > %s AND NOT EXISTS (
                       SELECT 1 FROM image_vectors v
                        WHERE v.image_id = i.id AND v.model_id = %s AND v.sha256 = i.sha256)
                   ORDER BY i.id LIMIT %s""",
                (after_id, model_id, limit),
            ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def add_vector(self, iid: int, model_id: str, sha256: bytes, vector: Vector) -> bool:
        """Store one model's vector for an image, only if the image still has exactly these bytes."""
        with translate_errors("storing a vector"), self.pool.connection() as conn:
            cur = conn.execute(
                """INSERT INTO image_vectors (image_id, model_id, sha256, embedding)
                   SELECT id, %s, sha256, %s FROM images WHERE id = %s AND sha256 = %s AND status = 'indexed'
                   ON CONFLICT (image_id, model_id) DO UPDATE
                       SET sha256 = EXCLUDED.sha256, embedding = EXCLUDED.embedding, created_at = now()""",
                (model_id, PgVector(np.asarray(vector, dtype=np.float32)), iid, sha256),
            )
            return cur.rowcount > 0

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
        """Remove a model that is not active, its vectors and its index; returns how many vectors went."""
        with translate_errors("dropping a model"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            state = conn.execute("SELECT state FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
            if state is None:
                raise InvalidInput(f"model {model_id} is not registered")
            if state[0] == "active":
                raise InvalidInput(f"model {model_id} is the active model: activate another one before dropping it")
            deleted = conn.execute("DELETE FROM image_vectors WHERE model_id = %s", (model_id,)).rowcount
            conn.execute("DELETE FROM embedding_models WHERE model_id = %s", (model_id,))
            self._drop_indexes(conn, model_id)
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
                thumbnail = images.thumbnail AND images.sha256 = EXCLUDED.sha256,
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
                content_type = NULL, width = NULL, height = NULL, thumbnail = false,
                failure_code = EXCLUDED.failure_code, failure_reason = EXCLUDED.failure_reason,
                failure_count = images.failure_count + 1, failed_at = now(), updated_at = now()
            """,
            (iid, container, name, sha256, byte_size, etag, last_modified, code, reason[:2000]),
        )
        conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (iid,))
        return iid

    # --- bulk writes ------------------------------------------------------------------------------
    def bulk_upsert(
        self,
        records: Sequence[ImageRecord],
        vectors: Sequence[Vector] | Vector,
        model_id: str,
        *,
        batch_size: int = BULK_BATCH_ROWS,
    ) -> int:
        """Upsert many images as indexed, each with its vector of ``model_id`` (row i of ``vectors``):
        what :meth:`save_indexed` does for one image, at COPY speed, for imports and re-imports.

        Each batch is one transaction. When none of its blobs is stored yet (a fresh import) both
        tables get a plain binary COPY. Otherwise the catalogue rows go by binary COPY into a temporary
        table and from there by INSERT ... ON CONFLICT into ``images`` (which locks them, as ingestion
        does); the batch's vectors of this model (and any of other bytes) are deleted and the new ones
        copied straight into ``image_vectors``: an upsert's end state without writing 4 KB per vector
        twice. A later record of the same blob wins. Returns the number of images written.

        Load before the model's HNSW index exists when you can (``ensure_model(..., create_index=False)``,
        then ``ensure_model``): building the index afterwards is much faster than inserting into it.
        """
        matrix = np.asarray(vectors, dtype=np.float32)
        if len(records) == 0:
            return 0
        if matrix.ndim != 2 or matrix.shape[0] != len(records):
            raise InvalidInput(f"give one vector per record: {len(records)} records, vectors of shape {matrix.shape}")
        if any(len(r.sha256) != 32 for r in records):
            raise InvalidInput("every record needs the 32-byte sha256 digest of its bytes")
        with translate_errors("bulk loading images"), self.pool.connection() as conn:
            row = conn.execute("SELECT dimension FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
        if row is None:
            raise InvalidInput(f"model {model_id} is not registered")
        if matrix.shape[1] != row[0]:
            raise InvalidInput(f"model {model_id} has {row[0]} dimensions; the vectors have {matrix.shape[1]}")
        written = 0
        step = max(1, batch_size)
        for start in range(0, len(records), step):
            stop = start + step
            # Only the last commit waits for the WAL to reach disk, and that wait covers every batch
            # before it (the WAL is written in order): durable on return, without a flush per batch.
            last = stop >= len(records)
            written += self._bulk_batch(records[start:stop], matrix[start:stop], model_id, durable=last)
        return written

    def _bulk_batch(
        self, records: Sequence[ImageRecord], matrix: npt.NDArray[np.float32], model_id: str, *, durable: bool
    ) -> int:
        ids = [image_id(r.container, r.name) for r in records]
        keep = sorted({iid: n for n, iid in enumerate(ids)}.values())  # the last record of each blob
        rows = [records[n] for n in keep]
        kept = [ids[n] for n in keep]
        vectors = matrix[keep]
        with translate_errors("bulk loading images"), self.pool.connection() as conn:
            try:
                with conn.transaction():
                    if not durable:
                        conn.execute("SET LOCAL synchronous_commit = off")
                    # A fresh import (none of these blobs stored yet) needs no upsert: COPY straight in.
                    stored = conn.execute(
                        "SELECT 1 FROM unnest(%s::bigint[]) AS b (id) JOIN images i ON i.id = b.id LIMIT 1", (kept,)
                    )
                    if stored.fetchone() is None:
                        _copy_images(conn, "images", kept, rows)
                        _copy_vectors(conn, kept, model_id, rows, vectors)
                        return len(kept)
            except psycopg.errors.UniqueViolation:
                pass  # some were stored meanwhile (a concurrent ingestion): upsert them
            with conn.transaction():
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute(_BULK_TEMP_TABLE)
                _copy_images(conn, "bulk_images", kept, rows)
                conn.execute(
                    """
                    INSERT INTO images (id, container, name, status, sha256, content_type, width, height, byte_size,
                                        etag, last_modified, metadata, failure_code, failure_reason, failure_count,
                                        failed_at)
                    SELECT id, container, name, status, sha256, content_type, width, height, byte_size, etag,
                           last_modified, metadata, NULL, NULL, 0, NULL
                    FROM bulk_images
                    ON CONFLICT (id) DO UPDATE SET
                        status = 'indexed', sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,
                        thumbnail = images.thumbnail AND images.sha256 = EXCLUDED.sha256,
                        width = EXCLUDED.width, height = EXCLUDED.height, byte_size = EXCLUDED.byte_size,
                        etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, metadata = EXCLUDED.metadata,
                        failure_code = NULL, failure_reason = NULL, failure_count = 0, failed_at = NULL,
                        updated_at = now()
                    """
                )
                # The rows the COPY replaces, and (as in save_indexed) vectors of other bytes, of any model.
                conn.execute(
                    "DELETE FROM image_vectors v USING bulk_images b "
                    "WHERE v.image_id = b.id AND (v.model_id = %s OR v.sha256 <> b.sha256)",
                    (model_id,),
                )
                _copy_vectors(conn, kept, model_id, rows, vectors)
        return len(kept)

    def mark_thumbnail(self, container: str, name: str, sha256: bytes) -> None:
        """Note that a thumbnail of exactly these bytes is stored."""
        with translate_errors("noting a thumbnail"), self.pool.connection() as conn:
            conn.execute(
                "UPDATE images SET thumbnail = true WHERE id = %s AND sha256 = %s", (image_id(container, name), sha256)
            )

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
        self,
        model: Model,
        vector: Vector,
        k: int,
        *,
        exclude_id: int | None = None,
        ef_search: int | None = None,
        filters: SearchFilters | None = None,
        after: After | None = None,
        max_distance: float | None = None,
        strategy: str = "auto",
    ) -> list[Hit]:
        """The k images nearest to ``vector`` under ``model``, by cosine distance then id."""
        if exclude_id is not None:
            filters = replace(filters or SearchFilters(), exclude_id=exclude_id)
        return self.search(
            model,
            vector,
            k,
            filters=filters,
            after=after,
            max_distance=max_distance,
            strategy=strategy,
            ef_search=ef_search,
        ).hits

    # Filtered search under HNSW. An HNSW scan applies WHERE clauses to the candidates it found, so
    # with a selective filter it returns fewer than k rows although more match. The strategy:
    # 1. Count the matching rows, stopping at EXACT_SCAN_MAX_ROWS + 1. At or below the threshold an
    #    exact scan is cheap and exact: the filtered rows in a MATERIALIZED CTE (so the planner cannot
    #    hand the ORDER BY to the index), sorted by (distance, id).
    # 2. Above it, the index with pgvector 0.8's iterative scan in relaxed_order: the scan continues
    #    past ef_search until enough rows pass the filter (or HNSW_MAX_SCAN_TUPLES were visited).
    #    relaxed_order because it finds more of the true neighbours under a filter than strict_order
    #    (measured here: recall@10 0.89 against 0.77 with a 1 % filter); its slightly unordered rows are
    #    fetched with some slack into a MATERIALIZED CTE and re-sorted by (distance, id), as the
    #    pgvector README recommends. pgvector < 0.8 (Cosmos DB for PostgreSQL has 0.7) has no
    #    iterative scans: a filtered query widens ef_search to its maximum instead.
    # 3. The index path cannot always tell "no more rows match" from "the scan gave up", or see the
    #    end of a run of equal distances cut by its LIMIT. When it returns fewer rows than asked, or
    #    the last row it would return ties with the last row it fetched, the exact scan answers
    #    instead. So a filtered query returns k rows whenever at least k rows match, whatever the
    #    pgvector version, and a keyset cursor (distance, id) never skips a tied row at a page edge.
    # The planner may still choose a non-index plan in step 2 (pgvector 0.8 estimates filter
    # selectivity); such a plan is exact, so correctness never depends on the planner's choice.
    exact_scan_max_rows: int = EXACT_SCAN_MAX_ROWS
    max_scan_tuples: int = HNSW_MAX_SCAN_TUPLES
    _pgvector_version: tuple[int, ...] | None = None

    def search(
        self,
        model: Model,
        vector: Vector,
        limit: int,
        *,
        filters: SearchFilters | None = None,
        after: After | None = None,
        max_distance: float | None = None,
        strategy: str = "auto",
        ef_search: int | None = None,
    ) -> Nearest:
        """The first ``limit`` matching images after ``after`` in (distance, id) order, no farther than
        ``max_distance``. ``strategy``: ``auto``, or ``exact`` / ``index`` to force one (tests, benchmarks)."""
        query = self._query_vector(model, vector)
        filters = filters or SearchFilters()
        if strategy not in SEARCH_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(SEARCH_STRATEGIES)}, not {strategy!r}")
        if limit < 1:
            return Nearest([], "exact")
        chosen = strategy
        if strategy == "auto":
            matching = self._matching_estimate(model, filters)
            chosen = "exact" if matching <= self.exact_scan_max_rows else "index"
        if chosen == "index":
            fetch = limit + max(limit, INDEX_SLACK_ROWS)
            rows = self._index_scan(model, query, limit, fetch, filters, after, ef_search, force=strategy == "index")
            if len(rows) >= limit and not (len(rows) == fetch and rows[limit - 1].distance >= rows[-1].distance):
                return Nearest([h for h in rows[:limit] if max_distance is None or h.distance <= max_distance], "index")
            log.info("index scan found %d rows for %d asked; answering with an exact scan", len(rows), limit)
            chosen = "index+exact"
        return Nearest(self._exact_scan(model, query, limit, filters, after, max_distance), chosen)

    def _matching_estimate(self, model: Model, filters: SearchFilters) -> int:
        """The capped count that picks the strategy. Without filters it only changes as the collection
        grows or shrinks, so it is remembered for ``UNFILTERED_COUNT_SECONDS``: either choice is correct
        (the index path falls back to an exact scan when it finds too few rows), a stale one only slower,
        and the count would otherwise cost about as much as the search itself."""
        stop_at = self.exact_scan_max_rows + 1
        if _is_filtered(filters):
            return self.count_matching(model, filters, stop_at=stop_at)
        key = (model.model_id, filters.container)
        now = time.monotonic()
        known = self._unfiltered_counts.get(key)
        if known is not None and now - known[1] < UNFILTERED_COUNT_SECONDS:
            return known[0]
        count = self.count_matching(model, filters, stop_at=stop_at)
        self._unfiltered_counts[key] = (count, now)
        return count

    def count_matching(self, model: Model, filters: SearchFilters, *, stop_at: int) -> int:
        """How many searchable images match ``filters``, counting no further than ``stop_at``."""
        where, params = _search_conditions(model, filters)
        stmt = sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM image_vectors v JOIN images i ON i.id = v.image_id "
            "WHERE {where} LIMIT %(stop_at)s) AS matching"
        ).format(where=where)
        with translate_errors("searching"), self.pool.connection() as conn:
            row = conn.execute(stmt, {**params, "stop_at": stop_at}).fetchone()
        return int(row[0]) if row else 0

    def pgvector_version(self) -> tuple[int, ...]:
        """The installed pgvector version, e.g. (0, 8, 2)."""
        if self._pgvector_version is None:
            with translate_errors("inspecting the database"), self.pool.connection() as conn:
                row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            text = str(row[0]) if row else "0"
            self._pgvector_version = tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)
        return self._pgvector_version

    @staticmethod
    def _query_vector(model: Model, vector: Vector) -> Vector:
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (model.dimension,):
            raise InvalidInput(
                f"query vector has {query.size} dimensions; model {model.model_id} has {model.dimension}"
            )
        return query

    def _index_sql(
        self, model: Model, filters: SearchFilters, after: After | None
    ) -> tuple[sql.Composed, dict[str, Any]]:
        where, params = _search_conditions(model, filters)
        distance = sql.SQL("v.embedding::vector({dim}) <=> %(q)s::vector({dim})").format(
            dim=sql.Literal(model.dimension)
        )
        if after is not None:
            where = sql.SQL("{} AND ({}, i.id) > (%(after_distance)s::float8, %(after_id)s::bigint)").format(
                where, distance
            )
            params.update(after_distance=after.distance, after_id=after.id)
        stmt = sql.SQL(
            "WITH nearest AS MATERIALIZED ("
            " SELECT {columns}, {distance} AS distance FROM image_vectors v JOIN images i ON i.id = v.image_id"
            " WHERE {where} ORDER BY {distance} LIMIT %(fetch)s"
            ") SELECT id, name, content_type, width, height, created_at, byte_size, container, thumbnail, distance"
            " FROM nearest ORDER BY distance, id"
        ).format(columns=_HIT_COLUMNS, distance=distance, where=where)
        return stmt, params

    def _index_settings(
        self, conn: psycopg.Connection[Any], fetch: int, filters: SearchFilters, ef_search: int | None, force: bool
    ) -> None:
        ef = max(int(ef_search or self.ef_search), fetch)
        values: list[tuple[str, int | str]] = []
        if self.pgvector_version() >= (0, 8):
            values += [("hnsw.iterative_scan", "relaxed_order"), ("hnsw.max_scan_tuples", int(self.max_scan_tuples))]
        elif _is_filtered(filters):
            ef = max(ef, HNSW_MAX_EF_SEARCH)
        values.append(("hnsw.ef_search", min(ef, HNSW_MAX_EF_SEARCH)))
        if force:
            # Only a plan that reads the CTE's rows from the index in distance order avoids a second Sort.
            values.append(("enable_sort", "off"))
        if self.is_citus():
            for name, value in values:
                self._set_local(conn, name, value)  # SET LOCAL, which Citus can pass on to the shards
            return
        # One statement for all of them: on a fast query the round trips are most of the cost.
        calls = sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(str(value)))
            for name, value in values
        )
        conn.execute(sql.SQL("SELECT {}").format(calls))

    def _index_scan(
        self,
        model: Model,
        query: Vector,
        limit: int,
        fetch: int,
        filters: SearchFilters,
        after: After | None,
        ef_search: int | None,
        *,
        force: bool,
    ) -> list[Hit]:
        """Up to ``fetch`` rows from the index, sorted by (distance, id)."""
        stmt, params = self._index_sql(model, filters, after)
        with translate_errors("searching"), self.pool.connection() as conn, conn.transaction():
            self._index_settings(conn, fetch, filters, ef_search, force)
            rows = conn.execute(stmt, {**params, "q": PgVector(query), "fetch": fetch}).fetchall()
        return [_hit(row) for row in rows]

    def _exact_scan(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
    ) -> list[Hit]:
        where, params = _search_conditions(model, filters)
        outer = [sql.SQL("TRUE")]
        if after is not None:
            outer.append(sql.SQL("(distance, id) > (%(after_distance)s::float8, %(after_id)s::bigint)"))
            params.update(after_distance=after.distance, after_id=after.id)
        if max_distance is not None:
            outer.append(sql.SQL("distance <= %(max_distance)s::float8"))
            params["max_distance"] = max_distance
        # MATERIALIZED: the ORDER BY below cannot reach into the CTE, so no index scan is planned.
        stmt = sql.SQL(
            "WITH matching AS MATERIALIZED ("
            " SELECT {columns}, v.embedding::vector({dim}) <=> %(q)s::vector({dim}) AS distance"
            " FROM image_vectors v JOIN images i ON i.id = v.image_id WHERE {where}"
            ") SELECT id, name, content_type, width, height, created_at, byte_size, container, thumbnail, distance"
            " FROM matching WHERE {outer} ORDER BY distance, id LIMIT %(limit)s"
        ).format(
            columns=_HIT_COLUMNS, dim=sql.Literal(model.dimension), where=where, outer=sql.SQL(" AND ").join(outer)
        )
        with translate_errors("searching"), self.pool.connection() as conn:
            rows = conn.execute(stmt, {**params, "q": PgVector(query), "limit": limit}).fetchall()
        return [_hit(row) for row in rows]

    def _set_local(self, conn: psycopg.Connection[Any], name: str, value: int | str) -> None:
        if self.is_citus():
            # Without this, SET LOCAL stays on the coordinator and the shards search with defaults.
            conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value)))

    def explain_nearest(
        self,
        model: Model,
        vector: Vector,
        k: int,
        *,
        filters: SearchFilters | None = None,
        strategy: str | None = None,
        analyze: bool = False,
    ) -> str:
        """The query plan of :meth:`nearest` (used by tests and operators to see the index at work).

        Without ``strategy`` the plain unfiltered index query; with ``index`` the search's index path,
        under the same settings (iterative scan, forced index), ``analyze`` to run it."""
        query = self._query_vector(model, vector)
        with self.pool.connection() as conn, conn.transaction():
            if strategy is None:
                stmt: sql.Composed = sql.SQL(
                    "SELECT v.image_id FROM image_vectors v WHERE v.model_id = %(model)s "
                    "ORDER BY v.embedding::vector({dim}) <=> %(q)s::vector({dim}) LIMIT %(limit)s"
                ).format(dim=sql.Literal(model.dimension))
                params: dict[str, Any] = {"model": model.model_id}
            else:
                stmt, params = self._index_sql(model, filters or SearchFilters(), None)
                self._index_settings(conn, k, filters or SearchFilters(), None, strategy == "index")
            explain = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) " if analyze else "EXPLAIN ")
            rows = conn.execute(explain + stmt, {**params, "q": PgVector(query), "limit": k, "fetch": k})
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


# --- bulk path ------------------------------------------------------------------------------------
_BULK_TEMP_TABLE: Final = """
CREATE TEMP TABLE bulk_images (
    id bigint, container text, name text, status text, sha256 bytea, content_type text, width integer,
    height integer, byte_size bigint, etag text, last_modified timestamptz, metadata jsonb
) ON COMMIT DROP
"""
_COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header extension length
_COPY_TRAILER: Final = b"\xff\xff"


def _copy_images(conn: psycopg.Connection[Any], table: str, ids: Sequence[int], rows: Sequence[ImageRecord]) -> None:
    """Binary COPY of catalogue rows (as indexed) into ``images`` or the bulk path's temporary table."""
    stmt = sql.SQL(
        "COPY {} (id, container, name, status, sha256, content_type, width, height, byte_size, etag, "
        "last_modified, metadata) FROM STDIN (FORMAT BINARY)"
    ).format(sql.Identifier(table))
    types = ["int8", "text", "text", "text", "bytea", "text", "int4", "int4", "int8", "text", "timestamptz", "jsonb"]
    with conn.cursor().copy(stmt) as copy:
        copy.set_types(types)
        for iid, r in zip(ids, rows, strict=True):
            head = (iid, r.container, r.name, "indexed", r.sha256, r.content_type, r.width, r.height, r.byte_size)
            copy.write_row((*head, r.etag, r.last_modified, Jsonb(r.metadata)))


def _copy_vectors(
    conn: psycopg.Connection[Any],
    ids: Sequence[int],
    model_id: str,
    rows: Sequence[ImageRecord],
    matrix: npt.NDArray[np.float32],
) -> None:
    with conn.cursor().copy(
        "COPY image_vectors (image_id, model_id, sha256, embedding) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.write(
            _COPY_SIGNATURE + binary_vector_rows(ids, model_id, [r.sha256 for r in rows], matrix) + _COPY_TRAILER
        )


def binary_vector_rows(
    ids: Sequence[int], model_id: str, digests: Sequence[bytes], matrix: npt.NDArray[np.float32]
) -> bytes:
    """COPY BINARY rows (bigint, text, bytea, vector) built in one go with numpy instead of row by row,
    without the COPY header and trailer.

    Each row is: field count, then per field its length and big-endian value; pgvector's binary
    vector is int16 dimension, int16 unused, then the float4 values.
    """
    count, dim = matrix.shape
    model = model_id.encode()
    row = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("model_len", ">i4"),
            ("model", f"S{len(model)}"),
            ("sha_len", ">i4"),
            ("sha", "V32"),
            ("vec_len", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )
    rows = np.zeros(count, dtype=row)
    rows["fields"], rows["id_len"], rows["sha_len"], rows["vec_len"], rows["dim"] = 4, 8, 32, 4 + 4 * dim, dim
    rows["model_len"], rows["model"] = len(model), model
    rows["id"] = np.asarray(ids, dtype=np.int64)
    rows["sha"] = np.frombuffer(b"".join(digests), dtype="V32")
    rows["vec"] = matrix
    return rows.tobytes()


_HIT_COLUMNS: Final = sql.SQL(
    "i.id, i.name, i.content_type, i.width, i.height, i.created_at, i.byte_size, i.container, i.thumbnail"
)


def _hit(row: Sequence[Any]) -> Hit:
    iid, name, content_type, width, height, created_at, byte_size, container, thumbnail, distance = row
    return Hit(iid, name, float(distance), content_type, width, height, created_at, byte_size, container, thumbnail)


def _is_filtered(filters: SearchFilters) -> bool:
    return bool(
        filters.prefix
        or filters.content_types
        or filters.uploaded_after
        or filters.uploaded_before
        or filters.exclude_id is not None
    )


def _search_conditions(model: Model, filters: SearchFilters) -> tuple[sql.Composed, dict[str, Any]]:
    """The WHERE clause shared by every search path: searchable under ``model`` and matching ``filters``."""
    parts = [sql.SQL("v.model_id = %(model)s AND i.status = 'indexed'")]
    params: dict[str, Any] = {"model": model.model_id}
    if filters.container is not None:
        parts.append(sql.SQL("i.container = %(container)s"))
        params["container"] = filters.container
    if filters.prefix:
        # LIKE with the prefix's own wildcards escaped, so the (container, name text_pattern_ops) index applies.
        parts.append(sql.SQL("i.name LIKE %(prefix)s"))
        params["prefix"] = re.sub(r"([\\%_])", r"\\\1", filters.prefix) + "%"
    if filters.content_types:
        parts.append(sql.SQL("i.content_type = ANY(%(content_types)s)"))
        params["content_types"] = list(filters.content_types)
    if filters.uploaded_after is not None:
        parts.append(sql.SQL("COALESCE(i.last_modified, i.created_at) >= %(uploaded_after)s"))
        params["uploaded_after"] = filters.uploaded_after
    if filters.uploaded_before is not None:
        parts.append(sql.SQL("COALESCE(i.last_modified, i.created_at) < %(uploaded_before)s"))
        params["uploaded_before"] = filters.uploaded_before
    if filters.exclude_id is not None:
        parts.append(sql.SQL("i.id <> %(exclude_id)s"))
        params["exclude_id"] = filters.exclude_id
    return sql.SQL(" AND ").join(parts), params


def ids(hits: Sequence[Hit]) -> list[int]:
    return [h.id for h in hits]
