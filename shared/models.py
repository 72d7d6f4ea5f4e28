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
from typing import TYPE_CHECKING, TypeVar

from .blobs import BlobGone
from .embeddings import EmbeddingProvider, Vector, make_provider, provider_config
from .errors import AppError, InvalidInput, PermanentError
from .images import MAX_BYTES
from .registry import Model
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH = 16  # images per call of a provider that embeds batches (the local model)

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
    from .maintenance import prepare_target

    model = prepare_target(rt.settings, goal.provider, goal.config)
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
    status = rt.store.registry.model_status(model.model_id)
    if on_total and status is not None:
        on_total(status.missing)

    def fetch(item: tuple[int, str, bytes]) -> bytes | None:
        """The blob's bytes, or None when it is gone or changed since it was indexed (ingestion of
        the new bytes writes both models)."""
        _, name, sha = item
        try:
            data, _ = rt.blobs.read(name, MAX_BYTES)
        except BlobGone:
            return None
        return data if hashlib.sha256(data).digest() == sha else None

    def one(item: tuple[int, str, bytes]) -> Vector | str:
        """The image's vector, or ``skipped`` (gone, changed, or refused by the service)."""
        data = fetch(item)
        if data is None:
            return "skipped"
        try:
            return provider.embed_image(data)
        except PermanentError as exc:
            log.warning("reembed: %s refused by %s: %s", item[1], model.model_id, exc.message)
            return "skipped"

    # A local model embeds a batch faster than its images one by one; a remote service takes one at a time.
    embed_many: Callable[[list[bytes]], list[Vector]] | None = getattr(provider, "embed_images", None)

    def batched(items: list[tuple[int, str, bytes]], pool: ThreadPoolExecutor) -> list[Vector | str | AppError]:
        datas = list(pool.map(_guard(fetch), items))
        results: list[Vector | str | AppError] = ["skipped"] * len(items)
        ready = [(i, d) for i, d in enumerate(datas) if isinstance(d, bytes)]
        for i, d in enumerate(datas):
            if isinstance(d, AppError):
                results[i] = d
        for start in range(0, len(ready), BATCH):
            chunk = ready[start : start + BATCH]
            try:
                assert embed_many is not None
                vectors = embed_many([d for _, d in chunk])
            except PermanentError:
                # One bad image fails the whole batch: do this chunk one by one to find it.
                for i, _ in chunk:
                    results[i] = _guard(one)(items[i])
                continue
            except AppError as exc:
                for i, _ in chunk:
                    results[i] = exc
                continue
            for (i, _), vector in zip(chunk, vectors, strict=True):
                results[i] = vector
        return results

    def store(items: list[tuple[int, str, bytes]], vectors: list[Vector | str | AppError]) -> list[str | AppError]:
        """Write a page's vectors in one batch, each only if its image still has the bytes it was made from."""
        outcomes: list[str | AppError] = []
        ready: list[tuple[int, bytes, Vector]] = []
        for item, vector in zip(items, vectors, strict=True):
            if isinstance(vector, (str, AppError)):
                outcomes.append(vector)
            else:
                outcomes.append("written")
                ready.append((item[0], item[2], vector))
        try:
            written = rt.store.registry.add_vectors(model.model_id, ready)
        except AppError as exc:  # transient: the next run embeds them again
            return [exc if o == "written" else o for o in outcomes]
        return [
            ("embedded" if item[0] in written else "skipped") if o == "written" else o
            for item, o in zip(items, outcomes, strict=True)
        ]

    after = -1
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reembed") as pool:
        while True:
            batch = rt.store.registry.missing_vectors(model.model_id, after_id=after, limit=page)
            if not batch:
                break
            after = batch[-1][0]
            vectors = batched(batch, pool) if callable(embed_many) else list(pool.map(_guard(one), batch))
            outcomes = store(batch, vectors)
            for item, result in zip(batch, outcomes, strict=True):
                if isinstance(result, AppError):
                    report.errors.append(f"{item[1]}: {result.message}")
                elif result == "embedded":
                    report.embedded += 1
                else:
                    report.skipped += 1
                if progress:
                    progress(1)
    return report


def _guard(fn: Callable[[tuple[int, str, bytes]], T]) -> Callable[[tuple[int, str, bytes]], T | AppError]:
    def run(item: tuple[int, str, bytes]) -> T | AppError:
        try:
            return fn(item)
        except AppError as exc:  # transient: reported, and the next run picks the image up again
            return exc

    return run
