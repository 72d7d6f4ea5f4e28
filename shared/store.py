"""The image collection in PostgreSQL + pgvector: one object over the connection pool, with one part
per job. The SQL lives in the parts:

- ``schema`` (module): tables, indexes and each model's HNSW index (all the DDL);
- ``registry``: the embedding models (active, building, retired) and their coverage;
- ``catalogue``: one blob's row and vectors (ingestion, deletes, reconcile);
- ``bulk``: many rows at COPY speed;
- ``vectors``: nearest-neighbour search with filters and keyset paging.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from .bulk import BulkLoader
from .catalogue import Catalogue
from .db import Database
from .registry import Registry
from .schema import IndexSpec
from .vectorsearch import VectorSearch


class Store:
    """The collection: ``registry``, ``catalogue``, ``bulk`` and ``vectors``, over a pool for ingestion
    and commands and (optionally) one of its own for searches."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        search_pool: ConnectionPool | None = None,
        index: IndexSpec | None = None,
        ef_search: int | None = None,
    ):
        self.db = Database(pool, search_pool)
        self.registry = Registry(self.db, index=index)
        self.catalogue = Catalogue(self.db)
        self.bulk = BulkLoader(self.db)
        self.vectors = VectorSearch(self.db, ef_search=ef_search)

    @property
    def pool(self) -> ConnectionPool:
        return self.db.pool

    @pool.setter
    def pool(self, pool: ConnectionPool) -> None:
        if self.db.search_pool is self.db.pool:
            self.db.search_pool = pool
        self.db.pool = pool

    def close(self) -> None:
        for pool in {id(p): p for p in (self.db.pool, self.db.search_pool)}.values():
            pool.close()
