"""Vector search: the images nearest to a query vector under one model, with filters and keyset paging."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import numpy as np
import psycopg
from pgvector import Vector as PgVector
from psycopg import sql

from .db import Database, search_cursor, translate_errors
from .embeddings import Vector
from .errors import InvalidInput
from .registry import Model

log = logging.getLogger(__name__)

UNFILTERED_COUNT_SECONDS = 30.0
LARGE_COUNT_SECONDS = 600.0
FILTERED_COUNT_SECONDS = 30.0
MAX_REMEMBERED_COUNTS = 1_024
ESTIMATE_TRUSTED = 2
MAX_REMEMBERED_STATEMENTS = 256
# Searches on a single node run without parallel workers (max_parallel_workers_per_gather 0, a setting of
# the search pool's sessions). A search reads an index's candidates or, by the exact scan, a few thousand
# rows at most, where starting workers costs more than it saves (below), and workers one search takes are
# taken from the searches beside it. Only an exact scan a search falls back to over many rows (the index
# found too few) could gain from them.
SERIAL: Final = {"max_parallel_workers_per_gather": "0"}
# _PLANNED_EACH_TIME: the exact scan is planned with its filter's values every time, never prepared. A
# plan PostgreSQL keeps for a prepared statement is made without the values, and for a name range it
# was seen to read every vector of the model and filter them in `images` afterwards: at a million, a
# whole-table read. Planned each time, with parallel workers off (SERIAL): measured (100,000 images, a 1 %
# prefix, 2 cores, one connection) 3.9 ms p50, against 8.4 ms for the parallel plan PostgreSQL picked
# with workers allowed, and 3.1 ms for a prepared plan that read the name index (planning is the rest).


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3-4 times as much, per row read
class Hit:
    """One search result: the image and its cosine distance to the query."""

    id: int
    name: str
    distance: float
    content_type: str | None
    width: int | None
    height: int | None
    byte_size: int | None = None
    thumbnail: bool = False

    @property
    def score(self) -> float:
        return 1.0 - self.distance


# --- search: filters, keyset position, strategies -----------------------------------------------
SEARCH_STRATEGIES: Final = ("auto", "exact", "index")
# At or below this many matching rows an exact scan (every matching vector, sorted) is both exact
# and cheaper than the index; above it the HNSW index answers. Measured on 100,000 vectors (2 cores,
# filters keeping 1-4 %, 40 queries each, the index path as below): p95 of the exact scan against the
# index path 7.2 / 65.1 ms at 972 rows, 18.5 / 26.7 at 1,978, 20.0 / 21.5 at 2,492, 25.7 / 16.2 at
# 2,969: they cross near 2,500. Under a filter that keeps a fraction s of N vectors the index visits
# about k / s candidates to find k that match and the exact scan reads s * N rows, so where they cross
# grows with the collection: as sqrt(N) if each row cost the same at every size, more slowly as the
# exact scan's rows get dearer in a larger table. At a million (16 cores, the index path then fetching
# 30 rows for 10) a 10,000-row filter took 68 / 88 ms (p50 / p95) by the exact scan and 41 / 55 ms by
# the index, crossing near 7,900 rows; with 20 rows fetched the index path costs about 0.6 of that
# (measured at 100,000) and the crossing moves to about 6,100. EXACT_SCAN_GROWTH fits both ends.
EXACT_SCAN_MAX_ROWS: Final = 2_500
EXACT_SCAN_ROWS: Final = 100_000
EXACT_SCAN_GROWTH: Final = 0.4
# Below EXACT_SCAN_ROWS it shrinks the same way, to no fewer rows than this: reading 1,000 vectors
# costs a few milliseconds.
EXACT_SCAN_MIN_ROWS: Final = 1_000
# pgvector's own default, stated here because the fallback below depends on it: an iterative scan
# that visits this many tuples without finding enough matches stops, and the exact scan takes over.
HNSW_MAX_SCAN_TUPLES: Final = 20_000
# pgvector < 0.8 has no iterative scans: a filtered query can only widen the candidate list, to at
# most 1000 (hnsw.ef_search's upper bound).
HNSW_MAX_EF_SEARCH: Final = 1_000
# hnsw.ef_search when HNSW_EF_SEARCH is `auto` (the default): AUTO_EF_SEARCH up to AUTO_EF_ROWS vectors,
# growing with the collection beyond (193 at 300,000, 505 at a million, the maximum 1,000 from 2.4
# million). At a fixed ef_search recall falls as the collection grows, and at a million the queries
# missed are missed whole: the search stays in a part of the graph away from the true ten. With the
# default index (m 32, ef_construction 128) on clustered 1024-d vectors, a million built on 2 cores,
# 1,000 queries: recall@10 0.973 at 120, 0.987 at 253, 0.991 at 400, 0.994 at 500 and 600 (p50 8.2,
# 9.8, 11.7, 13.2, 14.7 ms); a build by 15 workers on 16 cores gave 0.969 at 253 (100 queries).
# Recall first, then latency: the growth reaches 500 at a million (bench/RESULTS.md).
AUTO_EF_SEARCH: Final = 80
AUTO_EF_ROWS: Final = 100_000
AUTO_EF_GROWTH: Final = 0.8
# At least this many candidates per row fetched: with k = 100 an ef_search of 101 finds noticeably
# fewer of the true 100 nearest than twice that.
EF_PER_ROW: Final = 2
# relaxed_order returns rows slightly out of order: under a filter the index path fetches more than it
# returns, half as many again and at least INDEX_SLACK_ROWS more, so the re-sort can put late arrivals in
# their place. Each row fetched under a filter keeping a fraction s costs about 1 / s candidates visited.
# On 100,000 vectors (2 cores, k = 10) fetching 20 rows instead of 30 took p95 from 33.7 to 17.5 ms at
# 3.5 % and from 89.6 to 57.1 ms at 1 %. Then 15 instead of 20 (p50 / p95, recall@10): a million, a 1 %
# prefix (the index path's, 10,000 rows) 26.9 / 33.9 ms -> 22.7 / 28.6 ms, recall 0.998 both; 100,000, a
# 10 % prefix 2.7 / 3.4 -> 2.3 / 3.0 ms, recall 1.000 both; 100,000, 1 % forced onto the index (the exact
# scan answers it unless forced) recall 0.981 -> 0.969.
INDEX_SLACK_ROWS: Final = 5


def auto_ef_search(rows: int | None) -> int:
    """The ef_search of HNSW_EF_SEARCH=auto for a collection of ``rows`` vectors (None: not known)."""
    if rows is None or rows <= AUTO_EF_ROWS:
        return AUTO_EF_SEARCH
    return min(HNSW_MAX_EF_SEARCH, math.ceil(AUTO_EF_SEARCH * math.pow(rows / AUTO_EF_ROWS, AUTO_EF_GROWTH)))


def exact_scan_threshold(rows: int | None) -> int:
    """The most matching rows an ``auto`` search reads with the exact scan, in a collection of ``rows``
    vectors: EXACT_SCAN_MAX_ROWS at EXACT_SCAN_ROWS (and when the size is not known), elsewhere in
    proportion to the collection's size to the power EXACT_SCAN_GROWTH (6,280 at a million), never
    below EXACT_SCAN_MIN_ROWS."""
    if rows is None:
        return EXACT_SCAN_MAX_ROWS
    scaled = EXACT_SCAN_MAX_ROWS * math.pow(rows / EXACT_SCAN_ROWS, EXACT_SCAN_GROWTH)
    return max(EXACT_SCAN_MIN_ROWS, math.ceil(scaled))


@dataclass(frozen=True)
class SearchFilters:
    """Which images a search may return, besides being indexed under the query's model.

    ``uploaded_after`` (inclusive) and ``uploaded_before`` (exclusive) apply to the blob's
    Last-Modified time, or to the time the row was created when Storage reported none.
    """

    container: str | None = None
    prefix: str | None = None
    content_types: tuple[str, ...] = ()
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    exclude_id: int | None = None


@dataclass(frozen=True)
class After:
    """Keyset position: results strictly after (distance, id) in the order (distance, id)."""

    distance: float
    id: int


@dataclass(frozen=True)
class Nearest:
    """The hits of one search, and how they were found (``exact``, ``index`` or ``index+exact``)."""

    hits: list[Hit]
    strategy: str


@dataclass(frozen=True)
class ImageStatistics:
    """What ANALYZE last found of ``images``: its rows (``reltuples``; -1 never counted), the share of
    each most common value of ``content_type`` and ``container``, and the names' histogram: its bounds
    (about a hundred names splitting the rest of the names into equal shares) and the share of rows
    it covers (neither null nor a most common value)."""

    rows: float
    common: dict[str, dict[str, float]]
    name_bounds: tuple[str, ...] = ()
    name_histogram_share: float = 0.0

    @classmethod
    def from_rows(cls, found: Sequence[Sequence[Any]]) -> ImageStatistics:
        """From rows of (reltuples, column, null_frac, most common values, their shares, histogram bounds)."""
        rows = float(found[0][0]) if found and found[0][0] is not None else -1.0
        common: dict[str, dict[str, float]] = {}
        bounds: tuple[str, ...] = ()
        histogram = 0.0
        for _, column, nulls, values, freqs, histogram_bounds in found:
            if column is None:
                continue
            if values is not None and freqs is not None:
                common[str(column)] = dict(zip(values, (float(f) for f in freqs), strict=True))
            if column == "name" and histogram_bounds:
                bounds = tuple(histogram_bounds)
                histogram = max(0.0, 1.0 - float(nulls or 0.0) - sum(common.get("name", {}).values()))
        return cls(rows, common, bounds, histogram)

    def prefix_share(self, prefix: str) -> float | None:
        """The share of names that start with ``prefix`` (None without a histogram of names): when n of
        the histogram's bounds start with it, n - 1 of its equal shares, plus the most common names that
        start with it. In byte order (the C collation) the names sharing a prefix sort together and this
        is a lower bound; in a language's collation (Azure's databases are en_US.utf8) they may
        interleave with others, and the bounds are then a sample of about one name in each share."""
        if len(self.name_bounds) < 2:
            return None
        inside = sum(1 for bound in self.name_bounds if bound.startswith(prefix))
        share = self.name_histogram_share * max(0, inside - 1) / (len(self.name_bounds) - 1)
        return share + sum(f for name, f in self.common.get("name", {}).items() if name.startswith(prefix))


class VectorSearch:
    """Nearest-neighbour queries over ``image_vectors`` joined to ``images``."""

    def __init__(self, db: Database, *, ef_search: int | None = None) -> None:
        self.db = db
        self.ef_search = ef_search
        self._counts: dict[tuple[Any, ...], tuple[int, float]] = {}
        self._sizes: dict[tuple[str, str], tuple[int, float]] = {}
        self._statements: dict[tuple[Any, ...], str] = {}
        self._statistics: tuple[float, ImageStatistics] | None = None

    def nearest(
        self,
        model: Model,
        vector: Vector,
        k: int,
        *,
        exclude_id: int | None = None,
        ef_search: int | None = None,
        filters: SearchFilters | None = None,
        after: After | None = None,
        max_distance: float | None = None,
        strategy: str = "auto",
    ) -> list[Hit]:
        """The k images nearest to ``vector`` under ``model``, by cosine distance then id."""
        if exclude_id is not None:
            filters = replace(filters or SearchFilters(), exclude_id=exclude_id)
        return self.search(
            model,
            vector,
            k,
            filters=filters,
            after=after,
            max_distance=max_distance,
            strategy=strategy,
            ef_search=ef_search,
        ).hits

    # Filtered search under HNSW. An HNSW scan applies WHERE clauses to the candidates it found, so
    # with a selective filter it returns fewer than k rows although more match. The strategy:
    # 1. Count the images that may match, stopping past the threshold (see _choose). At or below it
    #    an exact scan is cheap and exact: every matching row's distance to the query, sorted by
    #    (distance, id), a distance no index orders by (so the planner cannot hand the ORDER BY to one).
    # 2. Above it, the index with pgvector 0.8's iterative scan in relaxed_order: the scan continues
    #    past ef_search until enough rows pass the filter (or HNSW_MAX_SCAN_TUPLES were visited).
    #    relaxed_order because it finds more of the true neighbours under a filter than strict_order
    #    (measured here: recall@10 0.89 against 0.77 with a 1 % filter); its slightly unordered rows are
    #    fetched with some slack into a MATERIALIZED CTE and re-sorted by (distance, id), as the
    #    pgvector README recommends. pgvector < 0.8 (Cosmos DB for PostgreSQL has 0.7) has no
    #    iterative scans: a filtered query widens ef_search to its maximum instead.
    # 3. The index path cannot always tell "no more rows match" from "the scan gave up", or see the
    #    end of a run of equal distances cut by its LIMIT. When it returns fewer rows than asked the
    #    exact scan answers instead; when the last row it would return ties with the last row it
    #    fetched (duplicate images), it asks the index again for more rows, and only when the tie
    #    runs past what the index can give does the exact scan answer. So a filtered query returns k
    #    rows whenever at least k rows match, whatever the pgvector version, and a keyset cursor
    #    (distance, id) never skips a tied row at a page edge.
    # Once the strategy is the index, the planner is held to the plan that reads it in distance order
    # (enable_sort off; on Citus only when the index is forced): pgvector 0.8 prices an HNSW scan by
    # ef_search, and at a large ef_search (100,000 vectors, ef_search 400) or under a filter the planner
    # would otherwise pick an exact plan that reads every matching vector.
    exact_scan_max_rows: int | None = None  # None: by the collection's size (exact_scan_threshold)
    max_scan_tuples: int = HNSW_MAX_SCAN_TUPLES

    def search(
        self,
        model: Model,
        vector: Vector,
        limit: int,
        *,
        filters: SearchFilters | None = None,
        after: After | None = None,
        max_distance: float | None = None,
        strategy: str = "auto",
        ef_search: int | None = None,
    ) -> Nearest:
        """The first ``limit`` matching images after ``after`` in (distance, id) order, no farther than
        ``max_distance``. ``strategy``: ``auto``, or ``exact`` / ``index`` to force one (tests, benchmarks)."""
        query = self._query_vector(model, vector)
        filters = filters or SearchFilters()
        if strategy not in SEARCH_STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(SEARCH_STRATEGIES)}, not {strategy!r}")
        if limit < 1:
            return Nearest([], "exact")
        chosen = strategy
        if strategy == "auto":
            chosen, answered = self._choose(model, query, limit, filters, after, max_distance)
            if answered is not None:
                return Nearest(answered, "exact")
        if chosen == "index":
            rows = self._index_search(model, query, limit, filters, after, ef_search, forced=strategy == "index")
            if rows is not None:
                return Nearest([h for h in rows if max_distance is None or h.distance <= max_distance], "index")
            chosen = "index+exact"
        return Nearest(self._exact_scan(model, query, limit, filters, after, max_distance), chosen)

    def exact_threshold(self, model: Model) -> int:
        """The most matching rows the exact scan answers for (``exact_scan_max_rows`` when set, else by
        the size of the model's index: see :func:`exact_scan_threshold`)."""
        if self.exact_scan_max_rows is not None:
            return self.exact_scan_max_rows
        return exact_scan_threshold(self._indexed_rows(model))

    def _choose(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
    ) -> tuple[str, list[Hit] | None]:
        """The strategy of an ``auto`` search (``exact`` or ``index``), and its hits when the step that
        decided has already found them.

        How many rows match decides, and it is remembered for a while: either choice is correct (the
        index path falls back to an exact scan when it finds too few rows), a stale one only slower.
        Without filters it only changes as the collection grows or shrinks (``UNFILTERED_COUNT_SECONDS``,
        or ``LARGE_COUNT_SECONDS`` far above the threshold); a filter's is kept ``FILTERED_COUNT_SECONDS``,
        for the next page of the same query. Leaving out one image (``exclude_id``, "more like this")
        changes no decision.

        Not known yet, it is learnt in the cheapest way that can tell:
        - Without a filter, from the rows the model's index held when PostgreSQL last counted them, when
          that is ESTIMATE_TRUSTED times the threshold or more (no statement: remembered for
          LARGE_COUNT_SECONDS).
        - With a filter by content type and/or name prefix (and container) alone, from ANALYZE's
          statistics of those columns (see _estimated_images), when that is ESTIMATE_TRUSTED times the
          threshold or more.
        - Otherwise one statement counts the images that may match from the filter's index, no more
          than the threshold's plus one, and only when there are no more than the threshold runs the
          exact scan, whose hits are the answer. The count costs less than asking the planner for its
          estimate did (an EXPLAIN: 0.5-0.9 ms through the pool on 2 cores; the count of 2,501 names
          from the index 0.2-0.4 ms, of 6,281 at a million 0.6 ms), and it is not an estimate: a filter
          above the threshold costs a short count before the index answers, not an exact scan of the
          threshold's rows (at a million, 6,281 rows joined and read for nothing)."""
        threshold = self.exact_threshold(model)
        counted = filters if filters.exclude_id is None else replace(filters, exclude_id=None)
        key = (model.model_id, counted)
        now = time.monotonic()
        known = self._counts.get(key)
        if known is not None:
            if not _narrows(counted):
                # A collection far above the threshold does not shrink below it in minutes.
                ttl = UNFILTERED_COUNT_SECONDS if known[0] <= threshold else LARGE_COUNT_SECONDS
            else:
                ttl = FILTERED_COUNT_SECONDS
            if now - known[1] < ttl:
                return ("exact" if known[0] <= threshold else "index"), None
        answered: list[Hit] | None = None
        count = -1
        if not _narrows(counted):
            # Without a filter, the rows the model's index holds (None on Citus, or never counted).
            indexed = self._indexed_rows(model)
            if indexed is not None and indexed >= ESTIMATE_TRUSTED * (threshold + 1):
                count = indexed
        else:
            # A filter by content type or prefix alone, from ANALYZE's statistics (None when unknown).
            estimated = self._estimated_images(counted)
            if estimated is not None and estimated >= ESTIMATE_TRUSTED * (threshold + 1):
                count = estimated
        if count < 0:
            hits, count = self._counted_scan(model, query, limit, filters, after, max_distance, threshold + 1)
            if count <= threshold:
                answered = hits
        self._remember_count(key, count, now)
        return ("exact" if count <= threshold else "index"), answered

    def _estimated_images(self, filters: SearchFilters) -> int | None:
        """How many images ``filters`` keep by PostgreSQL's statistics of ``images`` (what ANALYZE last
        found, see :class:`ImageStatistics`), when they filter by content type, name prefix and
        container alone and the statistics know each value asked for; None otherwise, and on Citus (its
        coordinator keeps no statistics of the shards). Common filters then need no count: measured
        (100,000 images, 2 cores, Searcher.text), a new 10 % content-type filter took p95 5.9 ms with
        its count, the same filter once its count was known 4.2 ms; a new 10 % prefix 5.2 ms with its
        count, 3.7 ms known. The filters are taken as independent. Statistics out of date never cost
        rows: a filter they put too high goes to the index path, which falls back to the exact scan when
        it finds fewer than asked; but its rows are then the index's approximate ones, as for any common
        filter, where the count would have chosen the exact scan. Autovacuum analyzes ``images`` again
        once about a tenth of its rows have changed (PostgreSQL's default scale factor, 0.1)."""
        if filters.uploaded_after is not None or filters.uploaded_before is not None:
            return None
        if not (filters.content_types or filters.prefix) or self.db.is_citus():
            return None
        stats = self._image_statistics()
        if stats.rows <= 0:
            return None
        share = 1.0
        if filters.content_types:
            types = stats.common.get("content_type", {})
            if not all(t in types for t in set(filters.content_types)):
                return None
            share *= sum(types[t] for t in set(filters.content_types))
        if filters.prefix:
            named = stats.prefix_share(filters.prefix)
            if named is None:
                return None
            share *= named
        if filters.container is not None:
            containers = stats.common.get("container", {})
            if filters.container not in containers:
                return None
            share *= containers[filters.container]
        return int(stats.rows * share)

    def _image_statistics(self) -> ImageStatistics:
        """What ANALYZE last found of ``images``, remembered for LARGE_COUNT_SECONDS."""
        now = time.monotonic()
        if self._statistics is not None and now - self._statistics[0] < LARGE_COUNT_SECONDS:
            return self._statistics[1]

        def read(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                "SELECT c.reltuples, s.attname, s.null_frac, s.most_common_vals::text::text[], s.most_common_freqs,"
                " s.histogram_bounds::text::text[] FROM pg_class c LEFT JOIN pg_stats s"
                " ON s.schemaname = current_schema() AND s.tablename = 'images'"
                " AND s.attname IN ('content_type', 'container', 'name')"
                " WHERE c.oid = to_regclass('images')"
            ).fetchall()

        with translate_errors("searching"):
            found = self.db.read(read)
        stats = ImageStatistics.from_rows(found)
        self._statistics = (now, stats)
        return stats

    def _remember_count(self, key: tuple[Any, ...], count: int, now: float) -> None:
        if len(self._counts) >= MAX_REMEMBERED_COUNTS:
            self._counts = {k: v for k, v in self._counts.items() if now - v[1] < FILTERED_COUNT_SECONDS}
            if len(self._counts) >= MAX_REMEMBERED_COUNTS:
                self._counts.clear()
        self._counts[key] = (count, now)

    def forget_counts(self) -> None:
        """Forget the remembered counts (benchmarks: every query as if its filter were new)."""
        self._counts = {}

    @staticmethod
    def _query_vector(model: Model, vector: Vector) -> Vector:
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (model.dimension,):
            raise InvalidInput(
                f"query vector has {query.size} dimensions; model {model.model_id} has {model.dimension}"
            )
        return query

    def _index_search(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        ef_search: int | None,
        *,
        forced: bool = False,
    ) -> list[Hit] | None:
        """The first ``limit`` rows in (distance, id) order by the index, or None when only an exact scan
        can answer (too few rows found, or a run of equal distances longer than the index can give)."""
        # Without a filter (or a cursor, which filters too) the index hands over its first ef_search
        # candidates in order: one row beyond the limit shows whether the last one ties with the next.
        # Under a filter, relaxed_order's late arrivals need the slack.
        narrowed = _narrows(filters) or after is not None
        fetch = limit + (max(limit // 2, INDEX_SLACK_ROWS) if narrowed else 1)
        while True:
            rows = self._index_scan(model, query, fetch, filters, after, ef_search, forced=forced)
            if len(rows) < limit:
                log.info("index scan found %d rows for %d asked; answering with an exact scan", len(rows), limit)
                return None
            if len(rows) < fetch or rows[limit - 1].distance < rows[-1].distance:
                return rows[:limit]
            if fetch >= HNSW_MAX_EF_SEARCH:
                log.info("a run of equal distances longer than the index gives; answering with an exact scan")
                return None
            fetch = min(4 * fetch, HNSW_MAX_EF_SEARCH)

    def _index_sql(
        self, model: Model, filters: SearchFilters, after: After | None, fetch: int
    ) -> tuple[str, dict[str, Any]]:
        """The index path: candidates in the order of the model's HNSW index (over halfvec or vector),
        each with its full-precision distance, by which they are re-ranked: the score and the cursor's key.

        The model, the dimension and the LIMIT are literals, so that the plan PostgreSQL keeps for the
        prepared statement (psycopg prepares a statement run 5 times on a connection) can prove the
        partial index's predicate and price the LIMIT: with them as parameters that generic plan reads
        every vector. The statement's text depends only on which filters are set, so it is composed
        once per shape."""
        params = _filter_params(filters)
        if after is not None:
            params.update(after_distance=after.distance, after_id=after.id)
        key = (model.model_id, model.dimension, model.precision, _shape(filters), after is not None, fetch)
        text = self._statements.get(key)
        if text is None:
            where = _search_conditions(model, filters)
            distance = _distance(model, "vector")
            if after is not None:
                where = sql.SQL("{} AND ({}, i.id) > (%(after_distance)s::float8, %(after_id)s::bigint)").format(
                    where, distance
                )
            # One level: the rows come in the index's order and the caller re-sorts them by (distance,
            # id). Sorting a few rows in Python costs less than a materialized CTE and a second Sort
            # (measured: 0.05-0.15 ms of a 1.2 ms search), and on Citus an outer ORDER BY over a LIMIT
            # would make the search two distributed steps through an intermediate result (twice the
            # latency) where this is one.
            stmt = sql.SQL(
                "SELECT {columns}, {distance} AS distance FROM image_vectors v JOIN images i ON i.id = v.image_id"
                " WHERE {where} ORDER BY {approx} LIMIT {fetch}"
            ).format(
                columns=_HIT_COLUMNS,
                distance=distance,
                approx=_distance(model, model.precision),
                where=where,
                fetch=sql.Literal(int(fetch)),
            )
            text = self._remember_statement(key, stmt.as_string(None))
        return text, params

    def effective_ef_search(self, model: Model, limit: int, ef_search: int | None = None) -> int:
        """The hnsw.ef_search an unfiltered search of ``model`` for ``limit`` rows runs with."""
        return min(self._ef(model, limit + 1, ef_search), HNSW_MAX_EF_SEARCH)

    def _ef(self, model: Model, fetch: int, ef_search: int | None) -> int:
        """ef_search for fetching ``fetch`` rows: the one asked for, else the configured one, else (the
        default, ``auto``) one that grows with the collection (see :func:`auto_ef_search`); and never
        below EF_PER_ROW candidates per row fetched, so a large k keeps its recall."""
        chosen = ef_search or self.ef_search or auto_ef_search(self._indexed_rows(model))
        return max(chosen, EF_PER_ROW * fetch)

    def _indexed_rows(self, model: Model) -> int | None:
        """How many vectors the model's index holds, as PostgreSQL last counted them (the index's
        reltuples: CREATE INDEX, VACUUM and ANALYZE update it), remembered for LARGE_COUNT_SECONDS.
        None when unknown (no index recorded, never counted, or Citus, whose coordinator holds none)."""
        if model.index_name is None or self.db.is_citus():
            return None
        key = (model.model_id, model.index_name)
        now = time.monotonic()
        known = self._sizes.get(key)
        if known is not None and now - known[1] < LARGE_COUNT_SECONDS:
            return known[0] if known[0] >= 0 else None
        name = sql.Identifier(model.index_name).as_string(None)

        def reltuples(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (name,)).fetchone()

        with translate_errors("searching"):
            row = self.db.read(reltuples)
        rows = int(row[0]) if row is not None and row[0] is not None and row[0] >= 0 else -1
        self._sizes[key] = (rows, now)
        return rows if rows >= 0 else None

    def _index_settings(
        self,
        model: Model,
        fetch: int,
        filters: SearchFilters,
        ef_search: int | None,
        *,
        forced: bool = False,
        paging: bool = False,
    ) -> dict[str, str]:
        ef = self._ef(model, fetch, ef_search)
        values: dict[str, str] = {}
        if self.db.pgvector_version() >= (0, 8):
            # An iterative scan costs an unfiltered search something even when its first ef_search
            # candidates are enough, more as ef_search grows: a million, ef_search 505, 2 cores, the
            # store's statement took 11.4 ms p50 with relaxed_order and 10.3 ms without (raw pgvector
            # 11.2 / 10.0). So only a search that filters (or pages: a cursor filters too) scans
            # iteratively, on a single node; without, the HNSW scan returns ef_search candidates, and
            # should the join leave fewer than asked, the exact scan answers as for any short result.
            # On Citus the database's defaults are relaxed_order (see cluster_defaults).
            iterative = _narrows(filters) or paging or self.db.is_citus()
            values["hnsw.iterative_scan"] = "relaxed_order" if iterative else "off"
            values["hnsw.max_scan_tuples"] = str(self.max_scan_tuples)
        elif _narrows(filters):
            ef = max(ef, HNSW_MAX_EF_SEARCH)
        values["hnsw.ef_search"] = str(min(ef, HNSW_MAX_EF_SEARCH))
        # Only a plan that reads the CTE's rows from the index in distance order avoids a second Sort.
        # On Citus only when forced, as before: its coordinator plans the merge of the shards' rows.
        if forced or not self.db.is_citus():
            values["enable_sort"] = "off"
        if not self.db.is_citus():
            values.update(SERIAL)
        return values

    def _apply_settings(self, conn: psycopg.Connection[Any], values: dict[str, str]) -> None:
        """The settings of one query, for this transaction only."""
        if self.db.is_citus():
            for name, value in values.items():
                self.db.set_local(conn, name, value)  # SET LOCAL, which Citus can pass on to the shards
            return
        # One statement for all of them: on a fast query the round trips are most of the cost.
        calls = sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
            for name, value in values.items()
        )
        conn.execute(sql.SQL("SELECT {}").format(calls))

    def _use_settings(self, conn: psycopg.Connection[Any], values: dict[str, str]) -> None:
        """Give this pooled connection's session ``values`` (single node), in one statement and only
        where they differ from what it has: a search with the usual settings is then a single statement,
        no transaction and no SET. The search pool's connections run nothing but searches."""
        current = _session(conn)
        changes = {name: value for name, value in values.items() if current.get(name) != value}
        if not changes:
            return
        calls = sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
            for name, value in changes.items()
        )
        # Forgotten first: if the statement fails (or a transaction around it rolls back), the next
        # search sets everything again.
        _forget_session(conn)
        conn.execute(sql.SQL("SELECT {}").format(calls))
        if not conn.autocommit:
            conn.commit()
        with _SESSIONS_LOCK:
            _SESSIONS[conn] = {**current, **changes}

    def _on_session(
        self,
        conn: psycopg.Connection[Any],
        values: dict[str, str],
        stmt: str,
        params: dict[str, Any],
        *,
        prepare: bool | None = None,
    ) -> list[Any]:
        """Run ``stmt`` on this pooled connection with its session holding ``values`` (single node)."""
        try:
            self._use_settings(conn, values)
            return search_cursor(conn).execute(stmt, params, prepare=prepare).fetchall()
        except BaseException:
            _forget_session(conn)  # whatever failed, the next search sets everything again
            raise

    def _remember_statement(self, key: tuple[Any, ...], text: str) -> str:
        if len(self._statements) >= MAX_REMEMBERED_STATEMENTS:
            self._statements.clear()
        self._statements[key] = text
        return text

    def _index_scan(
        self,
        model: Model,
        query: Vector,
        fetch: int,
        filters: SearchFilters,
        after: After | None,
        ef_search: int | None,
        *,
        forced: bool = False,
    ) -> list[Hit]:
        """Up to ``fetch`` rows from the index, sorted by (distance, id)."""
        stmt, params = self._index_sql(model, filters, after, fetch)
        params["q"] = PgVector(query)
        values = self._index_settings(model, fetch, filters, ef_search, forced=forced, paging=after is not None)

        def scan(conn: psycopg.Connection[Any]) -> list[Any]:
            if self.db.is_citus():
                if all(_cluster_session(conn, values).get(n) == v for n, v in values.items()):
                    # The database's own defaults, which Citus gave the workers too (ALTER DATABASE ... SET,
                    # see shared/maintenance.py): one statement, no transaction around it on every node.
                    found = search_cursor(conn).execute(stmt, params).fetchall()
                else:
                    with conn.transaction():
                        self._apply_settings(conn, values)
                        found = search_cursor(conn).execute(stmt, params).fetchall()
                return found
            return self._on_session(conn, values, stmt, params)

        self.db.is_citus()  # learnt before taking a connection: a pool of one must not wait on itself
        with translate_errors("searching"):
            rows = self.db.read(scan)
        return sorted((_hit(row) for row in rows), key=lambda h: (h.distance, h.id))

    def _exact_scan(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
    ) -> list[Hit]:
        """Every matching row's distance, sorted: the first ``limit`` after ``after`` within ``max_distance``."""
        rows = self._run_exact(model, query, limit, filters, after, max_distance, None)
        if not all(row[_OK] for row in rows):
            rows = self._run_exact(model, query, limit, filters, after, max_distance, None, by_name=False)
        return [_hit(row[:_OK]) for row in rows]

    def _counted_scan(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
        cap: int,
    ) -> tuple[list[Hit], int]:
        """The exact scan if fewer than ``cap`` images may match, and how many may (at most ``cap``).

        It counts, from the filter's index and no more than ``cap``, the images that may match (never
        fewer than the matching vectors, for a fraction of a row's cost in the exact scan's join), and
        reads the vectors only when fewer than ``cap`` may match: its hits are then the answer. At
        ``cap`` it returns no hits. Either way one statement."""
        rows = self._run_exact(model, query, limit, filters, after, max_distance, cap)
        count = int(rows[0][-1])
        shown = [row for row in rows if row[0] is not None]
        if count < cap and not all(row[_OK] for row in shown):  # as _exact_scan: every matching row by the join
            shown = self._run_exact(model, query, limit, filters, after, max_distance, None, by_name=False)
        return [_hit(row[:_OK]) for row in shown], count

    def _run_exact(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
        cap: int | None,
        *,
        by_name: bool = True,
    ) -> list[Any]:
        citus = self.db.is_citus()
        # On Citus the by-name form's LIMIT in a subquery joined to `images` would be two distributed steps
        # through an intermediate result; the join, co-located on the image id, is one.
        by_name = by_name and not citus and _by_name_only(filters)
        text, params = self._exact_sql(model, filters, after, max_distance, cap, by_name)
        params.update(q=PgVector(query), limit=limit)

        def scan(conn: psycopg.Connection[Any]) -> list[Any]:
            if citus:
                return search_cursor(conn).execute(text, params, prepare=False).fetchall()  # _PLANNED_EACH_TIME
            return self._on_session(conn, SERIAL, text, params, prepare=False)

        with translate_errors("searching"):
            return self.db.read(scan)

    def _exact_sql(
        self,
        model: Model,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
        cap: int | None,
        by_name: bool,
    ) -> tuple[str, dict[str, Any]]:
        """The exact scan's statement text (composed once per shape, as the index path's) and its parameters.

        Its rows are a hit's columns, the distance, and whether the row surely matches (``ok``, column
        _OK). ``by_name``: the filters are the container and name prefix alone (see _by_name_only), so the
        matching vectors are read from their own (model, container, name) index, sorted, and only the
        rows kept are joined to ``images``. A row ``images`` then rejects (a vector written without a
        name that proves outside the filter, or an image no longer indexed) comes back not ``ok``, and
        the caller asks again without ``by_name``: every matching row through the join, as for any
        other filter."""
        params = _filter_params(filters)
        if after is not None:
            params.update(after_distance=after.distance, after_id=after.id)
        if max_distance is not None:
            params["max_distance"] = max_distance
        key = (
            "exact",
            model.model_id,
            model.dimension,
            _shape(filters),
            after is not None,
            max_distance is not None,
            cap,
            by_name,
        )
        text = self._statements.get(key)
        if text is not None:
            return text, params
        # The distance of the column as stored, which no index orders by (the models' indexes are over
        # casts of it), so the ORDER BY is a sort of the matching rows' distances, never an index scan.
        distance = sql.SQL("v.embedding <=> %(q)s::vector({})").format(sql.Literal(model.dimension))
        conditions: list[sql.Composable] = []
        if after is not None:
            conditions.append(
                sql.SQL("({}, v.image_id) > (%(after_distance)s::float8, %(after_id)s::bigint)").format(distance)
            )
        if max_distance is not None:
            conditions.append(sql.SQL("{} <= %(max_distance)s::float8").format(distance))
        if cap is not None:
            # An uncorrelated condition: PostgreSQL tests it once, before reading any row of the join.
            conditions.append(sql.SQL("(SELECT matched FROM counted) < {}").format(sql.Literal(int(cap))))
        if by_name:
            named = _named_conditions(filters)
            assert named is not None  # by_name needs a container
            own = [sql.SQL("v.model_id = {}").format(_literal(model.model_id)), named]
            if filters.exclude_id is not None:
                own.append(sql.SQL("v.image_id <> %(exclude_id)s"))
            images = _image_conditions(filters)
            stmt: sql.Composable = sql.SQL(
                "SELECT {columns}, t.distance, {images} AS ok FROM ("
                "SELECT v.image_id, {distance} AS distance FROM image_vectors v WHERE {conditions}"
                " ORDER BY distance, v.image_id LIMIT %(limit)s) AS t JOIN images i ON i.id = t.image_id"
                " ORDER BY t.distance, t.image_id"
            ).format(
                columns=_HIT_COLUMNS,
                images=images,
                distance=distance,
                conditions=sql.SQL(" AND ").join(own + conditions),
            )
        else:
            where = _search_conditions(model, filters)
            stmt = sql.SQL(
                "SELECT {columns}, {distance} AS distance, TRUE AS ok FROM image_vectors v"
                " JOIN images i ON i.id = v.image_id WHERE {conditions} ORDER BY distance, i.id LIMIT %(limit)s"
            ).format(columns=_HIT_COLUMNS, distance=distance, conditions=sql.SQL(" AND ").join([where, *conditions]))
        if cap is not None:
            bound = _image_conditions(filters, bound=True)
            # The count comes on every row, and on a row of NULLs when none is left to show.
            stmt = sql.SQL(
                "WITH counted AS MATERIALIZED (SELECT count(*) AS matched"
                " FROM (SELECT 1 FROM images i WHERE {bound} LIMIT {cap}) AS c), shown AS ({shown})"
                " SELECT shown.*, counted.matched FROM counted LEFT JOIN shown ON TRUE"
                " ORDER BY shown.distance, shown.id"
            ).format(bound=bound, cap=sql.Literal(int(cap)), shown=stmt)
        return self._remember_statement(key, stmt.as_string(None)), params

    def explain_nearest(
        self,
        model: Model,
        vector: Vector,
        k: int,
        *,
        filters: SearchFilters | None = None,
        strategy: str | None = None,
        analyze: bool = False,
    ) -> str:
        """The query plan of :meth:`nearest` (used by tests and operators to see the index at work).

        Without ``strategy`` the plain unfiltered index query; with ``index`` the search's index path,
        under the same settings (iterative scan, forced index), ``analyze`` to run it."""
        query = self._query_vector(model, vector)
        # Citus shows the shards' plans only for a query it runs (it cannot send the parameters otherwise).
        analyze = analyze or self.db.is_citus()
        self.db.pgvector_version()
        with self.db.search_pool.connection() as conn, conn.transaction():
            if strategy is None:
                stmt: sql.Composable = sql.SQL(
                    "SELECT v.image_id FROM image_vectors v WHERE v.model_id = {model} ORDER BY {approx} LIMIT {k}"
                ).format(model=_literal(model.model_id), approx=_distance(model, model.precision), k=sql.Literal(k))
                params: dict[str, Any] = {}
            else:
                filters = filters or SearchFilters()
                text, params = self._index_sql(model, filters, None, k)
                stmt = sql.SQL(text)
                self._apply_settings(conn, self._index_settings(model, k, filters, None, forced=strategy == "index"))
            explain = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) " if analyze else "EXPLAIN ")
            rows = conn.execute(explain + stmt, {**params, "q": PgVector(query)})
            return "\n".join(r[0] for r in rows)


