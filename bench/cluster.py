"""Cluster: search latency on a Citus cluster against a single node, same vectors, same code path.

    .venv/bin/python -m bench.cluster --database-url postgresql://postgres@<coordinator>:5432/postgres \
        [--n 50000] [--queries 200] [--shards 4,32] [--cached 1,2]

Needs a Citus coordinator you already have (a superuser URL of its maintenance database: each run
creates and drops its own database there, as the tests do with TEST_DATABASE_URL). For each shard
count it migrates a new database (``citus.shard_count`` set for the migration, as an operator would
with ``ALTER DATABASE ... SET``), loads the same N embedding-like vectors through the bulk path, builds
the model's HNSW index, and times ``VectorSearch.search`` (the path the API runs, strategy auto) for
each value of ``citus.max_cached_conns_per_worker`` (the connections to each worker a session keeps
between queries). Like ``migrate``, it makes a common search's settings the database's defaults, so
searches send no SET. The embedded single node answers the same queries in the same run, interleaved.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import psycopg

from bench import data
from bench.common import Stopwatch, log, machine, parser, services, summary_ms, table, write_json
from scripts.services import external_postgres
from shared.catalogue import image_id
from shared.db import make_pool
from shared.maintenance import cluster_settings
from shared.registry import Model
from shared.schema import migrate
from shared.settings import Settings
from shared.store import Store

MODEL = "azure-vision:2023-04-15"
K = 10


def with_options(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + "options=" + quote(options)


def load(url: str, vectors: Any, shard_count: int | None) -> tuple[Store, Model, float]:
    """Migrate (with ``shard_count`` on Citus), bulk-load, build the index; the store and its model."""
    migrate_url = with_options(url, f"-c citus.shard_count={shard_count}") if shard_count else url
    with psycopg.connect(migrate_url, autocommit=True) as conn:
        report = migrate(conn)
        if report.citus:  # as `python -m shared.cli migrate` does: the search settings as database defaults
            cluster_settings(conn, Settings({"DATABASE_URL": url}), lambda _: None)
    store = Store(make_pool(Settings({"DATABASE_URL": url}), role="admin"))
    store.registry.ensure_model(MODEL, data.DIM, create_index=False)
    store.bulk.upsert(data.records(len(vectors)), vectors, MODEL)
    with Stopwatch() as build:
        model = store.registry.ensure_model(MODEL, data.DIM)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE images")
        conn.execute("ANALYZE image_vectors")
    return store, model, build.seconds


def searcher(url: str, model: Model, vectors: Any) -> tuple[Store, Callable[[int], list[int]]]:
    store = Store(make_pool(Settings({"DATABASE_URL": url, "DATABASE_POOL_MAX": "2"}), role="search"))
    return store, lambda q: [h.id for h in store.vectors.search(model, vectors[q], K).hits]


def run(cluster_url: str, n: int, nq: int, shard_counts: list[int], cached: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "cluster", "n": n, "queries": nq, "k": K}
    vectors = data.clustered(n)
    queries = data.queries(nq)
    ids = [image_id("images", data.name_of(i)) for i in range(n)]
    exact = [[ids[i] for i in data.exact_top_k(vectors, queries[q], K)] for q in range(nq)]
    cluster = external_postgres(cluster_url)
    with services() as svc:
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        with psycopg.connect(cluster_url) as conn:
            workers = conn.execute("SELECT count(*) FROM pg_dist_node WHERE groupid <> 0").fetchone()
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()
        result["cluster"] = {"workers": workers[0] if workers else None, "citus": version[0] if version else None}
        log(f"single node: loading {n:,} vectors")
        single_store, model, single_build = load(svc.database_url, vectors, None)
        single_store.close()
        rows = []
        result["runs"] = []
        for shards in shard_counts:
            name = f"bench_{uuid.uuid4().hex[:8]}"
            url = cluster.create_database(name)
            try:
                log(f"Citus, {shards} shards: loading {n:,} vectors")
                store, cmodel, build = load(url, vectors, shards)
                store.close()
                for keep in cached:
                    curl = with_options(url, f"-c citus.max_cached_conns_per_worker={keep}")
                    c_store, c_search = searcher(curl, cmodel, queries)
                    s_store, s_search = searcher(svc.database_url, model, queries)
                    times: dict[str, list[float]] = {"single": [], "citus": []}
                    recalls: dict[str, list[float]] = {"single": [], "citus": []}
                    for q in range(nq):  # warm both
                        c_search(q)
                        s_search(q)
                    for q in range(nq):
                        order = [("single", s_search), ("citus", c_search)]
                        for label, run_one in order if q % 2 == 0 else order[::-1]:
                            with Stopwatch() as t:
                                found = run_one(q)
                            times[label].append(t.seconds)
                            recalls[label].append(len(set(found) & set(exact[q])) / K)
                    c_store.close()
                    s_store.close()
                    single, citus = summary_ms(times["single"]), summary_ms(times["citus"])
                    entry = {
                        "shards": shards,
                        "max_cached_conns_per_worker": keep,
                        "index_build_s": {"single": single_build, "citus": build},
                        "single": {**single, "recall_at_10": statistics.fmean(recalls["single"])},
                        "citus": {**citus, "recall_at_10": statistics.fmean(recalls["citus"])},
                    }
                    result["runs"].append(entry)
                    rows.append(
                        [
                            shards,
                            keep,
                            single["p50_ms"],
                            single["p95_ms"],
                            citus["p50_ms"],
                            citus["p95_ms"],
                            citus["p50_ms"] - single["p50_ms"],
                            statistics.fmean(recalls["single"]),
                            statistics.fmean(recalls["citus"]),
                        ]
                    )
            finally:
                cluster.drop_database(name)
    table(
        f"Search, {n:,} vectors x 1024-d, {nq} queries, k={K}: single node vs Citus "
        f"({result['cluster']['workers']} workers, Citus {result['cluster']['citus']})",
        [
            "shards",
            "cached conns/worker",
            "single p50 ms",
            "single p95 ms",
            "Citus p50 ms",
            "Citus p95 ms",
            "p50 extra ms",
            "single recall",
            "Citus recall",
        ],
        rows,
    )
    return result


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--database-url", required=True, help="a Citus coordinator's maintenance database (superuser)")
    p.add_argument("--n", type=int, help="vectors (default 50,000; quick 5,000)")
    p.add_argument("--queries", type=int, default=200, help="queries per setting (default 200)")
    p.add_argument("--shards", default="4,32", help="shard counts to compare (default 4,32)")
    p.add_argument("--cached", default="1,2", help="citus.max_cached_conns_per_worker values (default 1,2)")
    args = p.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)
    shards = [int(s) for s in args.shards.split(",")]
    cached = [int(c) for c in args.cached.split(",")]
    write_json("cluster", run(args.database_url, n, args.queries, shards, cached), args.out)


if __name__ == "__main__":
    main()
