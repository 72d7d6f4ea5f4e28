"""The catalogue of one blob: its row in ``images`` and its vectors, read and written as ingestion,
deletes and reconcile need them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector as PgVector
from psycopg.rows import dict_row

from .db import Database, translate_errors
from .embeddings import Vector


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
class IndexState:
    """The stored state of one blob, as reconcile compares it with the container."""

    etag: str | None
    sha256: bytes | None
    status: str
    models: set[str]


class Catalogue:
    """One blob's row and vectors."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def index_state(self, container: str, model_ids: Sequence[str]) -> dict[str, IndexState]:
        """Per blob name: what is stored, to tell which blobs changed since they were indexed."""
        with translate_errors("listing indexed images"), self.db.pool.connection() as conn:
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

    @contextmanager
    def locked(self, container: str, name: str) -> Iterator[psycopg.Connection[Any]]:
        """A transaction holding the blob's advisory lock: concurrent deliveries of one blob take turns."""
        with translate_errors(f"indexing {name}"), self.db.pool.connection() as conn, conn.transaction():
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

    def mark_thumbnail(self, container: str, name: str, sha256: bytes) -> None:
        """Note that a thumbnail of exactly these bytes is stored."""
        with translate_errors("noting a thumbnail"), self.db.pool.connection() as conn:
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

    def get_image(self, iid: int) -> StoredImage | None:
        with translate_errors("reading an image"), self.db.pool.connection() as conn:
            return _fetch_image(conn, iid)

    def get_vector(self, iid: int, model_id: str) -> Vector | None:
        with translate_errors("reading a vector"), self.db.pool.connection() as conn:
            row = conn.execute(
                "SELECT embedding FROM image_vectors WHERE image_id = %s AND model_id = %s", (iid, model_id)
            ).fetchone()
        return None if row is None else np.asarray(row[0].to_numpy(), dtype=np.float32)

    def count(self, status: str | None = None) -> int:
        with translate_errors("counting images"), self.db.pool.connection() as conn:
            if status is None:
                row = conn.execute("SELECT count(*) FROM images").fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM images WHERE status = %s", (status,)).fetchone()
        return int(row[0]) if row else 0

    def stats(self, recent_failures: int = 20) -> dict[str, Any]:
        """Counts by status and by model, and the most recent recorded failures."""
        with translate_errors("reading statistics"), self.db.pool.connection() as conn:
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