# The settings each pooled connection's session has now, as searches set them (single node). Kept by
# connection, not by searcher: every Store over the same pool sees the same sessions.
_SESSIONS: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[str, str]] = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def _session(conn: psycopg.Connection[Any]) -> dict[str, str]:
    with _SESSIONS_LOCK:
        return dict(_SESSIONS.get(conn, {}))


def _cluster_session(conn: psycopg.Connection[Any], values: dict[str, str]) -> dict[str, str]:
    """On Citus, the values ``values``' settings have in this connection's session without any SET: the
    database's (or role's) defaults, read once per connection after loading pgvector (whose settings
    exist only then)."""
    with _SESSIONS_LOCK:
        known = _SESSIONS.get(conn)
    if known is not None and set(values) <= set(known):
        return known
    conn.execute("SELECT NULL::vector")
    names = sorted(set(values) | set(known or {}))
    row = conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(sql.SQL("current_setting({}, true)").format(sql.Literal(n)) for n in names)
        )
    ).fetchone()
    current = {n: str(v) for n, v in zip(names, row or (), strict=True) if v is not None}
    with _SESSIONS_LOCK:
        _SESSIONS[conn] = current
    return current


def cluster_defaults(pgvector_version: tuple[int, ...], ef_search: int | None) -> dict[str, str]:
    """The settings of a common search (unfiltered, k up to 40) on Citus, which ``migrate`` makes the
    database's defaults there so that such a search needs no SET at all."""
    values: dict[str, str] = {}
    if pgvector_version >= (0, 8):
        values["hnsw.iterative_scan"] = "relaxed_order"
        values["hnsw.max_scan_tuples"] = str(HNSW_MAX_SCAN_TUPLES)
    # The coordinator knows no row count (the shards hold the index), so "auto" is its base value.
    values["hnsw.ef_search"] = str(min(ef_search or auto_ef_search(None), HNSW_MAX_EF_SEARCH))
    return values


