"""Bulk load: many images and their vectors at COPY speed (imports, re-imports, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .catalogue import ImageRecord, image_id
from .db import Database, translate_errors
from .embeddings import Vector
from .errors import InvalidInput

# Rows per transaction of BulkLoader.upsert: large enough that per-transaction costs vanish, small
# enough that a batch (about 4 KB per 1024-d vector) stays a few tens of megabytes.
BULK_BATCH_ROWS: Final = 5_000


class BulkLoader:
    """Writes many catalogue rows and vectors per transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert(
        self,
        records: Sequence[ImageRecord],
        vectors: Sequence[Vector] | Vector,
        model_id: str,
        *,
        batch_size: int = BULK_BATCH_ROWS,
    ) -> int:
        """Upsert many images as indexed, each with its vector of ``model_id`` (row i of ``vectors``):
        what :meth:`Catalogue.save_indexed` does for one image, at COPY speed, for imports and re-imports.

        Each batch is one transaction. When none of its blobs is stored yet (a fresh import) both
        tables get a plain binary COPY. Otherwise the catalogue rows go by binary COPY into a temporary
        table and from there by INSERT ... ON CONFLICT into ``images`` (which locks them, as ingestion
        does); the batch's vectors of this model (and any of other bytes) are deleted and the new ones
        copied straight into ``image_vectors``: an upsert's end state without writing 4 KB per vector
        twice. A later record of the same blob wins. Returns the number of images written.

        Load before the model's HNSW index exists when you can (``Registry.ensure_model(..., create_index=False)``,
        then ``Registry.ensure_model``): building the index afterwards is much faster than inserting into it.
        """
        matrix = np.asarray(vectors, dtype=np.float32)
        if len(records) == 0:
            return 0
        if matrix.ndim != 2 or matrix.shape[0] != len(records):
            raise InvalidInput(f"give one vector per record: {len(records)} records, vectors of shape {matrix.shape}")
        if any(len(r.sha256) != 32 for r in records):
            raise InvalidInput("every record needs the 32-byte sha256 digest of its bytes")
        with translate_errors("bulk loading images"), self.db.pool.connection() as conn:
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
        with translate_errors("bulk loading images"), self.db.pool.connection() as conn:
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
                                        failed_at, updated_at)
                    SELECT id, container, name, status, sha256, content_type, width, height, byte_size, etag,
                           last_modified, metadata, NULL, NULL, 0, NULL, %s::timestamptz
                    FROM bulk_images
                    ON CONFLICT (id) DO UPDATE SET
                        status = 'indexed', sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,
                        thumbnail = images.thumbnail AND images.sha256 = EXCLUDED.sha256,
                        width = EXCLUDED.width, height = EXCLUDED.height, byte_size = EXCLUDED.byte_size,
                        etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, metadata = EXCLUDED.metadata,
                        failure_code = NULL, failure_reason = NULL, failure_count = 0, failed_at = NULL,
                        updated_at = EXCLUDED.updated_at
                    """,
                    # The time as a parameter: Citus refuses a volatile function in DO UPDATE SET.
                    (datetime.now(UTC),),
                )
                # The rows the COPY replaces, and (as in save_indexed) vectors of other bytes, of any model.
                # The redundant `= ANY(ids)` lets the planner find the batch's rows by the primary key:
                # joined to the (unanalysed) temporary table alone it hashed the whole of image_vectors
                # for every batch, so a re-import took time quadratic in the collection's size.
                conn.execute(
                    "DELETE FROM image_vectors v USING bulk_images b "
                    "WHERE v.image_id = ANY(%s::bigint[]) AND v.image_id = b.id "
                    "AND (v.model_id = %s OR v.sha256 <> b.sha256)",
                    (kept, model_id),
                )
                _copy_vectors(conn, kept, model_id, rows, vectors)
        return len(kept)


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
    with conn.cursor().copy(vector_copy("image_vectors")) as copy:
        names = [(r.container, r.name) for r in rows]
        copy.write(_COPY_SIGNATURE)
        for part in binary_vector_rows(ids, model_id, [r.sha256 for r in rows], matrix, names):
            copy.write(part)
        copy.write(_COPY_TRAILER)


def vector_copy(table: str) -> sql.Composed:
    """The COPY of :func:`binary_vector_rows`' rows into ``table`` (``image_vectors`` or a benchmark's
    table of the same columns)."""
    return sql.SQL(
        "COPY {} (image_id, model_id, sha256, embedding, container, name) FROM STDIN (FORMAT BINARY)"
    ).format(sql.Identifier(table))


def binary_vector_rows(
    ids: Sequence[int],
    model_id: str,
    digests: Sequence[bytes],
    matrix: npt.NDArray[np.float32],
    names: Sequence[tuple[str, str]],
) -> list[bytes]:
    """COPY BINARY rows (bigint, text, bytea, vector, text, text: vector_copy's columns) without the COPY
    header and trailer, built with numpy instead of row by row: the rows whose container and name
    (``names``, one pair per row) have the same lengths in bytes share a fixed-size record, so each such
    group is built as arrays, each a buffer of the list returned, to be written in turn (joining them
    would copy every vector once more). The rows come out grouped, not in the order given (COPY takes them
    in any order).

    Each row is: field count, then per field its length and big-endian value; pgvector's binary
    vector is int16 dimension, int16 unused, then the float4 values.
    """
    count, dim = matrix.shape
    if len(names) != count or len(ids) != count or len(digests) != count:
        raise ValueError(
            f"give one id, digest and (container, name) per vector: {count} vectors, {len(ids)} ids, "
            f"{len(digests)} digests, {len(names)} names"
        )
    model = model_id.encode()
    encoded = [(container.encode(), name.encode()) for container, name in names]
    groups: dict[tuple[int, int], list[int]] = {}
    for n, (box, label) in enumerate(encoded):
        groups.setdefault((len(box), len(label)), []).append(n)
    all_ids = np.asarray(ids, dtype=np.int64)
    all_digests = np.frombuffer(b"".join(digests), dtype="V32")
    parts = []
    for (box_len, label_len), members in groups.items():
        row = _vector_row(len(model), dim, box_len, label_len)
        # A few hundred rows at a time: the vectors' byte swap and copies then stay in the CPU's cache
        # (measured here, 5,000 rows in one array 8.9 us a row, in blocks of 256 about 2).
        for start in range(0, len(members), _BLOCK_ROWS):
            block = members[start : start + _BLOCK_ROWS]
            at = np.asarray(block, dtype=np.intp)
            rows = np.zeros(len(block), dtype=row)
            rows["fields"], rows["id_len"], rows["sha_len"], rows["vec_len"], rows["dim"] = 6, 8, 32, 4 + 4 * dim, dim
            rows["model_len"], rows["model"] = len(model), model
            rows["box_len"], rows["label_len"] = box_len, label_len
            rows["id"] = all_ids[at]
            rows["sha"] = all_digests[at]
            rows["vec"] = matrix[at]
            rows["box"] = [encoded[n][0] for n in block]
            rows["label"] = [encoded[n][1] for n in block]
            parts.append(rows.tobytes())
    return parts


_BLOCK_ROWS: Final = 256


def _vector_row(model_len: int, dim: int, box_len: int, label_len: int) -> np.dtype[np.void]:
    """One COPY BINARY row of vector_copy's columns, for a model id, a container and a name of these
    lengths in bytes."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("model_len", ">i4"),
            ("model", f"S{model_len}"),
            ("sha_len", ">i4"),
            ("sha", "V32"),
            ("vec_len", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
            ("box_len", ">i4"),
            ("box", f"S{box_len}"),
            ("label_len", ">i4"),
            ("label", f"S{label_len}"),
        ]
    )
