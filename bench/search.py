"""Search: recall and latency of the project's search path against raw pgvector, same table and index.

Loads N clustered unit vectors (1024-d, fixed seed) through ``Store.bulk_upsert``, builds the model's
HNSW index as the settings ask (``Registry.ensure_model``: precision, m, ef_construction; timed and
sized), then runs the same queries through

- ``raw pgvector``: what a pgvector user writes against the same partial index, on one connection
  with ``SET hnsw.ef_search`` (and ``enable_sort = off``, as the project's index path, which keeps the
  planner on the index at a large ef_search): ``SELECT image_id FROM image_vectors WHERE model_id = '<model>'
  ORDER BY embedding::halfvec(1024) <=> $1::halfvec(1024) LIMIT 10``;
- ``raw re-rank``: pgvector's README pattern for a quantized index, 4 k candidates by the index
  re-ranked by the full-precision distance (``SELECT ... FROM (... LIMIT 40) ORDER BY
  embedding::vector(1024) <=> $1 LIMIT 10``);
- ``Store.search``: the store's search with a precomputed vector, as the app runs it (its own
  autocommit search pool, strategy ``auto``);
- ``Searcher.text``: the whole pipeline the HTTP handler calls (validation, cursor, results), with a
  provider that returns the precomputed vector, so only the embedding call is left out, and an
  embedding cache that keeps nothing, so every query passes through the provider's checks as a new one,
  and without read links (``url`` None), as the targets were set;

interleaved query by query (in an order shuffled at each turn) so drift in the machine's speed hits all alike,
and at the default settings TARGET_ROUNDS times over the queries, for a p95 that holds between runs.
At the default settings two more paths: ``raw pgvector, the store's connection``, raw pgvector's
statement on the search pool's own connection (the server backend that ``Store.search`` and
``Searcher.text`` run on), between their searches and with the session settings the store gave it; and
``Searcher.text, read links``, each result with its signed read link as the HTTP answer has it (one
per result here: the loaded rows have no thumbnails, whose links would make two), every link signed
anew (a worker reuses a link for a few minutes: forgotten before each answer, the worst case). The second raw path
is the control: its ratio to raw pgvector is what measuring alone moves a ratio by (the same statement,
another backend), and the project's paths are measured against it too, which takes the backend's part
out of their ratio.
Recall@k is measured against an exact numpy ranking. Then k = 100 (the API's maximum), the filtered
queries (name prefix or content type matching 10 % and 1 % of rows: rows returned, recall against the
exact filtered ranking, latency, the strategy chosen, and near the exact-scan threshold each strategy
forced, to show where the threshold belongs at that size). Build parameters against
recall are bench/index.py's job.

    .venv/bin/python -m bench.search [--quick] [--n N] [--queries Q] [--workers W] [--dataset KIND]

``--workers W`` gives the server W parallel maintenance workers and memory for the index build in
proportion to the machine's (bench/common.py ``server_settings``): a million vectors on a 16-core
machine is ``--n 1000000 --workers 15``. Above 100,000 vectors the run covers the default vector kind
only, unless told otherwise.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from azure.storage.blob import BlobServiceClient
from pgvector.psycopg import register_vector
from psycopg import sql

from bench import bulk_load, data
from bench.common import (
    Stopwatch,
    log,
    machine,
    parser,
    server_settings,
    services,
    summary_ms,
    table,
    write_json,
)
from scripts.services import Azurite
from shared.blobs import ImageBlobs
from shared.catalogue import image_id
from shared.db import make_pool
from shared.embeddings import Vector
from shared.registry import Model
from shared.runtime import index_spec
from shared.schema import IndexSpec, migrate
from shared.search import EmbeddingCache, Filters, FixedModel, Options, Searcher
from shared.settings import Settings
from shared.store import Store
from shared.vectorsearch import SearchFilters

MODEL = "azure-vision:2023-04-15"
CONTAINER = "images"
# Read links are signed with Azurite's account key; no Azurite runs and the endpoint is never called.
LINKS_CONNECTION = Azurite(None, 10000, 10001, 10002).connection_string
K = 10
K_MAX = 100  # the API's largest k
DEFAULTS = Settings({})
DEFAULT_EF = DEFAULTS.hnsw_ef_search
EF_SWEEP = (40, 80, 120, 160, 240)
QUICK_EF_SWEEP = (40, 120)
RERANK_FACTOR = 4  # the README's example re-ranks 4 x k candidates
# Filters matching up to this many times the exact-scan threshold are also searched with each strategy
# forced: the figures that show where the threshold should be at this size.
FORCED_UP_TO = 3
CONTROL = "raw pgvector, the store's connection"
TARGETS = {"recall": 0.98, "p95_ratio": 1.2, "filtered_recall": 0.95, "filtered_p95_ratio": 3.0}
# In full mode at most this size: both vector kinds.
FULL_MAX = 100_000


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
    k: int = K
    seconds: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


# Unmeasured runs of each path before its measured ones: psycopg has PostgreSQL plan a statement the
# first 5 times a connection runs it and prepares it after, and the search pool has several connections,
# so a path's first few dozen queries measure planning, not the steady state the app runs in.
WARMUP_QUERIES = 30


# Rounds over the queries for the figures the targets read (the four paths at the default settings): a
# p95 of 200 timings is their 10th largest, and between two runs of the same code (100,000 vectors, 2
# cores) Searcher.text's p95 came out 1.04 and 1.46 x raw pgvector's; over 1,600 timings of each path
# (8 rounds) 1.145, with the 8 single rounds between 1.10 and 1.32.
TARGET_ROUNDS = 5


def measure(paths: list[Path], exact: list[list[int]], queries: int, rounds: int = 1, seed: int = 0) -> None:
    """Run every path on every query, interleaved in an order shuffled at each turn (seeded), after
    WARMUP_QUERIES unmeasured runs of each (the same queries); ``rounds`` times over the queries, every
    timing kept.

    Shuffled, not rotated: rotating which path goes first keeps each path behind the same neighbour,
    and on 2 cores what ran just before moves a search's time. A path behind one on another connection
    found its server backend idle for that long; the same statement as raw pgvector, on the store's
    connection, behind the store's own searches, came out 0.90 x raw pgvector at p95 (100,000 vectors),
    and Store.search, behind raw re-rank, 1.22 x it. Shuffled, every path follows every other as often."""
    for q in range(min(queries, WARMUP_QUERIES)):
        for path in paths:
            path.run(q)
    rng = random.Random(seed)
    for turn in range(rounds * queries):
        q = turn % queries
        order = rng.sample(paths, len(paths))
        for path in order:
            with Stopwatch() as t:
                ids = path.run(q)
            path.seconds.append(t.seconds)
            truth = exact[q][: path.k]
            path.recalls.append(len(set(ids[: path.k]) & set(truth)) / float(min(path.k, len(truth)) or 1))
            path.counts.append(len(ids))


def as_json(path: Path, base: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "recall": statistics.fmean(path.recalls),
        "min_recall": min(path.recalls),
        "min_count": min(path.counts),
        **summary_ms(path.seconds),
    }
    if base is not None:
        b = summary_ms(base.seconds)
        out["p50_ratio"] = out["p50_ms"] / b["p50_ms"]
        out["p95_ratio"] = out["p95_ms"] / b["p95_ms"]
    return out


# Resamples for the interval around a p95 ratio: 2,000 of 1,000 timings took 0.09 s here.
RATIO_RESAMPLES = 2_000


def p95_ratio_interval(path: Path, base: Path, seed: int = 0) -> list[float]:
    """A 95 % interval around ``path``'s p95 / ``base``'s p95, by the paired bootstrap: the turns of
    measure() drawn again with replacement, both paths' timings of a turn kept together (they ran one
    after the other on the same query), the ratio taken each time. It shows how far the ratio moves
    between samples of this run; a run at another time can differ more (other load on the machine)."""
    ours, theirs = np.asarray(path.seconds), np.asarray(base.seconds)
    if ours.size != theirs.size or ours.size < 20:
        raise ValueError("a p95 ratio's interval needs two paths measured together, at least 20 turns")
    rng = np.random.default_rng(seed)
    ratios = np.empty(RATIO_RESAMPLES)
    for start in range(0, RATIO_RESAMPLES, 250):  # in blocks: 250 x 1,000 timings at a time
        turns = rng.integers(0, ours.size, size=(min(250, RATIO_RESAMPLES - start), ours.size))
        ratios[start : start + len(turns)] = np.percentile(ours[turns], 95, axis=1) / np.percentile(
            theirs[turns], 95, axis=1
        )
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [float(low), float(high)]


def row(label: Any, path: Path, base: Path | None = None, rerank: Path | None = None) -> list[Any]:
    s = as_json(path, base)
    r = as_json(path, rerank) if rerank is not None else {}
    return [
        label,
        path.name,
        s["recall"],
        s["min_count"],
        s["p50_ms"],
        s["p95_ms"],
        s.get("p95_ratio"),
        r.get("p95_ratio"),
    ]


HEADERS = ["ef_search", "path", "recall", "min rows", "p50 ms", "p95 ms", "p95 x raw", "p95 x re-rank"]


def exact_top(
    matrix: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_] | None = None
) -> list[list[int]]:
    """Row numbers of the k nearest rows of each query by cosine distance (unit vectors), best first;
    in blocks of queries, so a million rows cost one matrix product per block."""
    out: list[list[int]] = []
    for start in range(0, len(queries), 32):
        scores = matrix @ queries[start : start + 32].T  # rows x block
        if mask is not None:
            scores[~mask] = -np.inf
        for col in range(scores.shape[1]):
            s = scores[:, col]
            top = np.argpartition(-s, k)[:k]
            out.append([int(i) for i in top[np.argsort(-s[top], kind="stable")]])
    return out


@dataclass
class Bench:
    """One dataset on one server: its vectors, the exact answers, the store as the app opens it."""

    url: str
    kind: str
    n: int
    nq: int
    quick: bool
    vectors: npt.NDArray[np.float32]
    queries: npt.NDArray[np.float32]
    ids: npt.NDArray[np.int64]
    model: Model
    raw: psycopg.Connection[Any]
    pools: list[Any]
    exact: list[list[int]] = field(default_factory=list)
    exact_max: list[list[int]] = field(default_factory=list)

    def store(self, ef_search: int | None = None) -> Store:
        """A store over the benchmark's pools, as the runtime opens it (a search pool of its own)."""
        work, search = self.pools
        return Store(work, search_pool=search, ef_search=ef_search or DEFAULT_EF)

    def texts(self) -> dict[str, Vector]:
        return {f"benchmark query {q}": self.queries[q] for q in range(self.nq)}

    def searcher(self, store: Store, *, links: bool = False) -> Searcher:
        """``links``: each result with its read link, as the HTTP answer has them, signed with an account
        key (Azurite's well-known one: signing is local, nothing is sent)."""
        provider = Precomputed(MODEL, self.texts())
        no_cache = EmbeddingCache(max_entries=0)  # every query as a new one: the provider's answer checked
        blobs = ImageBlobs(BlobServiceClient.from_connection_string(LINKS_CONNECTION), CONTAINER) if links else None
        return Searcher(store, FixedModel(self.model, provider), blobs=blobs, container=CONTAINER, cache=no_cache)

    def warm(self) -> None:
        """Read the index and heap pages once, unmeasured, so the first path measured pays no cold cache:
        at the widest ef_search the run uses (the default grows with the collection, 505 at a million),
        since a wider search reads pages a narrower one never does."""
        widest = max(200, *EF_SWEEP, self.store().vectors.effective_ef_search(self.model, K_MAX + 1))
        self.set_ef(widest)
        path = self.raw_path()
        for q in range(self.nq):
            path.run(q)

    def close(self) -> None:
        self.raw.close()
        for pool in self.pools:
            pool.close()

    def set_ef(self, ef: int) -> None:
        self.raw.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))

    def raw_statement(self, k: int = K) -> sql.Composed:
        return sql.SQL(
            "SELECT image_id FROM image_vectors WHERE model_id = {model} ORDER BY {approx} LIMIT {k}"
        ).format(model=sql.Literal(MODEL), approx=_approx(self.model), k=sql.Literal(k))

    def raw_path(self, k: int = K) -> Path:
        """Raw pgvector, on a connection of its own."""
        stmt = self.raw_statement(k)
        return Path("raw pgvector", lambda q: [r[0] for r in self.raw.execute(stmt, (self.queries[q],))], k)

    def search_connection(self) -> psycopg.Connection[Any]:
        """The search pool's only connection. The benchmark runs one search at a time, so the pool never
        opens a second one (min_size 1): every search of Store.search and Searcher.text runs on this one."""
        pool = self.pools[1]
        conn: psycopg.Connection[Any]
        with pool.connection() as conn:
            pass
        if pool.get_stats().get("pool_size") != 1:
            raise RuntimeError("the search pool holds more than one connection: a search ran concurrently")
        return conn

    def raw_on_search_connection_path(self, store: Store, k: int = K) -> Path:
        """Raw pgvector's statement on the search pool's own connection, run between the store's searches
        (outside the pool's bookkeeping: nothing else runs meanwhile), in the session the store left:
        the same hnsw.ef_search, checked here and after measuring (:meth:`check_search_connection`)."""
        store.vectors.search(self.model, self.queries[0], k, filters=SearchFilters(container=CONTAINER))
        conn = self.search_connection()
        self.check_search_connection(conn, store)
        stmt = self.raw_statement(k)
        return Path(CONTROL, lambda q: [r[0] for r in conn.execute(stmt, (self.queries[q],))], k)

    def check_search_connection(self, conn: psycopg.Connection[Any], store: Store) -> None:
        """That the pool still holds only ``conn``, in a session with the ef_search the store searches with."""
        if self.search_connection() is not conn:
            raise RuntimeError("the search pool changed its connection while measuring")
        expected = str(store.vectors.effective_ef_search(self.model, K + 1))
        found = conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()
        if found is None or found[0] != expected:
            raise RuntimeError(f"the store's connection searches with ef_search {found}, not {expected}")

    def rerank_path(self, k: int = K) -> Path:
        stmt = sql.SQL(
            "SELECT image_id FROM (SELECT image_id, embedding FROM image_vectors WHERE model_id = {model} "
            "ORDER BY {approx} LIMIT {candidates}) AS c ORDER BY embedding::vector({dim}) <=> %(q)s::vector({dim}) "
            "LIMIT {k}"
        ).format(
            model=sql.Literal(MODEL),
            approx=_approx(self.model, "%(q)s"),
            candidates=sql.Literal(RERANK_FACTOR * k),
            dim=sql.Literal(data.DIM),
            k=sql.Literal(k),
        )
        return Path(
            f"raw re-rank ({RERANK_FACTOR} k)",
            lambda q: [r[0] for r in self.raw.execute(stmt, {"q": self.queries[q]})],
            k,
        )

    def store_path(
        self,
        store: Store,
        k: int = K,
        filters: SearchFilters | None = None,
        strategies: list[str] | None = None,
        strategy: str = "auto",
    ) -> Path:
        where = filters or SearchFilters(container=CONTAINER)

        def run(q: int) -> list[int]:
            found = store.vectors.search(self.model, self.queries[q], k, filters=where, strategy=strategy)
            if strategies is not None:
                strategies.append(found.strategy)
            return [h.id for h in found.hits]

        return Path("Store.search" if strategy == "auto" else f"Store.search, {strategy} forced", run, k)

    def searcher_path(self, store: Store, k: int = K, filters: Filters | None = None, *, links: bool = False) -> Path:
        """``links``: every link signed anew (the links of the last few minutes forgotten before each
        answer), as for images no answer named within the window a link is reused for."""
        searcher = self.searcher(store, links=links)
        options = Options(k=k, filters=filters or Filters())
        blobs = searcher.blobs

        def run(q: int) -> list[int]:
            if blobs is not None:
                blobs.forget_links()
            return [r.id for r in searcher.text(f"benchmark query {q}", options).results]

        return Path("Searcher.text, read links" if links else "Searcher.text", run, k)