def _forget_session(conn: psycopg.Connection[Any]) -> None:
    with _SESSIONS_LOCK:
        _SESSIONS.pop(conn, None)


def _distance(model: Model, precision: str) -> sql.Composed:
    """Cosine distance to the query, both cast to ``precision`` of the model's dimension: the same
    expression as the model's HNSW index when ``precision`` is the index's."""
    return sql.SQL("v.embedding::{type}({dim}) <=> %(q)s::{type}({dim})").format(
        type=sql.SQL("halfvec" if precision == "halfvec" else "vector"), dim=sql.Literal(model.dimension)
    )


# What a result shows, and nothing more: every column is read and converted for each row fetched.
_HIT_COLUMNS: Final = sql.SQL("i.id, i.name, i.content_type, i.width, i.height, i.byte_size, i.thumbnail")


# The exact scan's column saying whether its row surely matches (see VectorSearch._exact_sql).
_OK: Final = 8


def _hit(row: Sequence[Any]) -> Hit:
    iid, name, content_type, width, height, byte_size, thumbnail, distance = row
    return Hit(iid, name, float(distance), content_type, width, height, byte_size, thumbnail)


def _literal(value: str) -> sql.SQL:
    """``value`` quoted as an SQL literal, its ``%`` doubled: every statement here is sent with
    parameters, so psycopg reads a lone ``%`` as the start of a placeholder."""
    return sql.SQL(sql.Literal(value).as_string(None).replace("%", "%%"))


