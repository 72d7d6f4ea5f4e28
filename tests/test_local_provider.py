"""The whole flow with the local CLIP provider (the tiny ONNX model the tests build), no Azure at all:
real Azurite and PostgreSQL, the real blob function, the real search pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from shared.errors import InvalidInput
from shared.ingest import reconcile
from shared.models import reembed, target
from shared.runtime import Runtime, build_runtime, set_runtime
from shared.search import Searcher
from shared.settings import Settings
from tests.conftest import prepare
from tests.imagegen import image_bytes
from tests.tiny_clip import build_tiny_clip  # needs onnx and onnxruntime: dev requirements


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture
def clip_runtime(database_url: str, azurite: object, tiny_model: Path, pool: ConnectionPool) -> Iterator[Runtime]:
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    container = f"l-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        {
            "DATABASE_URL": database_url,
            "ImagesStorage": azurite.connection_string,  # type: ignore[attr-defined]
            "IMAGES_CONTAINER": container,
            "THUMBNAILS_CONTAINER": f"{container}-thumbs",
            "EMBEDDING_PROVIDER": "clip",
            "CLIP_MODEL_PATH": str(tiny_model),
            "CLIP_MODEL_NAME": "tiny-test",
        }
    )
    prepare(settings)
    rt = build_runtime(settings)
    rt.blobs.ensure_container()
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


def test_upload_index_and_search_by_text_image_and_similar_with_the_local_model(clip_runtime: Runtime) -> None:
    rt = clip_runtime
    assert rt.model.model_id == "clip:tiny-test" and rt.model.dimension == 64
    for i, colour in enumerate(["red", "red", "green", "blue", "yellow", "blue"]):
        rt.blobs.upload(f"{colour}-{i}.png", image_bytes(colour, (60, 40), "PNG", seed=i), "image/png")
    assert reconcile(rt).indexed == 6

    searcher = Searcher.from_runtime(rt)
    by_text = searcher.text("a red square").results
    assert {r.name for r in by_text[:2]} == {"red-0.png", "red-1.png"}
    assert [r.score for r in by_text] == sorted((r.score for r in by_text), reverse=True)

    by_image = searcher.image(image_bytes("blue", (80, 80), "JPEG", seed=42)).results
    assert {r.name for r in by_image[:2]} == {"blue-3.png", "blue-5.png"}

    blue = next(r for r in by_image if r.name == "blue-3.png")
    similar = searcher.similar(blue.id).results
    assert similar[0].name == "blue-5.png" and all(r.id != blue.id for r in similar)
    assert all(r.url and "sig=" in r.url for r in similar)


def test_moving_a_collection_from_azure_vision_to_the_local_model(runtime: Runtime, tiny_model: Path) -> None:
    """Blue/green across providers and dimensions (1024-d Vision → 64-d CLIP), search answering throughout."""
    for i, colour in enumerate(["red", "green", "blue", "red"]):
        runtime.blobs.upload(f"{colour}-{i}.jpg", image_bytes(colour, (50, 40), seed=i), "image/jpeg")
    assert reconcile(runtime).indexed == 4
    searcher = Searcher.from_runtime(runtime)
    before = searcher.text("red").results
    assert {r.name for r in before[:2]} == {"red-0.jpg", "red-3.jpg"}

    local = runtime.settings.with_overrides({"CLIP_MODEL_PATH": str(tiny_model), "CLIP_MODEL_NAME": "tiny-test"})
    goal = target(local, "clip")
    runtime.settings = local  # this worker can now build the clip provider from the stored config
    batches: list[int] = []
    embed_images = goal.provider.embed_images  # type: ignore[attr-defined]
    goal.provider.embed_images = lambda datas: batches.append(len(datas)) or embed_images(datas)  # type: ignore[attr-defined]
    report = reembed(runtime, goal)
    assert (report.embedded, report.errors) == (4, [])
    assert batches == [4]  # the local model embeds the page in one batch
    assert {r.name for r in searcher.text("red").results[:2]} == {"red-0.jpg", "red-3.jpg"}  # still Vision

    runtime.store.registry.activate("clip:tiny-test")
    runtime.refresh_models(force=True)
    after = searcher.text("red").results
    assert runtime.model.dimension == 64 and {r.name for r in after[:2]} == {"red-0.jpg", "red-3.jpg"}
    assert runtime.store.registry.drop_model("azure-vision:2023-04-15") == 4


def test_vectors_of_different_models_cannot_be_compared(runtime: Runtime, tiny_model: Path) -> None:
    from shared.clip import ClipProvider
    from shared.search import FixedModel

    runtime.blobs.upload("a.jpg", image_bytes("red"), "image/jpeg")
    reconcile(runtime)
    clip = ClipProvider(str(tiny_model), model_name="tiny-test")
    # A searcher that would embed with the local model but search the Vision vectors: refused.
    with pytest.raises((ValueError, InvalidInput), match="model"):
        Searcher(runtime.store, FixedModel(runtime.model, clip), blobs=runtime.blobs).text("red")
    # And a raw vector of the wrong model's size is refused by the store itself.
    with pytest.raises(InvalidInput, match="dimensions"):
        runtime.store.vectors.nearest(runtime.model, clip.embed_text("red"), 5)