def _approx(model: Model, placeholder: str = "%s", column: str = "embedding") -> sql.Composed:
    """The index's expression and the query cast alike, as the partial index was built."""
    kind = sql.SQL(model.precision)
    return sql.SQL("{column}::{kind}({dim}) <=> {q}::{kind}({dim})").format(
        column=sql.SQL(column), kind=kind, dim=sql.Literal(model.dimension), q=sql.SQL(placeholder)
    )


def run(args: Any) -> dict[str, Any]:
    started = time.monotonic()
    n, nq, quick = args.n, args.queries, args.quick
    result: dict[str, Any] = {
        "benchmark": "search",
        "quick": quick,
        "n": n,
        "queries": nq,
        "k": K,
        "workers": args.workers,
        "phases": {},
        "settings": {
            "HNSW_PRECISION": DEFAULTS.hnsw_precision,
            "HNSW_M": DEFAULTS.hnsw_m,
            "HNSW_EF_CONSTRUCTION": DEFAULTS.hnsw_ef_construction,
            "HNSW_EF_SEARCH": DEFAULT_EF or "auto",
        },
    }
    with services(settings=server_settings(args.workers)) as svc:
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        result["datasets"] = {}
        for number, kind in enumerate(args.kinds):
            url = svc.postgres.create_database(f"search_{kind}")
            result["datasets"][kind] = dataset(url, kind, args, filtered_too=number == 0, phases=result["phases"])
    result["phases"]["total"] = time.monotonic() - started
    result["targets"] = targets(result["datasets"][args.kinds[0]])
    report(result)
    return result


