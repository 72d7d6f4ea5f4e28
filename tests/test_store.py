"""The store against a real PostgreSQL + pgvector: schema, upserts, failures, deletes, nearest neighbours."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np
import psycopg
import pytest

from shared.catalogue import Catalogue, ImageRecord, image_id
from shared.errors import InvalidInput
from shared.registry import Model
from shared.schema import create_schema
from shared.store import Store

MODEL = "test-model:1"
DIM = 1024


def record(name: str, payload: bytes = b"x", **extra: Any) -> ImageRecord:
    return ImageRecord(
        container="images",
        name=name,
        sha256=hashlib.sha256(payload).digest(),
        content_type="image/png",
        width=64,
        height=48,
        byte_size=len(payload),
        etag='"0x1"',
        metadata={"owner": "tests"},
        **extra,
    )


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def put(store: Store, rec: ImageRecord, vectors: dict[str, np.ndarray]) -> int:
    with store.catalogue.locked(rec.container, rec.name) as conn:
        return Catalogue.save_indexed(conn, rec, vectors)


def test_schema_is_idempotent(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert create_schema(conn) is False
        assert create_schema(conn) is False
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"images", "image_vectors", "embedding_models"} <= tables
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert version is not None and tuple(int(p) for p in version[0].split(".")[:2]) >= (0, 8)


def test_first_model_becomes_active_and_gets_an_hnsw_index(store: Store) -> None:
    model = store.registry.ensure_model(MODEL, DIM)
    assert model == Model(MODEL, DIM, "active")
    assert store.registry.ensure_model("other:2", 512).state == "building"
    assert store.registry.active_model() == model
    with store.pool.connection() as conn:
        defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'image_vectors'")]
    hnsw = [d for d in defs if "USING hnsw" in d and MODEL in d]
    assert len(hnsw) == 1 and "vector(1024)" in hnsw[0] and "vector_cosine_ops" in hnsw[0]


def test_model_dimension_cannot_change(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    with pytest.raises(InvalidInput, match="1024 dimensions"):
        store.registry.ensure_model(MODEL, 512)


def test_upsert_twice_leaves_one_row_with_the_latest_metadata(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    rng = np.random.default_rng(1)
    v = unit(rng, 2)
    first = put(store, record("a.png", b"one"), {MODEL: v[0]})
    second = put(store, record("a.png", b"two"), {MODEL: v[1]})
    assert first == second == image_id("images", "a.png")
    assert store.catalogue.count() == 1
    row = store.catalogue.get_image(first)
    assert row is not None and row.sha256 == hashlib.sha256(b"two").digest() and row.status == "indexed"
    assert row.metadata == {"owner": "tests"} and (row.width, row.height) == (64, 48)
    stored = store.catalogue.get_vector(first, MODEL)
    assert stored is not None and np.allclose(stored, v[1])


def test_vector_of_the_wrong_dimension_is_refused_by_the_database(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    with pytest.raises(psycopg.DataError, match="expected 1024 dimensions"):
        put(store, record("short.png"), {MODEL: np.ones(512, dtype=np.float32)})
    assert store.catalogue.count() == 0  # the transaction rolled back: no partial row


def test_failure_is_recorded_then_cleared_by_a_good_upload(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    with store.catalogue.locked("images", "bad.jpg") as conn:
        Catalogue.save_failure(conn, "images", "bad.jpg", "InvalidImage", "not an image")
    with store.catalogue.locked("images", "bad.jpg") as conn:
        Catalogue.save_failure(conn, "images", "bad.jpg", "InvalidImage", "still not an image")
    row = store.catalogue.get_image(image_id("images", "bad.jpg"))
    assert row is not None and row.status == "failed" and row.failure_count == 2
    assert row.failure_reason == "still not an image"
    stats = store.catalogue.stats()
    assert stats["by_status"] == {"failed": 1} and stats["failures"][0]["name"] == "bad.jpg"

    put(store, record("bad.jpg"), {MODEL: unit(np.random.default_rng(2), 1)[0]})
    row = store.catalogue.get_image(image_id("images", "bad.jpg"))
    assert row is not None and row.status == "indexed" and row.failure_count == 0 and row.failure_reason is None


def test_delete_removes_row_and_vectors(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    iid = put(store, record("gone.png"), {MODEL: unit(np.random.default_rng(3), 1)[0]})
    assert store.catalogue.delete_image("images", "gone.png") is True
    assert store.catalogue.get_image(iid) is None and store.catalogue.get_vector(iid, MODEL) is None
    assert store.catalogue.delete_image("images", "gone.png") is False


def test_concurrent_writers_of_one_blob_take_turns(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    inside = 0
    overlap = []
    lock = threading.Lock()

    def write(i: int) -> None:
        nonlocal inside
        with store.catalogue.locked("images", "same.png") as conn:
            with lock:
                inside += 1
                overlap.append(inside)
            Catalogue.save_indexed(conn, record("same.png", bytes([i])), {MODEL: np.full(DIM, i + 1.0, np.float32)})
            with lock:
                inside -= 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlap) == 1
    assert store.catalogue.count() == 1


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """Vectors with cluster structure, like real embeddings, and queries near them."""
    rng = np.random.default_rng(42)
    centers = unit(rng, 30)
    labels = rng.integers(0, 30, 2000)
    data = centers[labels] + 0.35 * unit(rng, 2000) * rng.random((2000, 1))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = centers[rng.integers(0, 30, 20)] + 0.3 * unit(rng, 20)
    return data.astype(np.float32), queries.astype(np.float32)


def load(store: Store, data: np.ndarray) -> list[int]:
    ids = []
    with store.pool.connection() as conn, conn.transaction():
        for i, v in enumerate(data):
            ids.append(Catalogue.save_indexed(conn, record(f"img-{i:05d}.png", str(i).encode()), {MODEL: v}))
        conn.execute("ANALYZE image_vectors")
        conn.execute("ANALYZE images")
    return ids


def test_nearest_uses_hnsw_and_matches_exact_ranking(store: Store, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    data, queries = corpus
    model = store.registry.ensure_model(MODEL, DIM)
    ids = np.array(load(store, data))

    plan = store.vectors.explain_nearest(model, queries[0], 10)
    assert "Index Scan using image_vectors_hnsw" in plan, plan

    recalls = []
    for q in queries:
        hits = store.vectors.nearest(model, q, 10)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        scores = data @ (q / np.linalg.norm(q))
        exact = set(ids[np.argsort(-scores)[:10]].tolist())
        recalls.append(len(exact & {h.id for h in hits}) / 10)
        top = hits[0]
        assert top.score == pytest.approx(float(scores[list(ids).index(top.id)]), abs=1e-5)
    assert np.mean(recalls) >= 0.95


def test_nearest_can_exclude_an_image_and_refuses_a_wrong_dimension(store: Store) -> None:
    model = store.registry.ensure_model(MODEL, DIM)
    v = unit(np.random.default_rng(5), 3)
    a = put(store, record("a.png", b"a"), {MODEL: v[0]})
    put(store, record("b.png", b"b"), {MODEL: v[1]})
    hits = store.vectors.nearest(model, v[0], 5, exclude_id=a)
    assert a not in [h.id for h in hits] and len(hits) == 1
    with pytest.raises(InvalidInput, match="dimensions"):
        store.vectors.nearest(model, np.ones(512, np.float32), 5)


def test_vectors_of_another_model_are_never_returned(store: Store) -> None:
    active = store.registry.ensure_model(MODEL, DIM)
    store.registry.ensure_model("other:2", DIM)
    v = unit(np.random.default_rng(6), 2)
    put(store, record("mine.png", b"m"), {MODEL: v[0]})
    put(store, record("theirs.png", b"t"), {"other:2": v[1]})
    assert [h.name for h in store.vectors.nearest(active, v[1], 10)] == ["mine.png"]
