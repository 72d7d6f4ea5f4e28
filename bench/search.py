"""Search: latency and recall@10 of the project's search path against raw pgvector, same table and index.

Loads N clustered unit vectors (1024-d, fixed seed) through ``Store.bulk_upsert``, builds the
model's HNSW index through ``Store.ensure_model`` (timed), then runs the same queries through

- ``raw pgvector``: one connection, ``SET hnsw.ef_search``, then
  ``SELECT image_id FROM image_vectors WHERE model_id = '<model>' ORDER BY embedding::vector(1024) <=> $1
  LIMIT 10`` (the partial index's own predicate and expression);
- ``Store.search``: the store's search with a precomputed vector (strategy ``auto``, as the app runs it);
- ``Searcher.text``: the whole search pipeline the HTTP handler calls (validation, cursor, results),
  with a provider that returns the precomputed vector, so the embedding call is left out;

interleaved query by query (rotating which goes first) so drift in the machine's speed hits all
three alike. Recall@10 is measured against an exact numpy ranking of the same vectors. Then the
filtered queries (name prefix or content type matching 10 % and 1 % of rows): result count, recall
against the exact filtered ranking, latency, and pgvector's own answer (iterative scan) for contrast.

    .venv/bin/python -m bench.search [--quick] [--n N] [--queries Q]
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from bench import data
from bench.common import Stopwatch, log, machine, parser, services, summary_ms, table, write_json
from shared.catalogue import image_id
from shared.db import make_pool
from shared.embeddings import Vector
from shared.registry import Model
from shared.schema import migrate
from shared.search import Filters, FixedModel, Options, Searcher
from shared.settings import Settings
from shared.store import Store
from shared.vectorsearch import SearchFilters

MODEL = "azure-vision:2023-04-15"
CONTAINER = "images"
K = 10
DEFAULT_EF = int(Settings({}).hnsw_ef_search)
EF_SWEEP = (10, 20, 40, 60, 80, 120, 160)
REBUILDS = 2  # extra index builds in full mode, to show how much recall varies from build to build
REBUILD_EF = (40, 80, 120)
RECALL_TARGET = 0.98
P95_RATIO_TARGET = 1.5


class Precomputed:
    """An embedding provider that answers each query text with a vector computed beforehand."""

    def __init__(self, model_id: str, vectors: dict[str, Vector]) -> None:
        self._model_id = model_id
        self.vectors = vectors

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return data.DIM

    def embed_text(self, text: str) -> Vector:
        return self.vectors[text]

    def embed_image(self, data_: bytes) -> Vector:
        raise NotImplementedError("the benchmark only searches by text")


@dataclass
class Path:
    name: str
    run: Callable[[int], list[int]]  # query number -> ids, best first
    seconds: list[float]
    recalls: list[float]
    counts: list[int]


def recall(found: Sequence[int], exact: Sequence[int]) -> float:
    return len(set(found[:K]) & set(exact[:K])) / float(min(K, len(exact)) or 1)


def measure(paths: list[Path], exact: list[list[int]], queries: int) -> None:
    """Run every path on every query, interleaved, rotating which path goes first."""
    for q in range(queries):
        order = paths[q % len(paths) :] + paths[: q % len(paths)]
        for path in order:
            with Stopwatch() as t:
                ids = path.run(q)
            path.seconds.append(t.seconds)
            path.recalls.append(recall(ids, exact[q]))
            path.counts.append(len(ids))


def row(path: Path, ef: Any, base: Path | None) -> list[Any]:
    s = summary_ms(path.seconds)
    b = summary_ms(base.seconds) if base is not None else None
    return [
        path.name,
        ef,
        statistics.fmean(path.recalls),
        min(path.counts),
        s["p50_ms"],
        s["p95_ms"],
        s["p50_ms"] / b["p50_ms"] if b else None,
        s["p95_ms"] / b["p95_ms"] if b else None,
    ]


def as_json(path: Path, base: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "recall_at_10": statistics.fmean(path.recalls),
        "min_recall_at_10": min(path.recalls),
        "min_count": min(path.counts),
        **summary_ms(path.seconds),
    }
    if base is not None:
        b = summary_ms(base.seconds)
        out["p50_ratio"] = out["p50_ms"] / b["p50_ms"]
        out["p95_ratio"] = out["p95_ms"] / b["p95_ms"]
    return out


HEADERS = ["path", "ef_search", "recall@10", "min count", "p50 ms", "p95 ms", "p50 x raw", "p95 x raw"]


def run(n: int, queries: int, quick: bool, kinds: Sequence[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "search", "quick": quick, "n": n, "queries": queries, "k": K}
    with services() as svc:
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        result["datasets"] = {}
        for number, kind in enumerate(kinds):
            url = svc.postgres.create_database(f"search_{kind}")
            # The filtered queries run on the first (default) dataset only.
            rebuilds = 0 if quick or number > 0 else REBUILDS
            result["datasets"][kind] = bench(url, kind, n, queries, filtered_too=number == 0, rebuilds=rebuilds)
    first = result["datasets"][kinds[0]]
    result["targets"] = first["targets"]
    return result


def bench(url: str, kind: str, n: int, nq: int, *, filtered_too: bool, rebuilds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"kind": kind}
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    pool = make_pool(Settings({"DATABASE_URL": url}))
    pool.wait()
    store = Store(pool)
    model = store.registry.ensure_model(MODEL, data.DIM, create_index=False)

    log(f"[{kind}] generating {n:,} vectors and {nq} queries")
    vectors = data.clustered(n, kind=kind)
    qv = data.queries(nq, kind=kind)
    ids = np.array([image_id(CONTAINER, data.name_of(i)) for i in range(n)], dtype=np.int64)

    log(f"[{kind}] loading through Store.bulk_upsert")
    with Stopwatch() as load:
        store.bulk.upsert(data.records(n, CONTAINER), vectors, MODEL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE images")
        conn.execute("VACUUM ANALYZE image_vectors")
    log(f"[{kind}] loaded {n / load.seconds:,.0f} vectors/s; building the HNSW index")
    with Stopwatch() as build:
        store.registry.ensure_model(MODEL, data.DIM)
    with psycopg.connect(url, autocommit=True) as conn:
        sizes = conn.execute(
            "SELECT pg_relation_size(indexrelid), pg_total_relation_size('image_vectors') FROM pg_index "
            "WHERE indrelid = 'image_vectors'::regclass AND pg_get_indexdef(indexrelid) LIKE '%hnsw%'"
        ).fetchone()
    assert sizes is not None
    result["load"] = {"seconds": load.seconds, "vectors_per_s": n / load.seconds}
    result["index"] = {
        "build_seconds": build.seconds,
        "index_mib": sizes[0] / 2**20,
        "table_mib": sizes[1] / 2**20,
        "m": store.registry.hnsw_m,
        "ef_construction": store.registry.hnsw_ef_construction,
    }
    log(f"[{kind}] index built in {build.seconds:.1f} s ({sizes[0] / 2**20:,.0f} MiB)")
    table(
        f"Load and index build ({kind} vectors)",
        ["vectors", "load s (bulk_upsert)", "vectors/s", "index build s", "index MiB", "table MiB"],
        [[n, load.seconds, n / load.seconds, build.seconds, sizes[0] / 2**20, sizes[1] / 2**20]],
    )

    log("exact rankings (numpy)")
    exact = [[int(ids[i]) for i in data.exact_top_k(vectors, qv[q], K)] for q in range(nq)]

    raw = psycopg.connect(url, autocommit=True)
    register_vector(raw)
    raw_sql = sql.SQL(
        "SELECT image_id FROM image_vectors WHERE model_id = {model} "
        "ORDER BY embedding::vector({dim}) <=> %s::vector({dim}) LIMIT {k}"
    ).format(model=sql.Literal(MODEL), dim=sql.Literal(data.DIM), k=sql.Literal(K))

    def raw_search(q: int) -> list[int]:
        return [r[0] for r in raw.execute(raw_sql, (qv[q],)).fetchall()]

    texts = {f"benchmark query {q}": qv[q] for q in range(nq)}
    provider = Precomputed(MODEL, texts)

    def store_search(
        st: Store, filters: SearchFilters | None = None, strategy: str = "auto"
    ) -> Callable[[int], list[int]]:
        return lambda q: [h.id for h in st.vectors.search(model, qv[q], K, filters=filters, strategy=strategy).hits]

    def searcher_search(st: Store, filters: Filters | None = None) -> Callable[[int], list[int]]:
        searcher = Searcher(st, FixedModel(model, provider), container=CONTAINER)
        options = Options(k=K, filters=filters or Filters())
        return lambda q: [r.id for r in searcher.text(f"benchmark query {q}", options).results]

    # Warm the caches (index and heap pages) with a pass that is not measured.
    raw.execute("SET hnsw.ef_search = 200")
    for q in range(nq):
        raw_search(q)

    log(f"[{kind}] unfiltered queries")
    sweep: list[dict[str, Any]] = []
    rows = []
    for ef in (DEFAULT_EF, *[e for e in EF_SWEEP if e != DEFAULT_EF]):
        raw.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
        st = Store(pool, ef_search=ef)
        paths = [
            Path("raw pgvector", raw_search, [], [], []),
            Path("Store.search", store_search(st), [], [], []),
            Path("Searcher.text", searcher_search(st), [], [], []),
            # The index path alone, without the auto strategy's count (to show what that costs).
            Path("Store.search, strategy=index", store_search(st, strategy="index"), [], [], []),
        ]
        measure(paths, exact, nq)
        label = f"{ef} (default)" if ef == DEFAULT_EF else ef
        rows += [row(p, label, None if p is paths[0] else paths[0]) for p in paths]
        sweep.append({"ef_search": ef, **{p.name: as_json(p, None if p is paths[0] else paths[0]) for p in paths}})
    table(
        f"Search: {n:,} {kind} vectors x 1024-d, {nq} queries, k={K} (cosine, HNSW m=16, ef_construction=64)",
        HEADERS,
        rows,
    )
    result["unfiltered"] = sweep

    default = next(s for s in sweep if s["ef_search"] == DEFAULT_EF)
    project = default["Searcher.text"]
    result["targets"] = {
        "recall_at_default": project["recall_at_10"],
        "recall_target": RECALL_TARGET,
        "recall_met": project["recall_at_10"] >= RECALL_TARGET,
        "p95_ratio_at_default": project["p95_ratio"],
        "p95_ratio_target": P95_RATIO_TARGET,
        "p95_ratio_met": project["p95_ratio"] <= P95_RATIO_TARGET,
        "lowest_ef_reaching_recall_target": next(
            (
                s["ef_search"]
                for s in sorted(sweep, key=lambda s: s["ef_search"])
                # Raw pgvector's recall: the project raises ef_search to at least the rows it fetches.
                if s["raw pgvector"]["recall_at_10"] >= RECALL_TARGET
            ),
            None,
        ),
    }

    if rebuilds:
        result["rebuilds"] = rebuild_spread(url, store, raw, raw_search, exact, nq, rebuilds, kind, result)

    counts = []
    for _ in range(min(nq, 100)):
        with Stopwatch() as t:
            store.vectors.count_matching(
                model, SearchFilters(container=CONTAINER), stop_at=store.vectors.exact_scan_max_rows + 1
            )
        counts.append(t.seconds)
    result["count_matching_ms"] = summary_ms(counts)
    c = result["count_matching_ms"]
    table(
        "Store.count_matching alone (the auto strategy's first step, unfiltered)",
        ["p50 ms", "p95 ms"],
        [[c["p50_ms"], c["p95_ms"]]],
    )

    if filtered_too:
        log(f"[{kind}] filtered queries")
        result["filtered"] = filtered(pool, store, model, raw, vectors, ids, qv, nq)
    raw.close()
    pool.close()
    return result


def rebuild_spread(
    url: str,
    store: Store,
    raw: psycopg.Connection[Any],
    raw_search: Callable[[int], list[int]],
    exact: list[list[int]],
    nq: int,
    rebuilds: int,
    kind: str,
    first: dict[str, Any],
) -> list[dict[str, Any]]:
    """Build the index again (pgvector draws each node's level at random) and measure recall again.

    Raw pgvector only: at the same ef_search the project's path returns the same rows (see the sweep).
    """
    builds = []
    first_recall = {s["ef_search"]: s["raw pgvector"]["recall_at_10"] for s in first["unfiltered"]}
    builds.append({"build_seconds": first["index"]["build_seconds"], "recall": first_recall})
    for b in range(rebuilds):
        with psycopg.connect(url, autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'image_vectors'::regclass "
                "AND pg_get_indexdef(indexrelid) LIKE '%hnsw%'"
            ).fetchall():
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        log(f"[{kind}] rebuilding the index ({b + 2} of {rebuilds + 1})")
        with Stopwatch() as build:
            store.registry.ensure_model(MODEL, data.DIM)
        for q in range(nq):  # warm
            raw_search(q)
        recalls = {}
        for ef in REBUILD_EF:
            raw.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
            path = Path("raw pgvector", raw_search, [], [], [])
            measure([path], exact, nq)
            recalls[ef] = statistics.fmean(path.recalls)
        builds.append({"build_seconds": build.seconds, "recall": recalls})
    rows = [[i + 1, b["build_seconds"], *[b["recall"].get(ef) for ef in REBUILD_EF]] for i, b in enumerate(builds)]
    table(
        f"Recall@10 of separate builds of the same index ({kind} vectors; HNSW levels are drawn at random)",
        ["build", "build s", *[f"ef_search={ef}" for ef in REBUILD_EF]],
        rows,
    )
    return builds


def filtered(
    pool: Any,
    store: Store,
    model: Model,
    raw: psycopg.Connection[Any],
    vectors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    qv: npt.NDArray[np.float32],
    nq: int,
) -> list[dict[str, Any]]:
    n = len(vectors)
    names = [data.name_of(i) for i in range(n)]
    png = np.array([i % 10 == 3 for i in range(n)])
    texts = {f"benchmark query {q}": qv[q] for q in range(nq)}
    searcher = Searcher(store, FixedModel(model, Precomputed(MODEL, texts)), container=CONTAINER)
    out = []
    rows = []
    raw.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(DEFAULT_EF)))
    for label, spec in data.FILTERS.items():
        prefix = spec.get("prefix")
        types = spec.get("content_types", ())
        if prefix is not None:
            mask = np.array([name.startswith(prefix) for name in names])
            cond, value = sql.SQL("i.name LIKE %s"), prefix + "%"
        else:
            mask = png
            cond, value = sql.SQL("i.content_type = ANY(%s)"), list(types)
        exact = [[int(ids[i]) for i in data.exact_top_k(vectors, qv[q], K, mask)] for q in range(nq)]
        options = Options(k=K, filters=Filters(prefix=prefix, content_types=tuple(types)))
        pg_sql = sql.SQL(
            "SELECT v.image_id FROM image_vectors v JOIN images i ON i.id = v.image_id "
            "WHERE v.model_id = {model} AND {cond} ORDER BY v.embedding::vector({dim}) <=> %s::vector({dim}) LIMIT {k}"
        ).format(model=sql.Literal(MODEL), cond=cond, dim=sql.Literal(data.DIM), k=sql.Literal(K))

        def pgvector(q: int, stmt: sql.Composed = pg_sql, value: Any = value) -> list[int]:
            return [r[0] for r in raw.execute(stmt, (value, qv[q])).fetchall()]

        def project(q: int, options: Options = options) -> list[int]:
            return [r.id for r in searcher.text(f"benchmark query {q}", options).results]

        strategies: list[str] = []

        where = SearchFilters(container=CONTAINER, prefix=prefix, content_types=tuple(types))

        def project_store(q: int, where: SearchFilters = where, strategies: list[str] = strategies) -> list[int]:
            found = store.vectors.search(model, qv[q], K, filters=where)
            strategies.append(found.strategy)
            return [h.id for h in found.hits]

        def project_index(q: int, where: SearchFilters = where) -> list[int]:
            # The index path forced (the plan that reads the HNSW index in distance order), no count first.
            return [h.id for h in store.vectors.search(model, qv[q], K, filters=where, strategy="index").hits]

        results = {}
        for mode in ("off", "relaxed_order"):
            raw.execute(sql.SQL("SET hnsw.iterative_scan = {}").format(sql.Literal(mode)))
            paths = [Path(f"raw pgvector, iterative_scan={mode}", pgvector, [], [], [])]
            if mode == "relaxed_order":
                paths += [
                    Path("Store.search", project_store, [], [], []),
                    Path("Searcher.text", project, [], [], []),
                    Path("Store.search, strategy=index", project_index, [], [], []),
                ]
            measure(paths, exact, nq)
            for p in paths:
                results[p.name] = as_json(p, None)
                rows.append([f"{label} ({int(mask.sum()):,} rows)", *row(p, DEFAULT_EF, None)[:6]])
        raw.execute("RESET hnsw.iterative_scan")
        chosen = {s: strategies.count(s) for s in sorted(set(strategies))}
        # The plan of the project's index path for this filter, for whoever wonders where time goes.
        try:
            plan = store.vectors.explain_nearest(model, qv[0], K, filters=where, strategy="index", analyze=True)
            plan = re.sub(r"'\[[^']*\]'", "'[vector]'", plan)
        except Exception as exc:  # diagnostics only: never fail the benchmark over it
            plan = f"(no plan: {type(exc).__name__}: {exc})"
        out.append(
            {"filter": label, "matching_rows": int(mask.sum()), "strategies": chosen, **results, "index_plan": plan}
        )
    table(
        f"Filtered search: {n:,} vectors, {nq} queries, k={K}, ef_search={DEFAULT_EF} (project must return k rows)",
        ["filter", "path", "ef_search", "recall@10", "min count", "p50 ms", "p95 ms"],
        rows,
    )
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--n", type=int, help="vectors (default 100,000; quick 10,000)")
    p.add_argument("--queries", type=int, default=200, help="queries per setting (default 200)")
    p.add_argument(
        "--dataset",
        choices=[*data.KINDS, "both"],
        help="vector kind (bench/data.py); default: both in full mode, embedding in quick mode",
    )
    args = p.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    chosen = args.dataset or ("embedding" if args.quick else "both")
    kinds = list(data.KINDS) if chosen == "both" else [chosen]
    write_json("search", run(n, args.queries, args.quick, kinds), args.out)


if __name__ == "__main__":
    main()
