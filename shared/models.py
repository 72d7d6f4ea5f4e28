"""Moving a collection to another embedding model without going dark (blue/green).

1. ``reembed``: register the target model as ``building`` and compute its vectors beside the active
   ones (resumable: it only does images still missing a vector of their current bytes). Meanwhile
   queries keep using the active model, and ingestion writes vectors for both.
2. ``activate``: switch queries to the target in one transaction, refused while coverage is incomplete.
3. ``drop-model``: remove the old model's vectors and index.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .blobs import BlobGone
from .embeddings import EmbeddingProvider, make_provider, provider_config
from .errors import AppError, InvalidInput, PermanentError
from .images import MAX_BYTES
from .settings import Settings
from .store import Model

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

# The setting that names a provider's model, for `reembed --model`.
MODEL_SETTING = {"azure-vision": "VISION_MODEL_VERSION", "clip": "CLIP_MODEL_NAME"}


@dataclass(frozen=True)
class Target:
    """The model a re-embedding builds: its provider, and the settings that identify it."""

    provider: EmbeddingProvider
    config: dict[str, str]


def target(settings: Settings, provider: str, model: str | None = None) -> Target:
    """The target of ``reembed --provider P [--model M]``, built from these settings."""
    overrides = {"EMBEDDING_PROVIDER": provider}
    if model:
        key = MODEL_SETTING.get(provider)
        if key is None:
            raise InvalidInput(f"provider {provider} has no model setting: leave out --model")
        overrides[key] = model
    target_settings = settings.with_overrides(overrides)
    return Target(make_provider(target_settings), provider_config(target_settings))


@dataclass
class ReembedReport:
    model_id: str
    embedded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.model_id}: embedded {self.embedded}, skipped {self.skipped} (changed or gone meanwhile)"
        return text + (f", errors {len(self.errors)}" if self.errors else "")


def register_target(rt: Runtime, goal: Target) -> Model:
    """Register the target model (``building`` when another is active) so ingestion starts writing it too."""
    model = rt.store.ensure_model(goal.provider.model_id, goal.provider.dimension, goal.config)
    rt.refresh_models(force=True)
    return model


def reembed(
    rt: Runtime,
    goal: Target,
    *,
    concurrency: int = 4,
    page: int = 64,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReembedReport:
    """Compute the target's vectors for every indexed image that lacks one; safe to stop and run again."""
    provider = goal.provider
    model = register_target(rt, goal)
    report = ReembedReport(model.model_id)
    status = rt.store.model_status(model.model_id)
    if on_total and status is not None:
        on_total(status.missing)

    def one(item: tuple[int, str, bytes]) -> str:
        iid, name, sha = item
        try:
            data, _ = rt.blobs.read(name, MAX_BYTES)
        except BlobGone:
            return "skipped"
        if hashlib.sha256(data).digest() != sha:
            return "skipped"  # changed since it was indexed: ingestion of the new bytes writes both models
        try:
            vector = provider.embed_image(data)
        except PermanentError as exc:
            log.warning("reembed: %s refused by %s: %s", name, model.model_id, exc.message)
            return "skipped"
        return "embedded" if rt.store.add_vector(iid, model.model_id, sha, vector) else "skipped"

    after = -1
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reembed") as pool:
        while True:
            batch = rt.store.missing_vectors(model.model_id, after_id=after, limit=page)
            if not batch:
                break
            after = batch[-1][0]
            for item, result in zip(batch, pool.map(_guard(one), batch), strict=True):
                if isinstance(result, AppError):
                    report.errors.append(f"{item[1]}: {result.message}")
                elif result == "embedded":
                    report.embedded += 1
                else:
                    report.skipped += 1
                if progress:
                    progress(1)
    return report


def _guard(fn: Callable[[tuple[int, str, bytes]], str]) -> Callable[[tuple[int, str, bytes]], str | AppError]:
    def run(item: tuple[int, str, bytes]) -> str | AppError:
        try:
            return fn(item)
        except AppError as exc:  # transient: reported, and the next run picks the image up again
            return exc

    return run