def load_dataset(
    url: str,
    kind: str,
    n: int,
    nq: int,
    quick: bool,
    phase: Callable[[str, float], None],
    spec: IndexSpec | None = None,
    *,
    copy_baseline: bool = False,
) -> tuple[Bench, dict[str, Any]]:
    """Generate the vectors, load them through the bulk path, build the model's index (``spec``, by
    default as the settings ask), rank exactly: the dataset every measurement here starts from.
    ``copy_baseline``: first copy the same rows with plain COPY into tables of the same columns, indexes
    and foreign keys (bench.bulk_load's baseline), timed, then drop them: the bulk path's ratio to COPY
    at this size, in the same run."""
    spec = spec or index_spec(DEFAULTS)
    result: dict[str, Any] = {"kind": kind}
    with Stopwatch() as t:
        log(f"[{kind}] generating {n:,} vectors and {nq} queries")
        vectors = data.clustered(n, kind=kind)
        qv = data.queries(nq, kind=kind)
        ids = np.array([image_id(CONTAINER, data.name_of(i)) for i in range(n)], dtype=np.int64)
    phase("generate vectors", t.seconds)

    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    settings = Settings({"DATABASE_URL": url})
    work = make_pool(settings)
    search = make_pool(settings, role="search")
    work.wait()
    search.wait()
    loader = Store(work, index=spec)
    loader.registry.ensure_model(MODEL, data.DIM, create_index=False)

    records = data.records(n, CONTAINER)
    copy_seconds = None
    if copy_baseline:
        log(f"[{kind}] the baseline: plain COPY of the same rows, same constraints")
        with psycopg.connect(url, autocommit=True) as conn:
            bulk_load.create_copy_tables(conn, ("fk",))
            conn.execute("CHECKPOINT")
            with Stopwatch() as copied:
                bulk_load.raw_copy(conn, records, vectors, "fk")
            copy_seconds = copied.seconds
            conn.execute("DROP TABLE fk_image_vectors, fk_images")
            conn.execute("CHECKPOINT")
        phase("load (COPY baseline)", copy_seconds)
        log(f"[{kind}] COPY: {n / copy_seconds:,.0f} vectors/s")
    log(f"[{kind}] loading through Store.bulk_upsert")
    with Stopwatch() as load:
        loader.bulk.upsert(records, vectors, MODEL)
    phase("load (Store.bulk_upsert)", load.seconds)
    with Stopwatch() as t, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE images")
        conn.execute("VACUUM ANALYZE image_vectors")
    phase("vacuum analyze", t.seconds)
    log(f"[{kind}] loaded {n / load.seconds:,.0f} vectors/s; building the HNSW index")
    with Stopwatch() as build:
        model = loader.registry.ensure_model(MODEL, data.DIM)
    phase("index build", build.seconds)
    index_mib, table_mib = sizes(url)
    result["load"] = {"seconds": load.seconds, "vectors_per_s": n / load.seconds}
    if copy_seconds is not None:
        result["load"]["copy_baseline"] = {"seconds": copy_seconds, "vectors_per_s": n / copy_seconds}
        result["load"]["x_copy"] = copy_seconds / load.seconds
    result["index"] = {
        "build_seconds": build.seconds,
        "index_mib": index_mib,
        "table_mib": table_mib,
        "precision": spec.precision,
        "m": spec.m,
        "ef_construction": spec.ef_construction,
    }
    log(f"[{kind}] index built in {build.seconds:.1f} s ({index_mib:,.0f} MiB)")
    table(
        f"Load and index build ({n:,} {kind} vectors)",
        ["vectors", "load s", "vectors/s", "x COPY", "index", "build s", "index MiB", "table MiB"],
        [
            [
                n,
                load.seconds,
                n / load.seconds,
                "-" if copy_seconds is None else f"{copy_seconds / load.seconds:.2f} ({n / copy_seconds:,.0f}/s)",
                describe(spec),
                build.seconds,
                index_mib,
                table_mib,
            ]
        ],
    )

    with Stopwatch() as t:
        log(f"[{kind}] exact rankings (numpy)")
        exact = [[int(ids[i]) for i in top] for top in exact_top(vectors, qv, K)]
        exact_max = [[int(ids[i]) for i in top] for top in exact_top(vectors, qv, K_MAX)]
    phase("exact rankings", t.seconds)

    raw = psycopg.connect(url, autocommit=True)
    register_vector(raw)
    # The project's setting for its index path: at ef_search 240 on 100,000 vectors the planner trades
    # the HNSW index for a parallel scan of every vector (0.3-0.6 s), and that is not what is compared.
    raw.execute("SET enable_sort = off")
    b = Bench(url, kind, n, nq, quick, vectors, qv, ids, model, raw, [work, search], exact, exact_max)
    b.warm()
    return b, result