def _narrows(filters: SearchFilters) -> bool:
    """Whether ``filters`` keep only part of the collection (leaving out one image does not count)."""
    return bool(filters.prefix or filters.content_types or filters.uploaded_after or filters.uploaded_before)


def _shape(filters: SearchFilters) -> tuple[bool, ...]:
    """Which filters are set: what the text of a search's statement depends on."""
    return (
        filters.container is not None,
        bool(filters.prefix),
        prefix_end(filters.prefix) is not None if filters.prefix else False,
        bool(filters.content_types),
        filters.uploaded_after is not None,
        filters.uploaded_before is not None,
        filters.exclude_id is not None,
    )


def _search_conditions(model: Model, filters: SearchFilters) -> sql.Composed:
    """The WHERE clause shared by every search path: searchable under ``model`` and matching ``filters``
    (its parameters: :func:`_filter_params`)."""
    # The model is a literal: only then can a prepared statement's generic plan use its partial index.
    images = _image_conditions(filters)
    named = _named_conditions(filters)
    if named is None:
        return sql.SQL("v.model_id = {} AND {}").format(_literal(model.model_id), images)
    return sql.SQL("v.model_id = {} AND {} AND {}").format(_literal(model.model_id), named, images)


def _named_conditions(filters: SearchFilters) -> sql.Composable | None:
    """The container and name prefix on the vector's own copy of them (migration 4), or None without
    either: a vector outside them is dropped where it is read, before any join to ``images``. A vector
    written without a name (by code older than migration 4) passes, and ``images`` decides for it. Its
    parameters are among :func:`_filter_params`'."""
    if filters.container is None:
        return None
    parts = [sql.SQL("v.container = %(container)s"), *_name_range("v", filters.prefix)]
    return sql.SQL("(v.name IS NULL OR ({}))").format(sql.SQL(" AND ").join(parts))


