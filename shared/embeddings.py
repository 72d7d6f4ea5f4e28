"""The embedding provider seam: one small protocol, and the factory that picks the implementation.

Azure AI Vision is one implementation (shared/vision.py). Vectors of different models live in one
space only with themselves, so every vector is stored and compared under its provider's
``model_id``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .settings import Settings

Vector = npt.NDArray[np.float32]


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Turns image bytes or text into vectors of one model's space."""

    @property
    def model_id(self) -> str:
        """Provider and pinned model version, e.g. ``azure-vision:2023-04-15``; stored per vector."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector this provider returns."""
        ...

    def embed_image(self, data: bytes) -> Vector:
        """Embed one image given as its encoded bytes (JPEG, PNG, ...)."""
        ...

    def embed_text(self, text: str) -> Vector:
        """Embed one text query into the same space as images."""
        ...


# The settings that identify a provider's model (never secrets or endpoints): stored with the model,
# so any worker can rebuild the provider of a model being built by a re-embedding.
MODEL_IDENTITY: dict[str, tuple[str, ...]] = {
    "azure-vision": ("VISION_API_VERSION", "VISION_MODEL_VERSION"),
    "clip": ("CLIP_MODEL_NAME",),
}


def provider_config(settings: Settings) -> dict[str, str]:
    """``EMBEDDING_PROVIDER`` and the settings that identify its model, as stored with the model."""
    name = settings.embedding_provider
    config = {"EMBEDDING_PROVIDER": name}
    for key in MODEL_IDENTITY.get(name, ()):
        value = settings.raw(key)
        if value is not None:
            config[key] = value
    return config


def make_provider(
    settings: Settings, *, credential: object | None = None, max_retry_seconds: float | None = None
) -> EmbeddingProvider:
    """Build the provider named by ``EMBEDDING_PROVIDER``; ``credential`` is used when no key is set."""
    if settings.embedding_provider == "azure-vision":
        from .vision import AzureVisionProvider

        return AzureVisionProvider.from_settings(settings, credential=credential, max_retry_seconds=max_retry_seconds)
    if settings.embedding_provider == "clip":
        from .clip import ClipProvider

        return ClipProvider.from_settings(settings)
    raise AssertionError(f"unhandled provider {settings.embedding_provider}")  # settings validated the name
