"""Blue/green re-embedding: a second model is built beside the first while search keeps answering."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from shared.catalogue import ImageRecord, image_id
from shared.errors import InvalidInput
from shared.ingest import reconcile
from shared.maintenance import drop_model
from shared.models import reembed, register_target, target
from shared.runtime import Runtime
from shared.store import Store
from tests.fake_vision import FakeVision
from tests.imagegen import COLOURS, image_bytes

OLD = "azure-vision:2023-04-15"
NEW = "azure-vision:2022-04-11"


def fill(rt: Runtime, n: int) -> None:
    colours = list(COLOURS)
    for i in range(n):
        rt.blobs.upload(f"img{i:03d}.jpg", image_bytes(colours[i % len(colours)], (40, 30), seed=i), "image/jpeg")
    assert reconcile(rt).indexed == n


def vector_models(rt: Runtime, name: str) -> set[str]:
    with rt.store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT model_id FROM image_vectors WHERE image_id = %s", (image_id(rt.settings.images_container, name),)
        ).fetchall()
    return {r[0] for r in rows}


def test_reembed_activate_and_drop_while_search_keeps_answering(runtime: Runtime, fake_vision: FakeVision) -> None:
    fill(runtime, 24)
    stop = threading.Event()
    answers: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def search_loop() -> None:
        while not stop.is_set():
            try:
                runtime.refresh_models(force=True)
                model = runtime.model
                hits = runtime.store.vectors.nearest(model, runtime.provider_for(model).embed_text("a red thing"), 5)
                answers.append((model.model_id, len(hits)))
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.01)

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    try:
        goal = target(runtime.settings, "azure-vision", "2022-04-11")
        assert goal.provider.model_id == NEW and goal.config["VISION_MODEL_VERSION"] == "2022-04-11"

        register_target(runtime, goal)
        with pytest.raises(InvalidInput, match="covers 0 of 24"):
            runtime.store.registry.activate(NEW)
        # Ingestion now writes both models for a new image.
        runtime.blobs.upload("fresh.jpg", image_bytes("green", seed=99), "image/jpeg")
        assert reconcile(runtime).indexed == 1
        assert vector_models(runtime, "fresh.jpg") == {OLD, NEW}

        report = reembed(runtime, goal, concurrency=3)
        assert (report.embedded, report.errors) == (24, [])
        assert reembed(runtime, goal).embedded == 0  # resumable: nothing left to do
        status = runtime.store.registry.model_status(NEW)
        assert status is not None and (status.covered, status.total, status.model.state) == (25, 25, "building")
        new_calls = [c for c in fake_vision.calls("image") if c["query"]["model-version"] == "2022-04-11"]
        assert len(new_calls) == 25

        active = runtime.store.registry.activate(NEW)
        assert active.model.state == "active"
        states = {m.model.model_id: m.model.state for m in runtime.store.registry.models()}
        assert states == {NEW: "active", OLD: "retired"}
        time.sleep(0.2)  # let the search loop answer with the new model
    finally:
        stop.set()
        searcher.join()
    assert errors == []
    assert {m for m, _ in answers} == {OLD, NEW}
    assert all(n == 5 for _, n in answers)
    # Queries after the switch embed text with the new model version.
    assert any(c["query"]["model-version"] == "2022-04-11" for c in fake_vision.calls("text"))

    with pytest.raises(InvalidInput, match="active model"):
        drop_model(runtime.settings, NEW)
    removed = drop_model(runtime.settings, OLD)  # what `drop-model` runs: vectors, row, then the indexes
    assert removed == 25
    assert {m.model.model_id for m in runtime.store.registry.models()} == {NEW}
    with runtime.store.pool.connection() as conn:
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'image_vectors'")]
    assert not any("2023-04-15" in d for d in indexes) and any("2022-04-11" in d for d in indexes)
    runtime.refresh_models(force=True)
    assert runtime.model.model_id == NEW
    assert runtime.store.vectors.nearest(runtime.model, runtime.provider.embed_text("red"), 3)


def test_activation_can_be_forced_and_an_unknown_model_is_refused(runtime: Runtime) -> None:
    fill(runtime, 3)
    with pytest.raises(InvalidInput, match="not registered"):
        runtime.store.registry.activate("nope:1")
    register_target(runtime, target(runtime.settings, "azure-vision", "2022-04-11"))
    status = runtime.store.registry.activate(NEW, force=True)
    assert status.model.state == "active" and status.covered == 0


def test_a_batch_of_vectors_is_written_only_where_the_bytes_are_still_the_same(store: Store) -> None:
    """reembed writes a page at once; each vector still needs its image to hold the bytes it came from."""
    # Models of their own: the ones above left 1024-d indexes behind, which refuse 4-d vectors.
    old, new_model = "batch-old:1", "batch-new:1"
    store.registry.ensure_model(old, 4)
    store.registry.register(new_model, 4)
    records = [
        ImageRecord("images", f"b{i}.jpg", hashlib.sha256(b"%d" % i).digest(), "image/jpeg", 4, 4, 1) for i in range(4)
    ]
    store.bulk.upsert(records, np.eye(4, dtype=np.float32), old)
    ids = [image_id("images", r.name) for r in records]
    store.catalogue.save_failure("images", "b3.jpg", "InvalidImage", "now broken")  # no longer indexed
    new = np.full((5, 4), 0.5, dtype=np.float32)
    batch = [
        (ids[0], records[0].sha256, new[0]),  # unchanged: written
        (ids[1], hashlib.sha256(b"older bytes").digest(), new[1]),  # re-uploaded meanwhile: skipped
        (ids[2], records[2].sha256, new[2]),  # unchanged: written
        (ids[3], records[3].sha256, new[3]),  # failed meanwhile: skipped
        (image_id("images", "gone.jpg"), records[0].sha256, new[4]),  # deleted: skipped
    ]
    assert store.registry.add_vectors(new_model, batch) == {ids[0], ids[2]}
    assert np.allclose(store.catalogue.get_vector(ids[0], new_model), new[0])  # type: ignore[arg-type]
    assert store.catalogue.get_vector(ids[1], new_model) is None
    # Written again (a second run after a crash): replaced, still one row per image and model.
    assert store.registry.add_vectors(new_model, [(ids[0], records[0].sha256, new[1])]) == {ids[0]}
    assert np.allclose(store.catalogue.get_vector(ids[0], new_model), new[1])  # type: ignore[arg-type]
    assert store.registry.add_vectors(new_model, []) == set()