def dataset(url: str, kind: str, args: Any, *, filtered_too: bool, phases: dict[str, float]) -> dict[str, Any]:
    def phase(name: str, seconds: float) -> None:
        phases[f"{kind}: {name}"] = seconds

    b, result = load_dataset(url, kind, args.n, args.queries, args.quick, phase, copy_baseline=args.copy_baseline)
    with Stopwatch() as t:
        result["unfiltered"] = unfiltered(b)
        result["k_max"] = largest_k(b)
    phase("unfiltered queries", t.seconds)
    if args.recall_queries > args.queries:
        with Stopwatch() as t:
            result["recall_more"] = more_recall(b, args.recall_queries)
        phase(f"recall over {args.recall_queries} queries", t.seconds)
    if filtered_too:
        with Stopwatch() as t:
            result["filtered"] = filtered(b)
        phase("filtered queries", t.seconds)
    b.close()
    return result


def sizes(url: str) -> tuple[float, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0), pg_total_relation_size('image_vectors') "
            "FROM pg_index WHERE indrelid = 'image_vectors'::regclass AND pg_get_indexdef(indexrelid) LIKE '%hnsw%'"
        ).fetchone()
    assert row is not None
    return float(row[0]) / 2**20, float(row[1]) / 2**20


def describe(spec: IndexSpec) -> str:
    return f"{spec.precision} m={spec.m} ef_construction={spec.ef_construction}"


