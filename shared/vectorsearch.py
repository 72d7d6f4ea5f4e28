"""Vector search: the images nearest to a query vector under one model, with filters and keyset paging."""

from __future__ import annotations

import logging
import re
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

from .db import Database, translate_errors
from .embeddings import Vector
from .errors import InvalidInput
from .registry import Model

log = logging.getLogger(__name__)

UNFILTERED_COUNT_SECONDS = 30.0
LARGE_COUNT_SECONDS = 600.0


@dataclass(frozen=True)
class Hit:
    """One search result: the image and its cosine distance to the query."""

    id: int
    name: str
    distance: float
    content_type: str | None
    width: int | None
    height: int | None
    created_at: datetime
    byte_size: int | None = None
    container: str | None = None
    thumbnail: bool = False

    @property
    def score(self) -> float:
        return 1.0 - self.distance


# --- search: filters, keyset position, strategies -----------------------------------------------
SEARCH_STRATEGIES: Final = ("auto", "exact", "index")
# At or below this many matching rows an exact scan (every matching vector, sorted) is both exact
# and cheap (a few ms for 2,000 x 1024-d); above it the HNSW index answers.
EXACT_SCAN_MAX_ROWS: Final = 2_000
# pgvector's own default, stated here because the fallback below depends on it: an iterative scan
# that visits this many tuples without finding enough matches stops, and the exact scan takes over.
HNSW_MAX_SCAN_TUPLES: Final = 20_000
# pgvector < 0.8 has no iterative scans: a filtered query can only widen the candidate list, to at
# most 1000 (hnsw.ef_search's upper bound).
HNSW_MAX_EF_SEARCH: Final = 1_000
# relaxed_order returns rows slightly out of order: the index path fetches this many more than it
# returns (at least as many again as asked), so the re-sort can put late arrivals in their place.
INDEX_SLACK_ROWS: Final = 20


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