def _name_range(alias: str, prefix: str | None) -> list[sql.Composable]:
    """``alias``.name within the names that start with ``prefix`` (parameters ``prefix`` and
    ``prefix_end``, see :func:`prefix_end`); nothing without a prefix."""
    if not prefix:
        return []
    name = sql.Identifier(alias, "name")
    parts: list[sql.Composable] = [sql.SQL("{} ~>=~ %(prefix)s").format(name)]
    if prefix_end(prefix) is not None:
        parts.append(sql.SQL("{} ~<~ %(prefix_end)s").format(name))
    return parts


def _by_name_only(filters: SearchFilters) -> bool:
    """Whether the vectors' own container and name decide ``filters`` alone (no content type, no upload
    time, both kept in ``images`` only): then the exact scan reads the matching vectors from their own
    index and joins only the rows it returns."""
    return (
        filters.container is not None
        and not filters.content_types
        and filters.uploaded_after is None
        and filters.uploaded_before is None
    )


def _image_conditions(filters: SearchFilters, *, bound: bool = False) -> sql.Composed:
    """The conditions on ``images`` alone (alias ``i``): searchable and matching ``filters`` (their
    parameters are among :func:`_filter_params`').

    ``bound``: only those the filter's own index holds, for counting at most as many images as match
    from the index alone (an index-only scan, no row read): no status, no image left out, and the
    container only with a prefix (the name index leads with it). The count is then an upper bound of the
    matching images. Measured at a million images, counting up to 6,281 from the index took 0.6 ms for
    a prefix and 0.4 ms for a content type, reading the rows for the other conditions 1.9 and 13.4 ms."""
    parts: list[sql.Composable] = [sql.SQL("TRUE" if bound else "i.status = 'indexed'")]
    if filters.container is not None and (not bound or filters.prefix):
        parts.append(sql.SQL("i.container = %(container)s"))
    if filters.prefix:
        # The names that start with the prefix, as the range of them in the (container, name
        # text_pattern_ops) index, not as LIKE: a prepared statement's plan can read a range given as
        # parameters through the index (LIKE with a parameter it cannot), and the planner estimates a
        # range from the histogram (at a million names it put `LIKE 'p00/%'` at 100 rows, the range at
        # 9,801, of 10,000). No wildcard to escape either.
        parts += _name_range("i", filters.prefix)
    if filters.content_types:
        parts.append(sql.SQL("i.content_type = ANY(%(content_types)s)"))
    if filters.uploaded_after is not None:
        parts.append(sql.SQL("COALESCE(i.last_modified, i.created_at) >= %(uploaded_after)s"))
    if filters.uploaded_before is not None:
        parts.append(sql.SQL("COALESCE(i.last_modified, i.created_at) < %(uploaded_before)s"))
    if filters.exclude_id is not None and not bound:
        parts.append(sql.SQL("i.id <> %(exclude_id)s"))
    return sql.SQL(" AND ").join(parts)


