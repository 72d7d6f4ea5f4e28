"""The catalogue of one blob: its row in ``images`` and its vectors, read and written as ingestion,
deletes and reconcile need them.

Every write is conditional on not going backwards (a newer Last-Modified is never replaced by an
older one), and every statement runs on Citus too: times come in as parameters, never as ``now()`` in
``ON CONFLICT ... DO UPDATE``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector as PgVector
from psycopg import sql
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
class SeenVersion:
    """The version of a blob a delivery saw: what a re-upload of the same bytes changes."""

    etag: str | None
    last_modified: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)

    def differs_from(self, stored: StoredImage) -> bool:
        return (self.etag, self.last_modified, self.metadata) != (stored.etag, stored.last_modified, stored.metadata)


@dataclass(frozen=True)
class IndexState:
    """The stored state of one blob, as reconcile compares it with the container."""

    etag: str | None
    sha256: bytes | None
    status: str
    models: set[str]


@dataclass(frozen=True)
class Check:
    """What the short first transaction of an ingestion found.

    ``state``: ``unchanged`` (these bytes are indexed under every wanted model), ``failed`` (these bytes
    failed permanently before), ``claimed`` (this delivery must embed; it holds the claim), ``busy``
    (another delivery holds an unexpired claim on the same bytes: wait and check again)."""

    state: str
    current: StoredImage | None
    have: frozenset[str] = frozenset()


# The version guard of every write of a blob's row: never replace what a newer Last-Modified wrote.
# (Storage's Last-Modified has one-second resolution; within one second ingestion asks Storage which
# version is current before and after writing, see shared/ingest.py.)
_NOT_OLDER = sql.SQL(
    "images.last_modified IS NULL OR EXCLUDED.last_modified IS NULL OR images.last_modified <= EXCLUDED.last_modified"
)


class Catalogue:
    """One blob's row and vectors. Every method is one short transaction; none is held while another
    service is called. Statements name the image id, so on Citus each runs on one shard."""

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

    # --- ingestion: check and claim, then write ---------------------------------------------------
    def check_and_claim(
        self,
        container: str,
        name: str,
        sha256: bytes,
        wanted: set[str],
        *,
        owner: uuid.UUID,
        lease_seconds: float,
        seen: SeenVersion | None = None,
    ) -> Check:
        """In one short transaction: is there anything to do for these bytes, and if so, claim them.

        Already indexed (or already refused) bytes are answered at once, noting a new ETag, Last-Modified
        or metadata when the blob was re-uploaded with the same bytes (``seen``). Otherwise the delivery
        claims (image, sha256) for ``lease_seconds``: a claim is a row with an expiry, not a lock or a
        session, so a crashed claimant cannot leak it; the next delivery takes it over once it expires."""
        iid = image_id(container, name)
        now = _now()
        with translate_errors(f"indexing {name}"), self.db.pool.connection() as conn, conn.transaction():
            done = self._done(conn, iid, sha256, wanted, seen, now)
            if done.state != "claimed":
                return done
            claimed = conn.execute(
                """INSERT INTO ingest_claims (image_id, sha256, owner, expires_at) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (image_id, sha256) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
                   WHERE ingest_claims.expires_at < %s OR ingest_claims.owner = EXCLUDED.owner
                   RETURNING owner""",
                (iid, sha256, owner, now + timedelta(seconds=lease_seconds), now),
            ).fetchone()
            if claimed is None:
                return Check("busy", done.current, done.have)
            # Read again, after the claim: each statement sees what committed before it started, so a
            # delivery that wrote these bytes and released its claim while this transaction began is
            # seen now, and its work is not paid for twice.
            again = self._done(conn, iid, sha256, wanted, seen, now)
            if again.state != "claimed":
                _release(conn, iid, sha256, owner)
            return again

    def _done(
        self,
        conn: psycopg.Connection[Any],
        iid: int,
        sha256: bytes,
        wanted: set[str],
        seen: SeenVersion | None,
        now: datetime,
    ) -> Check:
        """``unchanged`` or ``failed`` when these bytes need no more work, else ``claimed`` (to claim)."""
        current = _fetch_image(conn, iid)
        have: frozenset[str] = frozenset()
        if current is not None and current.sha256 == sha256:
            if current.status == "failed":
                if seen is not None:
                    self._note_failure_again(conn, iid, current, seen, now)
                return Check("failed", current)
            rows = conn.execute(
                "SELECT model_id FROM image_vectors WHERE image_id = %s AND sha256 = %s", (iid, sha256)
            ).fetchall()
            have = frozenset(str(r[0]) for r in rows)
            if wanted <= have:
                if seen is not None and seen.differs_from(current):
                    conn.execute(
                        "UPDATE images SET etag = %s, last_modified = %s, metadata = %s, updated_at = %s "
                        "WHERE id = %s AND sha256 = %s AND (last_modified IS NULL OR %s::timestamptz IS NULL "
                        "OR last_modified <= %s::timestamptz)",
                        (
                            seen.etag,
                            seen.last_modified,
                            json.dumps(seen.metadata),
                            now,
                            iid,
                            sha256,
                            seen.last_modified,
                            seen.last_modified,
                        ),
                    )
                return Check("unchanged", current, have)
        return Check("claimed", current, have)

    @staticmethod
    def _note_failure_again(
        conn: psycopg.Connection[Any], iid: int, current: StoredImage, seen: SeenVersion, now: datetime
    ) -> None:
        conn.execute(
            "UPDATE images SET etag = %s, last_modified = %s, failure_count = failure_count + 1, failed_at = %s, "
            "updated_at = %s WHERE id = %s AND (last_modified IS NULL OR %s::timestamptz IS NULL "
            "OR last_modified <= %s::timestamptz)",
            (seen.etag, seen.last_modified, now, now, iid, seen.last_modified, seen.last_modified),
        )

    def release(self, container: str, name: str, sha256: bytes, owner: uuid.UUID) -> None:
        """Give up a claim (the embedding failed transiently): the next delivery takes over at once."""
        with translate_errors(f"releasing the claim on {name}"), self.db.pool.connection() as conn:
            _release(conn, image_id(container, name), sha256, owner)

    def save_indexed(
        self, record: ImageRecord, vectors: dict[str, Vector], *, owner: uuid.UUID | None = None
    ) -> int | None:
        """Upsert the image as indexed with its vectors (one per model; vectors of other bytes go), unless
        the stored row comes from a newer Last-Modified; releases ``owner``'s claim in the same
        transaction. The image's id when written, None when refused."""
        iid = image_id(record.container, record.name)
        now = _now()
        with translate_errors(f"indexing {record.name}"), self.db.pool.connection() as conn, conn.transaction():
            written = conn.execute(
                sql.SQL("""
                INSERT INTO images (id, container, name, status, sha256, content_type, width, height, byte_size,
                                    etag, last_modified, metadata, failure_code, failure_reason, failure_count,
                                    failed_at, created_at, updated_at)
                VALUES (%s, %s, %s, 'indexed', %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL, 0, NULL, %s, %s)
                ON CONFLICT (id) DO UPDATE SET
                    status = 'indexed', sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,
                    thumbnail = images.thumbnail AND images.sha256 = EXCLUDED.sha256,
                    width = EXCLUDED.width, height = EXCLUDED.height, byte_size = EXCLUDED.byte_size,
                    etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, metadata = EXCLUDED.metadata,
                    failure_code = NULL, failure_reason = NULL, failure_count = 0, failed_at = NULL,
                    updated_at = EXCLUDED.updated_at
                WHERE {}
                RETURNING id
                """).format(_NOT_OLDER),
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
                    now,
                    now,
                ),
            ).fetchone()
            if owner is not None:
                _release(conn, iid, record.sha256, owner)
            if written is None:
                return None
            conn.execute("DELETE FROM image_vectors WHERE image_id = %s AND sha256 <> %s", (iid, record.sha256))
            for model_id, vector in vectors.items():
                conn.execute(
                    """
                    INSERT INTO image_vectors (image_id, model_id, sha256, embedding, created_at, container, name)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (image_id, model_id) DO UPDATE
                        SET sha256 = EXCLUDED.sha256, embedding = EXCLUDED.embedding, created_at = EXCLUDED.created_at,
                            container = EXCLUDED.container, name = EXCLUDED.name
                    """,
                    (
                        iid,
                        model_id,
                        record.sha256,
                        PgVector(np.asarray(vector, dtype=np.float32)),
                        now,
                        record.container,
                        record.name,
                    ),
                )
        return iid

    def save_failure(
        self,
        container: str,
        name: str,
        code: str,
        reason: str,
        *,
        sha256: bytes | None = None,
        byte_size: int | None = None,
        etag: str | None = None,
        last_modified: datetime | None = None,
        owner: uuid.UUID | None = None,
    ) -> int | None:
        """Record a permanent failure (its vectors go: they described bytes that are no longer there),
        unless the stored row comes from a newer Last-Modified; releases ``owner``'s claim. The image's id
        when written, None when refused."""
        iid = image_id(container, name)
        now = _now()
        with (
            translate_errors(f"recording the failure of {name}"),
            self.db.pool.connection() as conn,
            conn.transaction(),
        ):
            written = conn.execute(
                sql.SQL("""
                    INSERT INTO images (id, container, name, status, sha256, byte_size, etag, last_modified,
                                        failure_code, failure_reason, failure_count, failed_at, created_at, updated_at)
                    VALUES (%s, %s, %s, 'failed', %s, %s, %s, %s, %s, %s, 1, %s, %s, %s)
                    ON CONFLICT (id) DO UPDATE SET
                        status = 'failed', sha256 = EXCLUDED.sha256, byte_size = EXCLUDED.byte_size,
                        etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified,
                        content_type = NULL, width = NULL, height = NULL, thumbnail = false,
                        failure_code = EXCLUDED.failure_code, failure_reason = EXCLUDED.failure_reason,
                        failure_count = images.failure_count + 1, failed_at = EXCLUDED.failed_at,
                        updated_at = EXCLUDED.updated_at
                    WHERE {}
                    RETURNING id
                    """).format(_NOT_OLDER),
                (iid, container, name, sha256, byte_size, etag, last_modified, code, reason[:2000], now, now, now),
            ).fetchone()
            if owner is not None and sha256 is not None:
                _release(conn, iid, sha256, owner)
            if written is None:
                return None
            conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (iid,))
        return iid

    def mark_thumbnail(self, container: str, name: str, sha256: bytes) -> None:
        """Note that a thumbnail of exactly these bytes is stored."""
        with translate_errors("noting a thumbnail"), self.db.pool.connection() as conn:
            conn.execute(
                "UPDATE images SET thumbnail = true WHERE id = %s AND sha256 = %s", (image_id(container, name), sha256)
            )

    # --- deletes ---------------------------------------------------------------------------------
    def delete_image(self, container: str, name: str, *, written_before: datetime | None = None) -> bool:
        """Remove the blob's row and vectors; True when there was one. With ``written_before`` only a row
        last written before then goes: a delete decided on an observation (Storage said 404 at that
        time) never removes a row that a newer upload wrote afterwards."""
        iid = image_id(container, name)
        with translate_errors(f"removing {name}"), self.db.pool.connection() as conn, conn.transaction():
            if written_before is None:
                cur = conn.execute("DELETE FROM images WHERE id = %s", (iid,))
            else:
                cur = conn.execute("DELETE FROM images WHERE id = %s AND updated_at < %s", (iid, written_before))
            # The foreign key cascades; stated anyway for a database where the key is missing.
            if cur.rowcount > 0:
                conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (iid,))
            return cur.rowcount > 0

    def delete_version(self, container: str, name: str, etag: str | None) -> bool:
        """Remove the blob's row only if it still holds the version ``etag`` (which Storage no longer has)."""
        iid = image_id(container, name)
        with translate_errors(f"removing {name}"), self.db.pool.connection() as conn, conn.transaction():
            cur = conn.execute("DELETE FROM images WHERE id = %s AND etag IS NOT DISTINCT FROM %s", (iid, etag))
            if cur.rowcount > 0:
                conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (iid,))
            return cur.rowcount > 0

    # --- reads -----------------------------------------------------------------------------------
    def current(self, container: str, name: str) -> StoredImage | None:
        with translate_errors("reading an image"), self.db.pool.connection() as conn:
            return _fetch_image(conn, image_id(container, name))

    # Searches read these: through the search pool, retried once on a connection the server dropped.
    def get_image(self, iid: int) -> StoredImage | None:
        with translate_errors("reading an image"):
            return self.db.read(lambda conn: _fetch_image(conn, iid))

    def get_vector(self, iid: int, model_id: str) -> Vector | None:
        def vector(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute(
                "SELECT embedding FROM image_vectors WHERE image_id = %s AND model_id = %s", (iid, model_id)
            ).fetchone()

        with translate_errors("reading a vector"):
            row = self.db.read(vector)
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
            # Counted per model first, then joined to the (Citus reference) registry table.
            by_model = cur.execute(
                "SELECT m.model_id, m.state, m.dimension, coalesce(c.n, 0) AS n FROM embedding_models m "
                "LEFT JOIN (SELECT model_id, count(*) AS n FROM image_vectors GROUP BY model_id) AS c "
                "ON c.model_id = m.model_id ORDER BY m.model_id"
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


def _release(conn: psycopg.Connection[Any], iid: int, sha256: bytes, owner: uuid.UUID) -> None:
    conn.execute("DELETE FROM ingest_claims WHERE image_id = %s AND sha256 = %s AND owner = %s", (iid, sha256, owner))


def _now() -> datetime:
    return datetime.now(UTC)


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
