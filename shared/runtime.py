"""Process-wide objects, created once per worker on first use: the connection pool, store, providers.

Triggers and the CLI ask for these here; everything below them receives them as arguments.

Which model answers queries is the collection's, not the worker's: the database names the active
model (and any being built by a re-embedding), and each worker re-reads that every
``MODEL_REFRESH_SECONDS``, building the providers it needs from the model's stored identity plus this
worker's settings (endpoints, keys, local model paths).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from .blobs import ImageBlobs
from .db import SEARCH_CONNECT_TIMEOUT, connect, make_pool, pool_sizes, translate_errors
from .embeddings import EmbeddingProvider, make_provider
from .errors import AppError, SettingError
from .registry import Model
from .schema import IndexSpec, SchemaOutdated, require_schema
from .settings import Settings, get_settings
from .store import Store

log = logging.getLogger(__name__)

MODEL_REFRESH_SECONDS = 30.0


@dataclass
class Runtime:
    settings: Settings
    store: Store
    blobs: ImageBlobs
    configured: EmbeddingProvider  # the provider EMBEDDING_PROVIDER names
    credential: object | None = None
    _providers: dict[str, EmbeddingProvider] = field(default_factory=dict)
    _active: Model | None = None
    _building: list[Model] = field(default_factory=list)
    _read_at: float = -1e9
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._providers[self.configured.model_id] = self.configured

    # --- models ----------------------------------------------------------------------------------
    def refresh_models(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._read_at < MODEL_REFRESH_SECONDS:
                return
            targets = self.store.registry.target_models()
            active = next((m for m in targets if m.state == "active"), None)
            if active is None:
                # Models are registered (and their indexes built) by `migrate`, never on a request.
                raise SchemaOutdated(
                    "the database has no active embedding model: run `python -m shared.cli migrate` "
                    f"(it prepares {self.configured.model_id}, the model EMBEDDING_PROVIDER names)"
                )
            if self._active is not None and self._active.model_id != active.model_id:
                log.info("active model changed from %s to %s", self._active.model_id, active.model_id)
            elif active.model_id != self.configured.model_id and self._active is None:
                log.warning(
                    "EMBEDDING_PROVIDER gives model %s but the collection's active model is %s: queries use the "
                    "active model (re-embed and activate to switch)",
                    self.configured.model_id,
                    active.model_id,
                )
            self._active = active
            self._building = [m for m in targets if m.state == "building"]
            self._read_at = time.monotonic()

    @property
    def model(self) -> Model:
        """The model queries are answered with."""
        self.refresh_models()
        assert self._active is not None
        return self._active

    @property
    def provider(self) -> EmbeddingProvider:
        """The provider of the active model."""
        return self.provider_for(self.model)

    def provider_for(self, model: Model) -> EmbeddingProvider:
        """The provider that embeds for ``model``, built on first use from the model's stored identity."""
        provider = self._providers.get(model.model_id)
        if provider is not None:
            return provider
        status = self.store.registry.model_status(model.model_id)
        config = status.config if status else {}
        if not config:
            raise SettingError(
                "EMBEDDING_PROVIDER",
                f"gives model {self.configured.model_id}, and model {model.model_id} has no stored "
                "configuration: set EMBEDDING_PROVIDER (and its model settings) to that model",
            )
        provider = make_provider(self.settings.with_overrides(config), credential=self.credential)
        if provider.model_id != model.model_id:
            raise SettingError(
                "EMBEDDING_PROVIDER", f"settings {config} build model {provider.model_id}, not {model.model_id}"
            )
        with self._lock:
            self._providers.setdefault(model.model_id, provider)
        return self._providers[model.model_id]

    def targets(self) -> dict[str, EmbeddingProvider]:
        """Providers ingestion writes vectors for: the active model, and models being built it can build."""
        active = self.model
        out = {active.model_id: self.provider_for(active)}
        for model in self._building:
            try:
                out[model.model_id] = self.provider_for(model)
            except AppError as exc:
                # This worker cannot embed for that model (e.g. no local weights): reembed fills the gap.
                log.warning("not writing vectors for %s being built: %s", model.model_id, exc.message)
        return out

    def close(self) -> None:
        self.store.close()
        for provider in self._providers.values():
            close = getattr(provider, "close", None)
            if callable(close):
                close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def index_spec(settings: Settings) -> IndexSpec:
    """The HNSW index the settings ask for (new models get it; ``reindex`` moves existing ones)."""
    return IndexSpec(settings.hnsw_precision, settings.hnsw_m, settings.hnsw_ef_construction)


def open_store(settings: Settings, credential: object | None = None) -> Store:
    """Open the pools (one for ingestion and commands, one for searches) and check that the schema is
    the one this code needs: a worker never changes the schema (``migrate`` does), it reports what to run."""
    # Before the pools: their connections need the vector type, which only a migrated database has.
    with (
        connect(settings, credential, connect_timeout=SEARCH_CONNECT_TIMEOUT) as conn,
        translate_errors("checking the schema"),
    ):
        require_schema(conn)
    # Both pools open connections only when used: an instance that only searches never opens the
    # ingestion pool (Flex Consumption scales HTTP and blob triggers as separate groups).
    work = make_pool(settings, credential, min_size=0)
    _, search_size = pool_sizes(settings.database_pool_max)
    search = make_pool(settings, credential, role="search", min_size=0) if search_size else None
    return Store(work, search_pool=search, index=index_spec(settings), ef_search=settings.hnsw_ef_search)


def build_runtime(settings: Settings, *, credential: object | None = None) -> Runtime:
    provider = make_provider(settings, credential=credential)
    store = open_store(settings, credential)
    blobs = ImageBlobs.from_settings(settings, credential)
    rt = Runtime(settings=settings, store=store, blobs=blobs, configured=provider, credential=credential)
    rt.refresh_models(force=True)
    return rt


def get_runtime() -> Runtime:
    """The worker's runtime, built on first use from the environment."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build_runtime(get_settings())
    return _runtime


def current_settings() -> Settings:
    """The installed runtime's settings if there is one (tests, benchmarks), else the environment's."""
    runtime = _runtime
    return runtime.settings if runtime is not None else get_settings()


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime (tests, benchmarks) or forget the current one."""
    global _runtime
    with _lock:
        _runtime = runtime
