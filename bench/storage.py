"""Storage: what migration 3 (vectors stored in their rows) changes for the exact scan of a filtered search.

Two databases on one server get the same N vectors through ``Store.bulk_upsert``: one at the current
schema (each vector in its row, ``STORAGE MAIN``), one as a database before migration 3 left it
(pgvector's default: vectors of 1024 dimensions out of line, in the TOAST table). The same filtered
searches then run through the store's exact scan (``VectorSearch.search(strategy="exact")``, the path
a filter matching at most 2,000 images takes) on both, alternating which goes first, so drift in the
machine's speed hits both alike. Also printed: the size of each ``image_vectors`` with its TOAST.

    .venv/bin/python -m bench.storage [--quick] [--n N] [--queries Q]
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench import data
from bench.common import Stopwatch, log, machine, parser, services, summary_ms, table, write_json
from shared.db import make_pool
from shared.schema import migrate
from shared.settings import Settings
from shared.store import Store
from shared.vectorsearch import SearchFilters

MODEL = "azure-vision:2023-04-15"
CONTAINER = "images"
# Name prefixes from bench/data.py: "p00/" matches 1 % of the rows, "p0" 10 %.
FILTERS = {"prefix 1 %": "p00/", "prefix 10 %": "p0"}


def load(url: str, vectors: Any, *, toasted: bool) -> Store:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        if toasted:  # as before migration 3
            conn.execute("ALTER TABLE image_vectors ALTER COLUMN embedding SET STORAGE EXTERNAL")
    store = Store(make_pool(Settings({"DATABASE_URL": url}), role="admin"))
    store.registry.ensure_model(MODEL, data.DIM, create_index=False)
    store.bulk.upsert(data.records(len(vectors), CONTAINER), vectors, MODEL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE images")
        conn.execute("VACUUM ANALYZE image_vectors")
    return store


def size_mib(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_table_size('image_vectors')").fetchone()
    assert row is not None
    return float(row[0]) / 2**20


def run(n: int, nq: int) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "storage", "n": n, "queries": nq}
    log(f"generating {n:,} vectors")
    vectors = data.clustered(n)
    queries = data.queries(nq)
    with services() as svc:
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        stores: dict[str, Store] = {}
        sizes: dict[str, float] = {}
        for name, toasted in (("in the row (migration 3)", False), ("TOAST (before it)", True)):
            url = svc.postgres.create_database("storage_toast" if toasted else "storage_inline")
            log(f"loading {n:,} vectors, stored {name}")
            with Stopwatch() as t:
                stores[name] = load(url, vectors, toasted=toasted)
            sizes[name] = size_mib(url)
            log(f"loaded in {t.seconds:.1f} s; image_vectors with its TOAST: {sizes[name]:,.0f} MiB")
        result["table_mib"] = sizes
        models = {name: store.registry.active_model() for name, store in stores.items()}
        rows = []
        result["exact_scan"] = {}
        for label, prefix in FILTERS.items():
            filters = SearchFilters(container=CONTAINER, prefix=prefix)
            times: dict[str, list[float]] = {name: [] for name in stores}
            order = list(stores.items())
            for q in range(nq):
                for name, store in order if q % 2 == 0 else reversed(order):
                    model = models[name]
                    assert model is not None
                    started = time.perf_counter()
                    found = store.vectors.search(model, queries[q], 10, filters=filters, strategy="exact")
                    times[name].append(time.perf_counter() - started)
                    assert len(found.hits) == 10
            matching = sum(1 for i in range(n) if data.name_of(i).startswith(prefix))
            result["exact_scan"][label] = {name: summary_ms(t) for name, t in times.items()}
            for name, t in times.items():
                s = summary_ms(t)
                rows.append([f"{label} ({matching:,} rows)", name, s["p50_ms"], s["p95_ms"]])
        for store in stores.values():
            store.close()
    table(
        f"Exact scan of a filtered search, {n:,} vectors x 1024-d, {nq} queries each way, k=10",
        ["filter", "vectors stored", "p50 ms", "p95 ms"],
        rows,
    )
    table("image_vectors with its TOAST", ["vectors stored", "MiB"], [[k, v] for k, v in sizes.items()])
    return result


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--n", type=int, help="vectors (default 100,000; quick 10,000)")
    p.add_argument("--queries", type=int, help="queries per filter and storage (default 100; quick 20)")
    args = p.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    nq = args.queries or (20 if args.quick else 100)
    write_json("storage", run(n, nq), args.out)


if __name__ == "__main__":
    main()