def unfiltered(b: Bench) -> list[dict[str, Any]]:
    """The four paths at the default ef_search (the store as the settings make it), with the control
    (raw pgvector on the store's connection) and Searcher.text with read links there, and at other values."""
    log(f"[{b.kind}] unfiltered queries")
    sweep: list[dict[str, Any]] = []
    rows = []
    efs = QUICK_EF_SWEEP if b.quick else EF_SWEEP
    for ef in (None, *efs):
        store = b.store(ef)
        used = store.vectors.effective_ef_search(b.model, K + 1)  # what the Searcher's k + 1 rows ran with
        b.set_ef(used)
        paths = [b.raw_path(), b.rerank_path(), b.store_path(store), b.searcher_path(store)]
        if ef is None:
            paths += [b.raw_on_search_connection_path(store), b.searcher_path(store, links=True)]
        measure(paths, b.exact, b.nq, TARGET_ROUNDS if ef is None and not b.quick else 1)
        if ef is None:
            b.check_search_connection(b.search_connection(), store)
        label = f"{used} (default: {DEFAULT_EF or 'auto'})" if ef is None else used
        rows += [row(label, p, None if i == 0 else paths[0], None if i < 2 else paths[1]) for i, p in enumerate(paths)]
        sweep.append(
            {
                "ef_search": used,
                "default": ef is None,
                **{p.name: as_json(p, None if i == 0 else paths[0]) for i, p in enumerate(paths)},
                "vs_rerank": {p.name: as_json(p, paths[1]) for p in paths[2:4]},
            }
        )
        if ef is None:  # the targets' figures: how far they move between samples
            for p in paths[2:]:
                sweep[-1][p.name]["p95_ratio_interval"] = p95_ratio_interval(p, paths[0])
            same = paths[4]  # raw pgvector on the store's connection
            sweep[-1]["vs_store_connection"] = {
                p.name: {**as_json(p, same), "p95_ratio_interval": p95_ratio_interval(p, same)}
                for p in (paths[2], paths[3], paths[5])
            }
    table(
        f"Search: {b.n:,} {b.kind} vectors x 1024-d, {b.nq} queries, k={K}, recall@{K}",
        HEADERS,
        rows,
    )
    return sweep