def _filter_params(filters: SearchFilters) -> dict[str, Any]:
    """Every parameter the conditions of ``filters`` may name (:func:`_search_conditions`,
    :func:`_image_conditions` with or without ``bound``, :func:`_named_conditions`), computed apart from
    their SQL: a search whose statement text is remembered needs only these (composing the conditions
    again took 55-66 us of a 1.5 ms search, 100,000 vectors on 2 cores)."""
    params: dict[str, Any] = {}
    if filters.container is not None:
        params["container"] = filters.container
    if filters.prefix:
        params["prefix"] = filters.prefix
        end = prefix_end(filters.prefix)
        if end is not None:
            params["prefix_end"] = end
    if filters.content_types:
        params["content_types"] = list(filters.content_types)
    if filters.uploaded_after is not None:
        params["uploaded_after"] = filters.uploaded_after
    if filters.uploaded_before is not None:
        params["uploaded_before"] = filters.uploaded_before
    if filters.exclude_id is not None:
        params["exclude_id"] = filters.exclude_id
    return params


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``, in the order of ``~<~`` (byte
    by byte: in a UTF-8 database, as Azure Database for PostgreSQL's are, the order of code points);
    None when there is none (a prefix of nothing but the largest character). Every name starting with
    ``prefix`` lies in [prefix, prefix_end)."""
    chars = list(prefix)
    while chars:
        after = ord(chars.pop()) + 1
        if 0xD800 <= after <= 0xDFFF:  # surrogates are no characters: the next one is U+E000
            after = 0xE000
        if after <= 0x10FFFF:
            return "".join(chars) + chr(after)
    return None


def ids(hits: Sequence[Hit]) -> list[int]:
    return [h.id for h in hits]
