"""Bulk load: vectors per second through ``Store.bulk_upsert`` against plain ``COPY … FORMAT BINARY``.

The baselines copy the same rows (catalogue rows and 1024-d vectors, encoded the same way) straight
into tables with the same columns and indexes (``LIKE … INCLUDING ALL``: primary keys, the unique
name index, the secondary indexes), in one transaction:

- ``COPY, same constraints``: the tables also have the project's foreign keys (vector → image,
  vector → model), as an equivalent table of the schema does. This is the target's baseline.
- ``COPY, no foreign keys``: the floor, to show what the schema's per-row foreign-key checks cost.

The project path upserts them in its own batches (catalogue rows through a temporary table and
INSERT … ON CONFLICT, vectors deleted and copied in). Rounds rotate the order of the paths on one
server, tables emptied and a checkpoint taken before each, so drift in the machine's speed hits all
alike. No HNSW index exists during the load (bulk loads build it afterwards; see bench.search). Each
load is timed in ``--slices`` parts (the project: one ``bulk_upsert`` call per part; COPY: one pair of
COPY statements per part, same transaction), so a cost that grows with the tables' size shows as a
rate that falls from the first part to the last.

    .venv/bin/python -m bench.bulk_load [--quick] [--n N] [--rounds R] [--slices S]
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

from bench import data
from bench.common import Services, Stopwatch, log, machine, parser, services, table, write_json
from shared.bulk import binary_vector_rows, vector_copy
from shared.catalogue import ImageRecord, image_id
from shared.db import make_pool
from shared.schema import migrate
from shared.settings import Settings
from shared.store import Store

MODEL = "azure-vision:2023-04-15"
CHUNK = 5_000


def raw_copy(
    conn: psycopg.Connection[Any],
    recs: list[ImageRecord],
    vectors: npt.NDArray[np.float32],
    prefix: str = "raw",
    slices: int = 1,
) -> list[float]:
    """Plain binary COPY of the same rows into <prefix>_images and <prefix>_image_vectors, one
    transaction, in ``slices`` pairs of COPY statements; returns the seconds each slice took."""
    times = []
    with conn.transaction():
        step = -(-len(recs) // slices)
        for start in range(0, len(recs), step):
            with Stopwatch() as t:
                _copy_slice(conn, recs[start : start + step], vectors[start : start + step], prefix)
            times.append(t.seconds)
    return times


def _copy_slice(
    conn: psycopg.Connection[Any], recs: list[ImageRecord], vectors: npt.NDArray[np.float32], prefix: str
) -> None:
    cur = conn.cursor()
    with cur.copy(
        f"COPY {prefix}_images (id, container, name, status, sha256, content_type, width, height, byte_size, "
        "etag, last_modified, metadata) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(
            [
                "int8",
                "text",
                "text",
                "text",
                "bytea",
                "text",
                "int4",
                "int4",
                "int8",
                "text",
                "timestamptz",
                "jsonb",
            ]
        )
        for r in recs:
            head = (image_id(r.container, r.name), r.container, r.name, "indexed", r.sha256, r.content_type)
            copy.write_row((*head, r.width, r.height, r.byte_size, r.etag, r.last_modified, Jsonb(r.metadata)))
    with cur.copy(vector_copy(f"{prefix}_image_vectors")) as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
        for start in range(0, len(recs), CHUNK):
            part = recs[start : start + CHUNK]
            for rows in vector_rows(part, vectors[start : start + CHUNK]):
                copy.write(rows)
        copy.write(b"\xff\xff")


def create_copy_tables(conn: psycopg.Connection[Any], prefixes: tuple[str, ...]) -> None:
    """The baselines' tables: ``<prefix>_images`` and ``<prefix>_image_vectors`` with the columns, the
    storage and the indexes of the project's (``LIKE … INCLUDING ALL``); ``fk`` also with its foreign keys."""
    for prefix in prefixes:
        conn.execute(f"CREATE TABLE {prefix}_images (LIKE images INCLUDING ALL)")
        conn.execute(f"CREATE TABLE {prefix}_image_vectors (LIKE image_vectors INCLUDING ALL)")
        if prefix == "fk":
            conn.execute(
                "ALTER TABLE fk_image_vectors ADD FOREIGN KEY (image_id) REFERENCES fk_images (id) ON DELETE CASCADE, "
                "ADD FOREIGN KEY (model_id) REFERENCES embedding_models (model_id)"
            )


def vector_rows(recs: list[ImageRecord], vectors: npt.NDArray[np.float32]) -> list[bytes]:
    """Binary COPY rows (the store's own columns, vector_copy's) with the store's own encoder: both paths
    pay the same encoding cost, so the comparison is about what the database does with the rows."""
    ids = [image_id(r.container, r.name) for r in recs]
    return binary_vector_rows(ids, MODEL, [r.sha256 for r in recs], vectors, [(r.container, r.name) for r in recs])


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("TRUNCATE image_vectors, images, raw_image_vectors, raw_images, fk_image_vectors, fk_images")
    conn.execute("CHECKPOINT")