def largest_k(b: Bench) -> dict[str, Any]:
    """k = 100, the API's largest: the project at its default settings against raw pgvector at the
    ef_search the project used for it, and at the one a search used to get (just above k)."""
    store = b.store()
    used = store.vectors.effective_ef_search(b.model, K_MAX + 1)
    narrow = max(store.vectors.effective_ef_search(b.model, K), K_MAX + 2)
    b.set_ef(narrow)
    before = [b.raw_path(K_MAX)]
    measure(before, b.exact_max, b.nq)
    b.set_ef(used)
    paths = [b.raw_path(K_MAX), b.searcher_path(store, K_MAX)]
    measure(paths, b.exact_max, b.nq)
    table(
        f"k={K_MAX}: recall@{K_MAX} at the default settings (the project used ef_search {used})",
        HEADERS[:7],
        [row(narrow, before[0])[:7], *[row(used, p, None if i == 0 else paths[0])[:7] for i, p in enumerate(paths)]],
    )
    return {
        "ef_search": used,
        "raw pgvector at ef_search just above k": {"ef_search": narrow, **as_json(before[0])},
        **{p.name: as_json(p, None if i == 0 else paths[0]) for i, p in enumerate(paths)},
    }


def more_recall(b: Bench, nq: int) -> dict[str, Any]:
    """Recall@10 of Store.search at the default settings over ``nq`` other queries (from the same
    distribution): at a million the queries missed are missed whole, so a sample of 100 or 200 moves
    recall by a point per query."""
    log(f"[{b.kind}] recall at the default settings over {nq} queries")
    qv = data.queries(nq, kind=b.kind, sample=1)
    exact = [[int(b.ids[i]) for i in top] for top in exact_top(b.vectors, qv, K)]
    store = b.store()
    path = Path("Store.search", lambda q: [h.id for h in store.vectors.search(b.model, qv[q], K).hits])
    measure([path], exact, nq)
    out = {
        "queries": nq,
        "ef_search": store.vectors.effective_ef_search(b.model, K),
        **as_json(path),
        "queries_with_none_of_their_ten": sum(1 for r in path.recalls if r == 0),
        "queries_below_0_5": sum(1 for r in path.recalls if r < 0.5),
    }
    table(
        f"Recall@{K} of Store.search at the default settings (ef_search {out['ef_search']}), {nq} other queries",
        ["queries", "recall", "none of ten", "below 0.5", "p50 ms", "p95 ms"],
        [
            [
                nq,
                out["recall"],
                out["queries_with_none_of_their_ten"],
                out["queries_below_0_5"],
                out["p50_ms"],
                out["p95_ms"],
            ]
        ],
    )
    return out


def new_filter_path(b: Bench, filters: Filters) -> Path:
    """Searcher.text as the first query with its filter: the store remembers a filter's count for 30 s,
    which the same filter 200 times in a row would otherwise hide."""
    store = b.store()
    searcher = b.searcher(store)
    options = Options(k=K, filters=filters)

    def run(q: int) -> list[int]:
        store.vectors.forget_counts()
        return [r.id for r in searcher.text(f"benchmark query {q}", options).results]

    return Path("Searcher.text, a new filter", run)