class VectorSearch:
    """Nearest-neighbour queries over ``image_vectors`` joined to ``images``."""

    def __init__(self, db: Database, *, ef_search: int = 80) -> None:
        self.db = db
        self.ef_search = ef_search
        self._unfiltered_counts: dict[tuple[str, str | None], tuple[int, float]] = {}
        self._configured: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[str, str]] = (
            weakref.WeakKeyDictionary()
        )

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
    # 1. Count the matching rows, stopping at EXACT_SCAN_MAX_ROWS + 1. At or below the threshold an
    #    exact scan is cheap and exact: the filtered rows in a MATERIALIZED CTE (so the planner cannot
    #    hand the ORDER BY to the index), sorted by (distance, id).
    # 2. Above it, the index with pgvector 0.8's iterative scan in relaxed_order: the scan continues
    #    past ef_search until enough rows pass the filter (or HNSW_MAX_SCAN_TUPLES were visited).
    #    relaxed_order because it finds more of the true neighbours under a filter than strict_order
    #    (measured here: recall@10 0.89 against 0.77 with a 1 % filter); its slightly unordered rows are
    #    fetched with some slack into a MATERIALIZED CTE and re-sorted by (distance, id), as the
    #    pgvector README recommends. pgvector < 0.8 (Cosmos DB for PostgreSQL has 0.7) has no
    #    iterative scans: a filtered query widens ef_search to its maximum instead.
    # 3. The index path cannot always tell "no more rows match" from "the scan gave up", or see the
    #    end of a run of equal distances cut by its LIMIT. When it returns fewer rows than asked, or
    #    the last row it would return ties with the last row it fetched, the exact scan answers
    #    instead. So a filtered query returns k rows whenever at least k rows match, whatever the
    #    pgvector version, and a keyset cursor (distance, id) never skips a tied row at a page edge.
    # The planner may still choose a non-index plan in step 2 (pgvector 0.8 estimates filter
    # selectivity); such a plan is exact, so correctness never depends on the planner's choice.
    exact_scan_max_rows: int = EXACT_SCAN_MAX_ROWS
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
            matching = self._matching_estimate(model, filters)
            chosen = "exact" if matching <= self.exact_scan_max_rows else "index"
        if chosen == "index":
            fetch = limit + max(limit, INDEX_SLACK_ROWS)
            rows = self._index_scan(model, query, limit, fetch, filters, after, ef_search, force=strategy == "index")
            if len(rows) >= limit and not (len(rows) == fetch and rows[limit - 1].distance >= rows[-1].distance):
                return Nearest([h for h in rows[:limit] if max_distance is None or h.distance <= max_distance], "index")
            log.info("index scan found %d rows for %d asked; answering with an exact scan", len(rows), limit)
            chosen = "index+exact"
        return Nearest(self._exact_scan(model, query, limit, filters, after, max_distance), chosen)

    def _matching_estimate(self, model: Model, filters: SearchFilters) -> int:
        """The capped count that picks the strategy. Without filters it only changes as the collection
        grows or shrinks, so it is remembered for ``UNFILTERED_COUNT_SECONDS``: either choice is correct
        (the index path falls back to an exact scan when it finds too few rows), a stale one only slower,
        and the count would otherwise cost about as much as the search itself."""
        stop_at = self.exact_scan_max_rows + 1
        if _is_filtered(filters):
            return self.count_matching(model, filters, stop_at=stop_at)
        key = (model.model_id, filters.container)
        now = time.monotonic()
        known = self._unfiltered_counts.get(key)
        if known is not None:
            # A collection far above the threshold does not shrink below it in minutes.
            ttl = UNFILTERED_COUNT_SECONDS if known[0] <= self.exact_scan_max_rows else LARGE_COUNT_SECONDS
            if now - known[1] < ttl:
                return known[0]
        count = self.count_matching(model, filters, stop_at=stop_at)
        self._unfiltered_counts[key] = (count, now)
        return count

    def count_matching(self, model: Model, filters: SearchFilters, *, stop_at: int) -> int:
        """How many searchable images match ``filters``, counting no further than ``stop_at``."""
        where, params = _search_conditions(model, filters)
        stmt = sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM image_vectors v JOIN images i ON i.id = v.image_id "
            "WHERE {where} LIMIT %(stop_at)s) AS matching"
        ).format(where=where)
        with translate_errors("searching"), self.db.search_pool.connection() as conn:
            row = conn.execute(stmt, {**params, "stop_at": stop_at}).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _query_vector(model: Model, vector: Vector) -> Vector:
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (model.dimension,):
            raise InvalidInput(
                f"query vector has {query.size} dimensions; model {model.model_id} has {model.dimension}"
            )
        return query

    def _index_sql(
        self, model: Model, filters: SearchFilters, after: After | None
    ) -> tuple[sql.Composed, dict[str, Any]]:
        """The index path: candidates in the order of the model's HNSW index (over halfvec or vector),
        re-ranked by the full-precision distance, which is also the score and the cursor's key."""
        where, params = _search_conditions(model, filters)
        distance = _distance(model, "vector")
        approx = _distance(model, model.precision)
        if after is not None:
            where = sql.SQL("{} AND ({}, i.id) > (%(after_distance)s::float8, %(after_id)s::bigint)").format(
                where, distance
            )
            params.update(after_distance=after.distance, after_id=after.id)
        stmt = sql.SQL(
            "WITH nearest AS MATERIALIZED ("
            " SELECT {columns}, {distance} AS distance FROM image_vectors v JOIN images i ON i.id = v.image_id"
            " WHERE {where} ORDER BY {approx} LIMIT %(fetch)s"
            ") SELECT id, name, content_type, width, height, created_at, byte_size, container, thumbnail, distance"
            " FROM nearest ORDER BY distance, id"
        ).format(columns=_HIT_COLUMNS, distance=distance, approx=approx, where=where)
        return stmt, params

    def _index_settings(
        self, fetch: int, filters: SearchFilters, ef_search: int | None, force: bool
    ) -> list[tuple[str, str]]:
        ef = max(int(ef_search or self.ef_search), fetch)
        values: list[tuple[str, str]] = []
        if self.db.pgvector_version() >= (0, 8):
            values += [("hnsw.iterative_scan", "relaxed_order"), ("hnsw.max_scan_tuples", str(self.max_scan_tuples))]
        elif _is_filtered(filters):
            ef = max(ef, HNSW_MAX_EF_SEARCH)
        values.append(("hnsw.ef_search", str(min(ef, HNSW_MAX_EF_SEARCH))))
        if force:
            # Only a plan that reads the CTE's rows from the index in distance order avoids a second Sort.
            values.append(("enable_sort", "off"))
        return values

    def _apply_settings(self, conn: psycopg.Connection[Any], values: list[tuple[str, str]]) -> None:
        """The settings of one query, for this transaction only."""
        if self.db.is_citus():
            for name, value in values:
                self.db.set_local(conn, name, value)  # SET LOCAL, which Citus can pass on to the shards
            return
        # One statement for all of them: on a fast query the round trips are most of the cost.
        calls = sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value)) for name, value in values
        )
        conn.execute(sql.SQL("SELECT {}").format(calls))

    def _session_defaults(self, conn: psycopg.Connection[Any]) -> dict[str, str]:
        """The settings most searches use, set once per pooled connection (single node only), so that a
        common search is one statement: no transaction, no SET per query."""
        known = self._configured.get(conn)
        if known is not None:
            return known
        if self.db.is_citus():
            known = {}  # Citus passes only SET LOCAL on to the shards: every query sets its own
        else:
            known = dict(self._index_settings(0, SearchFilters(), None, False))
            statements = sql.SQL("; ").join(
                sql.SQL("SET {} = {}").format(sql.Identifier(*name.split(".")), sql.Literal(value))
                for name, value in known.items()
            )
            conn.execute(statements)
            if not conn.autocommit:
                conn.commit()
        self._configured[conn] = known
        return known

    def _index_scan(
        self,
        model: Model,
        query: Vector,
        limit: int,
        fetch: int,
        filters: SearchFilters,
        after: After | None,
        ef_search: int | None,
        *,
        force: bool,
    ) -> list[Hit]:
        """Up to ``fetch`` rows from the index, sorted by (distance, id)."""
        stmt, params = self._index_sql(model, filters, after)
        values = self._index_settings(fetch, filters, ef_search, force)
        self.db.is_citus()  # learnt before taking a connection: a pool of one must not wait on itself
        with translate_errors("searching"), self.db.search_pool.connection() as conn:
            defaults = self._session_defaults(conn)
            needed = [(name, value) for name, value in values if defaults.get(name) != value]
            if not needed:
                rows = conn.execute(stmt, {**params, "q": PgVector(query), "fetch": fetch}).fetchall()
            else:
                with conn.transaction():
                    self._apply_settings(conn, needed if not self.db.is_citus() else values)
                    rows = conn.execute(stmt, {**params, "q": PgVector(query), "fetch": fetch}).fetchall()
        return [_hit(row) for row in rows]

    def _exact_scan(
        self,
        model: Model,
        query: Vector,
        limit: int,
        filters: SearchFilters,
        after: After | None,
        max_distance: float | None,
    ) -> list[Hit]:
        where, params = _search_conditions(model, filters)
        outer = [sql.SQL("TRUE")]
        if after is not None:
            outer.append(sql.SQL("(distance, id) > (%(after_distance)s::float8, %(after_id)s::bigint)"))
            params.update(after_distance=after.distance, after_id=after.id)
        if max_distance is not None:
            outer.append(sql.SQL("distance <= %(max_distance)s::float8"))
            params["max_distance"] = max_distance
        # MATERIALIZED: the ORDER BY below cannot reach into the CTE, so no index scan is planned.
        stmt = sql.SQL(
            "WITH matching AS MATERIALIZED ("
            " SELECT {columns}, v.embedding::vector({dim}) <=> %(q)s::vector({dim}) AS distance"
            " FROM image_vectors v JOIN images i ON i.id = v.image_id WHERE {where}"
            ") SELECT id, name, content_type, width, height, created_at, byte_size, container, thumbnail, distance"
            " FROM matching WHERE {outer} ORDER BY distance, id LIMIT %(limit)s"
        ).format(
            columns=_HIT_COLUMNS, dim=sql.Literal(model.dimension), where=where, outer=sql.SQL(" AND ").join(outer)
        )
        with translate_errors("searching"), self.db.search_pool.connection() as conn:
            rows = conn.execute(stmt, {**params, "q": PgVector(query), "limit": limit}).fetchall()
        return [_hit(row) for row in rows]

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
                stmt: sql.Composed = sql.SQL(
                    "SELECT v.image_id FROM image_vectors v WHERE v.model_id = %(model)s "
                    "ORDER BY {approx} LIMIT %(limit)s"
                ).format(approx=_distance(model, model.precision))
                params: dict[str, Any] = {"model": model.model_id}
            else:
                stmt, params = self._index_sql(model, filters or SearchFilters(), None)
                self._apply_settings(
                    conn, self._index_settings(k, filters or SearchFilters(), None, strategy == "index")
                )
            explain = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) " if analyze else "EXPLAIN ")
            rows = conn.execute(explain + stmt, {**params, "q": PgVector(query), "limit": k, "fetch": k})
            return "\n".join(r[0] for r in rows)


