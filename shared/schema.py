"""The database schema: tables, indexes, and the HNSW index of each embedding model (all the DDL).

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
import re
from typing import Any

import psycopg
from psycopg import sql

from .db import translate_errors

# Any constant works; it only has to be the same in every worker.
SCHEMA_LOCK = 7_246_113_001

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


def index_name(model_id: str, dimension: int) -> str:
    # The dimension is part of the name: an index left behind by a dropped model of the same name
    # but another size must never be mistaken for this one.
    slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:30]
    digest = hashlib.sha256(f"{model_id}/{dimension}".encode()).hexdigest()[:8]
    return f"image_vectors_hnsw_{slug}_{digest}"


def create_schema(conn: psycopg.Connection[Any]) -> bool:
    """Create the extension, tables and indexes if missing; safe to run again, and concurrently.

    Returns True when the database is a Citus cluster (the tables are then distributed).
    """
    with translate_errors("creating the schema"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
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
                conn.execute("SELECT create_distributed_table('image_vectors', 'image_id', colocate_with => 'images')")
        else:
            conn.execute(SINGLE_NODE_SCHEMA)
    return citus


def create_model_index(
    conn: psycopg.Connection[Any], model_id: str, dimension: int, m: int, ef_construction: int
) -> None:
    """The model's partial HNSW index, if missing."""
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON image_vectors USING hnsw "
            "((embedding::vector({dim})) vector_cosine_ops) WITH (m = {m}, ef_construction = {efc}) "
            "WHERE model_id = {model}"
        ).format(
            name=sql.Identifier(index_name(model_id, dimension)),
            dim=sql.Literal(int(dimension)),
            m=sql.Literal(int(m)),
            efc=sql.Literal(int(ef_construction)),
            model=sql.Literal(model_id),
        )
    )


def drop_model_indexes(conn: psycopg.Connection[Any], model_id: str, keep: str | None = None) -> None:
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
