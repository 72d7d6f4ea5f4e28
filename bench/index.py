"""Index builds: what HNSW build parameters and ef_search buy, in recall, latency, build time and size.

Loads N clustered unit vectors as bench/search.py does (the bulk path, then the model's index as the
settings ask), then builds the model's partial index again for each ``--builds`` pair (m /
ef_construction, in the settings' precision) and measures raw pgvector on it (the plain
``ORDER BY embedding::halfvec(1024) <=> $1 LIMIT 10`` on the partial index) at each ef_search:
recall@10 against an exact numpy ranking, p50 / p95 latency, build time and index size. A pair may
repeat: HNSW draws each node's level at random, so recall varies from one build to the next.

    .venv/bin/python -m bench.index [--quick] [--n N] [--index 16/64] [--builds 16/128,32/128] [--ef 40,80]
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench import search
from bench.common import Stopwatch, log, machine, parser, server_settings, services, table, write_json
from shared.schema import IndexSpec, create_model_index, drop_indexes, model_indexes

DEFAULT = f"{search.DEFAULTS.hnsw_m}/{search.DEFAULTS.hnsw_ef_construction}"
EFS = (40, 60, 80, 100, 120, 160, 240, 320)
QUICK_EFS = (40, 80, 160)


def run(args: Any) -> dict[str, Any]:
    started = time.monotonic()
    phases: dict[str, float] = {}
    result: dict[str, Any] = {"benchmark": "index", "quick": args.quick, "n": args.n, "queries": args.queries}
    with services(settings=server_settings(args.workers)) as svc:
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        url = svc.postgres.create_database(f"index_{args.dataset}")
        b, loaded = search.load_dataset(
            url,
            args.dataset,
            args.n,
            args.queries,
            args.quick,
            lambda name, s: phases.__setitem__(name, s),
            spec=IndexSpec(search.DEFAULTS.hnsw_precision, *args.index),
        )
        result["load"] = loaded
        builds = [
            {
                "m": loaded["index"]["m"],
                "ef_construction": loaded["index"]["ef_construction"],
                "build_seconds": loaded["index"]["build_seconds"],
                "index_mib": loaded["index"]["index_mib"],
                "raw": sweep(b, args.ef),
            }
        ]
        for m, efc in args.builds:
            spec = IndexSpec(search.DEFAULTS.hnsw_precision, m, efc)
            with psycopg.connect(url, autocommit=True) as conn:
                drop_indexes(conn, model_indexes(conn, search.MODEL), concurrently=False)
                log(f"building the index with {search.describe(spec)}")
                with Stopwatch() as build:
                    create_model_index(conn, search.MODEL, search.data.DIM, spec, concurrently=False)
            index_mib, _ = search.sizes(url)
            b.warm()
            builds.append(
                {
                    "m": m,
                    "ef_construction": efc,
                    "build_seconds": build.seconds,
                    "index_mib": index_mib,
                    "raw": sweep(b, args.ef),
                }
            )
        b.close()
    result["builds"] = builds
    table(
        f"Index builds: {args.n:,} {args.dataset} vectors, {search.DEFAULTS.hnsw_precision}, {args.queries} queries: "
        "raw pgvector recall@10 (p50 / p95 ms) by ef_search",
        ["m", "ef_construction", "build s", "index MiB", *[f"ef {ef}" for ef in args.ef]],
        [
            [
                o["m"],
                o["ef_construction"],
                o["build_seconds"],
                o["index_mib"],
                *[
                    f"{o['raw'][ef]['recall']:.3f} ({o['raw'][ef]['p50_ms']:.2f} / {o['raw'][ef]['p95_ms']:.2f})"
                    for ef in args.ef
                ],
            ]
            for o in builds
        ],
    )
    result["phases"] = {**phases, "total": time.monotonic() - started}
    return result


def sweep(b: search.Bench, efs: list[int]) -> dict[int, dict[str, Any]]:
    out = {}
    for ef in efs:
        b.set_ef(ef)
        path = b.raw_path()
        search.measure([path], b.exact, b.nq)
        out[ef] = search.as_json(path)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--n", type=int, help="vectors (default 100,000; quick 10,000)")
    p.add_argument("--queries", type=int, default=200, help="queries (default 200)")
    p.add_argument("--dataset", choices=search.data.KINDS, default="embedding", help="vector kind (bench/data.py)")
    p.add_argument(
        "--builds",
        help=f"m/ef_construction pairs to build after the settings' own (default: {DEFAULT} twice more; quick: none)",
    )
    p.add_argument(
        "--index", default=DEFAULT, help=f"m/ef_construction of the first build (default: the settings', {DEFAULT})"
    )
    p.add_argument("--ef", help="ef_search values, comma-separated")
    p.add_argument("--workers", type=int, help="parallel workers for the index builds, with memory to match")
    args = p.parse_args()
    args.n = args.n or (10_000 if args.quick else 100_000)
    if args.builds is None:
        args.builds = "" if args.quick else f"{DEFAULT},{DEFAULT}"
    args.builds = [tuple(int(x) for x in b.split("/")) for b in args.builds.split(",") if b]
    args.index = tuple(int(x) for x in args.index.split("/"))
    args.ef = [int(x) for x in args.ef.split(",")] if args.ef else list(QUICK_EFS if args.quick else EFS)
    write_json("index", run(args), args.out)


if __name__ == "__main__":
    main()