def filtered(b: Bench) -> list[dict[str, Any]]:
    """Name prefix and content type filters matching 10 % and 1 % of the rows, at the default settings."""
    log(f"[{b.kind}] filtered queries")
    names = [data.name_of(i) for i in range(b.n)]
    png = np.array([i % 10 == 3 for i in range(b.n)])
    store = b.store()
    ef = store.vectors.effective_ef_search(b.model, K + 1)
    threshold = store.vectors.exact_threshold(b.model)
    b.set_ef(ef)
    b.raw.execute("RESET enable_sort")  # raw pgvector here is the plan PostgreSQL picks, for contrast
    out, rows = [], []
    for label, spec in data.FILTERS.items():
        prefix = spec.get("prefix")
        types = tuple(spec.get("content_types", ()))
        if prefix is not None:
            mask = np.array([name.startswith(prefix) for name in names])
            cond, value = sql.SQL("i.name LIKE %s"), prefix + "%"
        else:
            mask = png
            cond, value = sql.SQL("i.content_type = ANY(%s)"), list(types)
        exact = [[int(b.ids[i]) for i in top] for top in exact_top(b.vectors, b.queries, K, mask)]
        stmt = sql.SQL(
            "SELECT v.image_id FROM image_vectors v JOIN images i ON i.id = v.image_id "
            "WHERE v.model_id = {model} AND {cond} ORDER BY {approx} LIMIT {k}"
        ).format(model=sql.Literal(MODEL), cond=cond, approx=_approx(b.model, "%s", "v.embedding"), k=sql.Literal(K))

        def raw(q: int, stmt: sql.Composable = stmt, value: Any = value) -> list[int]:
            return [r[0] for r in b.raw.execute(stmt, (value, b.queries[q]))]

        where = SearchFilters(container=CONTAINER, prefix=prefix, content_types=types)
        # As warm() for the unfiltered queries: every query once through the store, unmeasured, so that
        # the pages a filtered search reads (deeper in the graph, and other rows) are read before any
        # path is measured; otherwise whichever path meets a query first pays its cold reads.
        warming = b.store_path(store, filters=where)
        for q in range(b.nq):
            warming.run(q)
        strategies: list[str] = []
        result: dict[str, Any] = {"filter": label, "matching_rows": int(mask.sum())}
        for mode in ("off", "relaxed_order"):
            b.raw.execute(sql.SQL("SET hnsw.iterative_scan = {}").format(sql.Literal(mode)))
            paths = [Path(f"raw pgvector, iterative_scan={mode}", raw)]
            if mode == "relaxed_order":
                paths += [
                    b.store_path(store, filters=where, strategies=strategies),
                    b.searcher_path(store, filters=Filters(prefix=prefix, content_types=types)),
                    new_filter_path(b, Filters(prefix=prefix, content_types=types)),
                ]
            measure(paths, exact, b.nq)
            for p in paths:
                result[p.name] = as_json(p)
                rows.append([f"{label} ({int(mask.sum()):,} rows)", *row(ef, p)[1:6]])
        b.raw.execute("RESET hnsw.iterative_scan")
        result["strategies"] = {s: strategies.count(s) for s in sorted(set(strategies))}
        result["exact_scan_threshold"] = threshold
        if int(mask.sum()) <= FORCED_UP_TO * threshold:  # near the threshold: how each strategy does alone
            forced = [b.store_path(store, filters=where, strategy=s) for s in ("exact", "index")]
            measure(forced, exact, b.nq)
            for p in forced:
                result[p.name] = as_json(p)
                rows.append([f"{label} ({int(mask.sum()):,} rows)", *row(ef, p)[1:6]])
        try:  # the plan of the project's index path, for whoever wonders where the time goes
            plan = store.vectors.explain_nearest(
                b.model, b.queries[0], K, filters=where, strategy="index", analyze=True
            )
            result["index_plan"] = re.sub(r"'\[[^']*\]'", "'[vector]'", plan)
        except Exception as exc:  # diagnostics only: never fail the benchmark over it
            result["index_plan"] = f"(no plan: {type(exc).__name__}: {exc})"
        out.append(result)
    table(
        f"Filtered search: {b.n:,} vectors, {b.nq} queries, k={K}, ef_search={ef} (the project must return k rows)",
        ["filter", "path", "recall", "min rows", "p50 ms", "p95 ms"],
        rows,
    )
    table(
        f"The strategy an auto search chose (exact scan up to {threshold:,} matching rows at this size)",
        ["filter", "matching rows", "strategies chosen"],
        [[r["filter"], r["matching_rows"], r["strategies"]] for r in out],
    )
    return out


