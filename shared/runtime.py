"""Process-wide objects, created once per worker on first use: the connection pool, store, provider.

Triggers and the CLI ask for these here; everything below them receives them as arguments.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from .blobs import ImageBlobs
from .db import connect, make_pool
from .embeddings import EmbeddingProvider, make_provider
from .settings import Settings, get_settings
from .store import Model, Store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    provider: EmbeddingProvider
    model: Model
    blobs: ImageBlobs

    def close(self) -> None:
        self.store.pool.close()
        close = getattr(self.provider, "close", None)
        if callable(close):
            close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def open_store(settings: Settings, credential: object | None = None) -> Store:
    """Create the schema if needed (safe to repeat), then open the pool."""
    with connect(settings, credential) as conn:
        Store.create_schema(conn)
    pool = make_pool(settings, credential)
    return Store(
        pool,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
    )


def build_runtime(settings: Settings, *, credential: object | None = None) -> Runtime:
    provider = make_provider(settings, credential=credential)
    store = open_store(settings, credential)
    model = store.ensure_model(provider.model_id, provider.dimension)
    blobs = ImageBlobs.from_settings(settings, credential)
    return Runtime(settings=settings, store=store, provider=provider, model=model, blobs=blobs)


def get_runtime() -> Runtime:
    """The worker's runtime, built on first use from the environment."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build_runtime(get_settings())
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime (tests, benchmarks) or forget the current one."""
    global _runtime
    with _lock:
        _runtime = runtime