def _distance(model: Model, precision: str) -> sql.Composed:
    """Cosine distance to the query, both cast to ``precision`` of the model's dimension: the same
    expression as the model's HNSW index when ``precision`` is the index's."""
    return sql.SQL("v.embedding::{type}({dim}) <=> %(q)s::{type}({dim})").format(
        type=sql.SQL("halfvec" if precision == "halfvec" else "vector"), dim=sql.Literal(model.dimension)
    )


_HIT_COLUMNS: Final = sql.SQL(
    "i.id, i.name, i.content_type, i.width, i.height, i.created_at, i.byte_size, i.container, i.thumbnail"
)


def _hit(row: Sequence[Any]) -> Hit:
    iid, name, content_type, width, height, created_at, byte_size, container, thumbnail, distance = row
    return Hit(iid, name, float(distance), content_type, width, height, created_at, byte_size, container, thumbnail)


def _is_filtered(filters: SearchFilters) -> bool:
    return bool(
        filters.prefix
        or filters.content_types
        or filters.uploaded_after
        or filters.uploaded_before
        or filters.exclude_id is not None
    )


def _search_conditions(model: Model, filters: SearchFilters) -> tuple[sql.Composed, dict[str, Any]]:
    """The WHERE clause shared by every search path: searchable under ``model`` and matching ``filters``."""
    parts = [sql.SQL("v.model_id = %(model)s AND i.status = 'indexed'")]
    params: dict[str, Any] = {"model": model.model_id}
    if filters.container is not None:
        parts.append(sql.SQL("i.container = %(container)s"))
        params["container"] = filters.container
    if filters.prefix:
        # LIKE with the prefix's own wildcards escaped, so the (container, name text_pattern_ops) index applies.
        parts.append(sql.SQL("i.name LIKE %(prefix)s"))
        params["prefix"] = re.sub(r"([\\%_])", r"\\\1", filters.prefix) + "%"
    if filters.content_types:
        parts.append(sql.SQL("i.content_type = ANY(%(content_types)s)"))
        params["content_types"] = list(filters.content_types)
    if filters.uploaded_after is not None:
        parts.append(sql.SQL("COALESCE(i.last_modified, i.created_at) >= %(uploaded_after)s"))
        params["uploaded_after"] = filters.uploaded_after
    if filters.uploaded_before is not None:
        parts.append(sql.SQL("COALESCE(i.last_modified, i.created_at) < %(uploaded_before)s"))
        params["uploaded_before"] = filters.uploaded_before
    if filters.exclude_id is not None:
        parts.append(sql.SQL("i.id <> %(exclude_id)s"))
        params["exclude_id"] = filters.exclude_id
    return sql.SQL(" AND ").join(parts), params


def ids(hits: Sequence[Hit]) -> list[int]:
    return [h.id for h in hits]