def targets(first: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on the default vector kind at the default settings."""
    default = next(s for s in first["unfiltered"] if s["default"])
    project = default["Searcher.text"]
    same = default["vs_store_connection"]["Searcher.text"]
    out: dict[str, Any] = {
        "recall_at_default": project["recall"],
        "recall_met": project["recall"] >= TARGETS["recall"],
        "p95_x_raw": project["p95_ratio"],
        "p95_x_raw_interval": project["p95_ratio_interval"],
        "p95_x_rerank": default["vs_rerank"]["Searcher.text"]["p95_ratio"],
        "store_p95_x_raw": default["Store.search"]["p95_ratio"],
        "store_p95_x_raw_interval": default["Store.search"]["p95_ratio_interval"],
        "with_links_p95_x_raw": default["Searcher.text, read links"]["p95_ratio"],
        "with_links_p95_x_raw_interval": default["Searcher.text, read links"]["p95_ratio_interval"],
        "control_p95_x_raw": default[CONTROL]["p95_ratio"],
        "control_p95_x_raw_interval": default[CONTROL]["p95_ratio_interval"],
        "same_connection": default["vs_store_connection"],
        "p95_met": project["p95_ratio"] <= TARGETS["p95_ratio"],
        "p95_met_same_connection": same["p95_ratio"] <= TARGETS["p95_ratio"],
        "targets": TARGETS,
    }
    if "recall_more" in first:
        out["recall_more"] = first["recall_more"]
    if "filtered" in first:
        ceiling = TARGETS["filtered_p95_ratio"] * project["p95_ms"]
        # Judged on the first query with each filter (nothing remembered), the slower of the two.
        worst = "Searcher.text, a new filter"
        out["filtered"] = {
            f["filter"]: {
                "min_rows": min(f[worst]["min_count"], f["Searcher.text"]["min_count"]),
                "recall": min(f[worst]["recall"], f["Searcher.text"]["recall"]),
                "p95_ms": f[worst]["p95_ms"],
                "p95_x_unfiltered": f[worst]["p95_ms"] / project["p95_ms"],
                "met": min(f[worst]["min_count"], f["Searcher.text"]["min_count"]) >= K
                and min(f[worst]["recall"], f["Searcher.text"]["recall"]) >= TARGETS["filtered_recall"]
                and f[worst]["p95_ms"] <= ceiling,
            }
            for f in first["filtered"]
        }
    return out


def _with_interval(ratio: float, interval: list[float]) -> str:
    return f"{ratio:.2f} ({interval[0]:.2f}-{interval[1]:.2f})"


def report(result: dict[str, Any]) -> None:
    t = result["targets"]
    rows = [
        ["recall@10 at the default settings", f">= {TARGETS['recall']}", t["recall_at_default"], t["recall_met"]],
    ]
    if "recall_more" in t:
        more = t["recall_more"]
        rows.append(
            [
                f"recall@10 at the default settings, {more['queries']} other queries (Store.search)",
                f">= {TARGETS['recall']}",
                more["recall"],
                more["recall"] >= TARGETS["recall"],
            ]
        )
    rows += [
        [
            "Searcher.text p95 / raw pgvector p95 (95 % interval by resampling)",
            f"<= {TARGETS['p95_ratio']}",
            _with_interval(t["p95_x_raw"], t["p95_x_raw_interval"]),
            t["p95_met"],
        ],
        ["Searcher.text p95 / raw re-rank p95", "", t["p95_x_rerank"], None],
        [
            "Store.search p95 / raw pgvector p95 (95 % interval by resampling)",
            "",
            _with_interval(t["store_p95_x_raw"], t["store_p95_x_raw_interval"]),
            None,
        ],
        [
            "Searcher.text with each result's read link (the HTTP answer's) p95 / raw pgvector p95",
            "",
            _with_interval(t["with_links_p95_x_raw"], t["with_links_p95_x_raw_interval"]),
            None,
        ],
        [
            "control: raw pgvector on the store's connection (another backend) p95 / raw pgvector p95",
            "",
            _with_interval(t["control_p95_x_raw"], t["control_p95_x_raw_interval"]),
            None,
        ],
    ]
    for name, figures in t["same_connection"].items():
        rows.append(
            [
                f"{name} p95 / raw pgvector on the same connection p95",
                f"<= {TARGETS['p95_ratio']}" if name == "Searcher.text" else "",
                _with_interval(figures["p95_ratio"], figures["p95_ratio_interval"]),
                t["p95_met_same_connection"] if name == "Searcher.text" else None,
            ]
        )
    for name, f in t.get("filtered", {}).items():
        rows.append(
            [
                f"filtered {name} (a new filter): min rows, recall, p95 x unfiltered",
                f"10, >= {TARGETS['filtered_recall']}, <= {TARGETS['filtered_p95_ratio']}",
                f"{f['min_rows']}, {f['recall']:.3f}, {f['p95_x_unfiltered']:.2f}",
                f["met"],
            ]
        )
    table("Targets (default vector kind, default settings)", ["target", "goal", "measured", "met"], rows)
    table(
        "Time taken (target for the whole run at 1,000,000 on 16 cores: 600 s; "
        f"here {result['machine']['nproc']} cores)",
        ["phase", "seconds"],
        [[name, seconds] for name, seconds in result["phases"].items()],
    )


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--n", type=int, help="vectors (default 100,000; quick 10,000)")
    p.add_argument("--queries", type=int, default=200, help="queries per setting (default 200)")
    p.add_argument(
        "--dataset",
        choices=[*data.KINDS, "both"],
        help=f"vector kind (bench/data.py); default: both in full mode up to {FULL_MAX:,} vectors, else embedding",
    )
    p.add_argument("--workers", type=int, help="parallel workers for the index build, with memory to match")
    p.add_argument(
        "--recall-queries",
        type=int,
        default=0,
        help="also measure recall@10 of Store.search at the default settings over this many other queries",
    )
    p.add_argument(
        "--copy-baseline",
        action="store_true",
        help="also time plain COPY of the same rows (same constraints) before the load: the bulk path's ratio",
    )
    args = p.parse_args()
    if args.queries < 20:
        p.error(f"--queries {args.queries}: give at least 20 (a p95 of fewer timings says little)")
    args.n = args.n or (10_000 if args.quick else 100_000)
    full = not args.quick and args.n <= FULL_MAX
    chosen = args.dataset or ("both" if full else "embedding")
    args.kinds = list(data.KINDS) if chosen == "both" else [chosen]
    write_json("search", run(args), args.out)


if __name__ == "__main__":
    main()
