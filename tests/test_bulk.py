"""The bulk path (imports, benchmarks): what save_indexed does per image, at COPY speed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from shared.catalogue import ImageRecord, image_id
from shared.errors import InvalidInput
from shared.store import Store

MODEL = "bulk-model:1"


def rec(name: str, payload: bytes) -> ImageRecord:
    return ImageRecord("images", name, hashlib.sha256(payload).digest(), "image/jpeg", 40, 30, len(payload))


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def stored(store: Store, name: str) -> np.ndarray | None:
    return store.catalogue.get_vector(image_id("images", name), MODEL)


def test_fresh_import_then_reimport_upserts(store: Store) -> None:
    model = store.registry.ensure_model(MODEL, 8)
    first = vectors(300)
    records = [rec(f"b{i:03d}.jpg", bytes([i % 256, i // 256])) for i in range(300)]
    assert store.bulk.upsert(records, first, MODEL, batch_size=128) == 300
    assert store.catalogue.count("indexed") == 300
    assert np.allclose(stored(store, "b007.jpg"), first[7])  # type: ignore[arg-type]

    # Re-import with changed bytes for some: one row each, the new vectors, and search finds them.
    second = vectors(300, seed=1)
    changed = [rec(f"b{i:03d}.jpg", b"new" + bytes([i % 256, i // 256])) for i in range(300)]
    assert store.bulk.upsert(changed, second, MODEL, batch_size=128) == 300
    assert store.catalogue.count() == 300
    assert np.allclose(stored(store, "b007.jpg"), second[7])  # type: ignore[arg-type]
    hits = store.vectors.nearest(model, second[42], 1)
    assert hits[0].name == "b042.jpg"


def test_a_later_record_of_the_same_blob_wins_and_a_failed_row_becomes_indexed(store: Store) -> None:
    store.registry.ensure_model(MODEL, 8)
    store.catalogue.save_failure("images", "x.jpg", "InvalidImage", "was bad")
    v = vectors(2, seed=3)
    assert store.bulk.upsert([rec("x.jpg", b"one"), rec("x.jpg", b"two")], v, MODEL) == 1
    row = store.catalogue.get_image(image_id("images", "x.jpg"))
    assert row is not None and row.status == "indexed" and row.sha256 == hashlib.sha256(b"two").digest()
    assert np.allclose(stored(store, "x.jpg"), v[1])  # type: ignore[arg-type]


def test_bad_input_is_refused(store: Store) -> None:
    store.registry.ensure_model(MODEL, 8)
    with pytest.raises(InvalidInput, match="dimensions"):
        store.bulk.upsert([rec("a.jpg", b"a")], np.ones((1, 4), np.float32), MODEL)
    with pytest.raises(InvalidInput, match="one vector per record"):
        store.bulk.upsert([rec("a.jpg", b"a"), rec("b.jpg", b"b")], vectors(1), MODEL)
    with pytest.raises(InvalidInput):
        store.bulk.upsert([rec("a.jpg", b"a")], vectors(1), "unknown:1")
    assert store.catalogue.count() == 0