PATHS = ("copy", "copy+fk", "project")
LABELS = {
    "copy+fk": "COPY BINARY, same constraints (baseline)",
    "copy": "COPY BINARY, no foreign keys (floor)",
    "project": "Store.bulk_upsert, new rows",
}


def run(n: int, rounds: int, quick: bool, slices: int = 1) -> dict[str, Any]:
    with services() as svc:
        return measure(svc, n, rounds, quick, slices)


def measure(svc: Services, n: int, rounds: int, quick: bool, slices: int = 1) -> dict[str, Any]:
    with svc.connect(autocommit=True) as conn:
        migrate(conn)
        create_copy_tables(conn, ("raw", "fk"))
        info = machine(conn)
    from pgvector.psycopg import register_vector

    pool = make_pool(Settings({"DATABASE_URL": svc.database_url}))
    pool.wait()
    store = Store(pool)
    store.registry.ensure_model(MODEL, data.DIM, create_index=False)
    log(f"generating {n:,} vectors")
    vectors = data.clustered(n)
    recs = data.records(n)
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    sliced: dict[str, list[list[float]]] = {path: [] for path in PATHS}
    step = -(-n // slices)
    with psycopg.connect(svc.database_url, autocommit=True) as conn:
        register_vector(conn)
        for r in range(rounds):
            for which in PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]:
                reset(conn)
                with Stopwatch() as t:
                    if which == "project":
                        times = []
                        for start in range(0, n, step):
                            with Stopwatch() as part:
                                store.bulk.upsert(recs[start : start + step], vectors[start : start + step], MODEL)
                            times.append(part.seconds)
                    else:
                        times = raw_copy(conn, recs, vectors, "fk" if which == "copy+fk" else "raw", slices)
                seconds[which].append(t.seconds)
                sliced[which].append(times)
                log(f"round {r + 1}: {which} {n / t.seconds:,.0f} vectors/s")
        # Upsert over existing rows (a re-import): every row conflicts and is updated.
        with Stopwatch() as again:
            store.bulk.upsert(recs, vectors[::-1].copy(), MODEL)
        counts = conn.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM image_vectors)").fetchone()
    pool.close()
    assert counts == (n, n), counts
    # Rate in each slice of the load (median over rounds): whatever grows faster than the rows shows
    # as a rate that falls from the first slice to the last.
    by_slice = {
        path: [step / statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]
        for path, runs in sliced.items()
    }
    table(
        f"Rate while the tables fill: vectors/s in each of {slices} slices of the load (median of {rounds} rounds)",
        ["path", *[f"{(i + 1) * 100 // slices} %" for i in range(slices)]],
        [[LABELS[p], *by_slice[p]] for p in ("copy+fk", "copy", "project")],
    )

    rate = {path: n / statistics.median(s) for path, s in seconds.items()}
    base, floor = rate["copy+fk"], rate["copy"]
    rows = [[LABELS[p], rate[p], n / rate[p], rate[p] / base, rate[p] / floor] for p in ("copy+fk", "copy", "project")]
    rows.append(["Store.bulk_upsert, all rows exist", n / again.seconds, again.seconds])
    rows[-1] += [rows[-1][1] / base, rows[-1][1] / floor]
    table(
        f"Bulk load: {n:,} images x 1024-d, median of {rounds} rounds (target: bulk_upsert >= 0.8 x COPY)",
        ["path", "vectors/s", "seconds", "x baseline", "x floor"],
        rows,
    )
    ratio = rate["project"] / base
    return {
        "benchmark": "bulk_load",
        "quick": quick,
        "machine": info,
        "n": n,
        "rounds": rounds,
        "seconds": seconds,
        "reupsert_seconds": again.seconds,
        "slices": slices,
        "vectors_per_s_by_slice": by_slice,
        "vectors_per_s": rate,
        "reupsert_vectors_per_s": n / again.seconds,
        "ratio_vs_same_constraints": ratio,
        "ratio_vs_no_foreign_keys": rate["project"] / floor,
        "target_ratio": 0.8,
        "target_met": ratio >= 0.8,
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--n", type=int, help="vectors to load (default 100,000; quick 20,000)")
    p.add_argument("--rounds", type=int, help="rounds per path, order rotating (default 5; quick 2)")
    p.add_argument("--slices", type=int, default=5, help="report the rate in this many parts of each load (default 5)")
    args = p.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (2 if args.quick else 5)
    write_json("bulk_load", run(n, rounds, args.quick, max(1, args.slices)), args.out)


if __name__ == "__main__":
    main()
