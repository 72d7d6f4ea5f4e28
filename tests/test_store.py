"""The store against a real PostgreSQL + pgvector: schema, upserts, failures, deletes, nearest neighbours."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector import Vector as PgVector

from shared.catalogue import ImageRecord, image_id
from shared.errors import InvalidInput
from shared.registry import Model
from shared.schema import LATEST_VERSION, migrate
from shared.store import Store
from shared.vectorsearch import SearchFilters, prefix_end

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
        **{"etag": '"0x1"', "metadata": {"owner": "tests"}, **extra},
    )


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def put(store: Store, rec: ImageRecord, vectors: dict[str, np.ndarray]) -> int:
    iid = store.catalogue.save_indexed(rec, vectors)
    assert iid is not None
    return iid


def test_schema_is_idempotent(database_url: str, citus: bool) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        first = migrate(conn)
        again = migrate(conn)
        assert (first.citus, again.citus) == (citus, citus)
        assert again.applied == () and again.before == again.after == LATEST_VERSION
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"images", "image_vectors", "embedding_models"} <= tables
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert version is not None and tuple(int(p) for p in version[0].split(".")[:2]) >= (0, 7)


def test_first_model_becomes_active_and_gets_an_hnsw_index(store: Store) -> None:
    model = store.registry.ensure_model(MODEL, DIM)
    assert model == Model(MODEL, DIM, "active")
    assert store.registry.ensure_model("other:2", 512).state == "building"
    assert store.registry.active_model() == model
    with store.pool.connection() as conn:
        defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'image_vectors'")]
    hnsw = [d for d in defs if "USING hnsw" in d and MODEL in d]
    # New models get a halfvec index (HNSW_PRECISION's default): half the size, the same recall.
    assert len(hnsw) == 1 and "halfvec(1024)" in hnsw[0] and "halfvec_cosine_ops" in hnsw[0]


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
    store.catalogue.save_failure("images", "bad.jpg", "InvalidImage", "not an image")
    store.catalogue.save_failure("images", "bad.jpg", "InvalidImage", "still not an image")
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


def test_concurrent_deliveries_of_the_same_bytes_get_one_claim(store: Store) -> None:
    """Six deliveries of one blob's bytes check and claim at once: one claims (and embeds), the others
    find it busy; none holds a connection afterwards, and after the claimant wrote there is one row."""
    store.registry.ensure_model(MODEL, DIM)
    sha = hashlib.sha256(b"same").digest()
    barrier = threading.Barrier(6)
    states: list[str] = []

    def deliver(_: int) -> None:
        barrier.wait()
        check = store.catalogue.check_and_claim(
            "images", "same.png", sha, {MODEL}, owner=uuid.uuid4(), lease_seconds=60
        )
        states.append(check.state)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(states) == ["busy"] * 5 + ["claimed"]
    # Every connection went back to the pool (returned connections are checked in the background).
    deadline = time.monotonic() + 5
    while (stats := store.pool.get_stats())["pool_available"] != stats["pool_size"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["pool_available"] == stats["pool_size"]


def test_a_claim_that_expired_is_taken_over_and_a_written_one_is_released(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    rec = record("lease.png", b"lease")
    first, second = uuid.uuid4(), uuid.uuid4()
    cat = store.catalogue
    assert (
        cat.check_and_claim("images", "lease.png", rec.sha256, {MODEL}, owner=first, lease_seconds=0).state == "claimed"
    )
    # Its holder died: the lease ran out, the next delivery takes over.
    assert (
        cat.check_and_claim("images", "lease.png", rec.sha256, {MODEL}, owner=second, lease_seconds=60).state
        == "claimed"
    )
    assert cat.save_indexed(rec, {MODEL: unit(np.random.default_rng(1), 1)[0]}, owner=second) is not None
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM ingest_claims").fetchone() == (0,)
    assert (
        cat.check_and_claim("images", "lease.png", rec.sha256, {MODEL}, owner=first, lease_seconds=60).state
        == "unchanged"
    )


def test_an_older_version_never_replaces_a_newer_one(store: Store) -> None:
    store.registry.ensure_model(MODEL, DIM)
    rng = np.random.default_rng(5)
    new = record("v.png", b"new", etag='"2"', last_modified=datetime(2026, 5, 2, tzinfo=UTC))
    old = record("v.png", b"old", etag='"1"', last_modified=datetime(2026, 5, 1, tzinfo=UTC))
    assert store.catalogue.save_indexed(new, {MODEL: unit(rng, 1)[0]}) is not None
    assert store.catalogue.save_indexed(old, {MODEL: unit(rng, 1)[0]}) is None
    assert (
        store.catalogue.save_failure("images", "v.png", "InvalidImage", "old", last_modified=old.last_modified) is None
    )
    row = store.catalogue.get_image(image_id("images", "v.png"))
    assert row is not None and row.sha256 == new.sha256 and row.etag == '"2"' and row.status == "indexed"


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
    records = [record(f"img-{i:05d}.png", str(i).encode()) for i in range(len(data))]
    store.bulk.upsert(records, data, MODEL)
    with store.pool.connection() as conn:
        conn.execute("ANALYZE image_vectors")
        conn.execute("ANALYZE images")
    return [image_id(r.container, r.name) for r in records]


@pytest.mark.single_node
def test_the_nearest_query_reads_the_hnsw_index(store: Store, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    data, queries = corpus
    model = store.registry.ensure_model(MODEL, DIM)
    load(store, data)
    plan = store.vectors.explain_nearest(model, queries[0], 10)
    assert "Index Scan using image_vectors_hnsw" in plan, plan


@pytest.mark.citus_only
def test_on_citus_every_shard_has_the_hnsw_index_and_its_plan_reads_it(
    store: Store, corpus: tuple[np.ndarray, np.ndarray]
) -> None:
    data, queries = corpus
    model = store.registry.ensure_model(MODEL, DIM)
    load(store, data)
    with store.pool.connection() as conn:
        shards = conn.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name = 'image_vectors'::regclass"
        ).fetchone()
        indexed = conn.execute(
            "SELECT result FROM run_command_on_shards('image_vectors', $$SELECT count(*) FROM pg_indexes "
            "WHERE tablename = '%s' AND indexdef LIKE '%%USING hnsw%%' AND indexdef LIKE '%%halfvec(1024)%%' "
            "AND indexdef LIKE '%%test-model:1%%'$$)"
        ).fetchall()
        assert shards is not None and len(indexed) == shards[0] and all(r[0] == "1" for r in indexed), indexed
        # A shard holds a quarter of these 2,000 vectors, which its planner rightly sorts whole; with
        # sorting ruled out, each shard's plan reads its HNSW index (the project's strategy=index does so).
        with conn.transaction():
            conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            conn.execute("SET LOCAL enable_sort = off")
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    "EXPLAIN (ANALYZE, COSTS OFF) SELECT image_id FROM image_vectors WHERE model_id = %s "
                    "ORDER BY embedding::halfvec(1024) <=> %s::halfvec(1024) LIMIT 10",
                    (model.model_id, PgVector(queries[0])),
                )
            )
    assert "Index Scan using image_vectors_hnsw" in plan, plan


def test_nearest_matches_exact_ranking(store: Store, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    data, queries = corpus
    model = store.registry.ensure_model(MODEL, DIM)
    ids = np.array(load(store, data))

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


@pytest.mark.parametrize("strategy", ["auto", "exact", "index"])
def test_a_prefix_matches_exactly_the_names_that_start_with_it(store: Store, strategy: str) -> None:
    """The prefix filter is a range of names in byte order: it must keep every name that starts with the
    prefix, whatever follows (the largest character too), and nothing beside it."""
    model = store.registry.ensure_model(MODEL, DIM)
    names = [
        "ab", "ab/1.png", "ab0.png", "abz.png", "ab\U0010ffff.png", "ab%_.png",  # start with "ab"
        "a.png", "aa.png", "ac.png", "b.png", "AB.png", "a\U0010ffff.png",  # do not
        "é/1.png", "éa.png", "ê.png", "e.png", "\ud7ff.png", "\ue000.png",
    ]  # fmt: skip
    v = unit(np.random.default_rng(11), len(names))
    for i, name in enumerate(names):
        put(store, record(name, name.encode()), {MODEL: v[i]})

    def found(prefix: str) -> set[str]:
        hits = store.vectors.search(
            model, v[0], 50, filters=SearchFilters(container="images", prefix=prefix), strategy=strategy
        ).hits
        return {h.name for h in hits}

    for prefix in ["ab", "a", "a\U0010ffff", "é", "\ud7ff", "ab%", "ab%_", "\U0010ffff"]:
        assert found(prefix) == {n for n in names if n.startswith(prefix)}, prefix


def test_prefix_end_is_the_least_string_above_every_name_with_the_prefix() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("p00/") == "p000"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"  # the surrogates are skipped: no string holds one
    assert prefix_end("\U0010ffff\U0010ffff") is None  # nothing is above every such name
    assert prefix_end("é") == "ê"


def test_an_unfiltered_search_returns_k_rows_when_the_nearest_vectors_are_in_another_container(
    store: Store, citus: bool
) -> None:
    """Without a filter a single node scans the index without iterative scan: its first ef_search candidates.
    When the join leaves fewer than k of them (the nearest images are in another container), the exact
    scan answers, and the search still returns k images of its own container."""
    model = store.registry.ensure_model(MODEL, DIM)
    rng = np.random.default_rng(12)
    query = unit(rng, 1)[0]
    near = query + 0.05 * unit(rng, 120)  # 120 images in another container, all nearer than any of ours
    for i, v in enumerate(near):
        rec = dataclasses.replace(record(f"near/{i}.png", f"n{i}".encode()), container="elsewhere")
        put(store, rec, {MODEL: v / np.linalg.norm(v)})
    ours = unit(rng, 12)
    for i, v in enumerate(ours):
        put(store, record(f"ours/{i}.png", f"o{i}".encode()), {MODEL: v})
    store.vectors.exact_scan_max_rows = 5  # as if the collection were large: the index path answers first
    try:
        found = store.vectors.search(model, query, 10, filters=SearchFilters(container="images"), ef_search=40)
    finally:
        del store.vectors.exact_scan_max_rows
    assert len(found.hits) == 10 and {h.name.split("/")[0] for h in found.hits} == {"ours"}
    # On Citus the database's defaults keep the iterative scan, which finds them in the index itself.
    assert found.strategy == ("index" if citus else "index+exact")
    distances = [1 - float(np.dot(query, ours[int(h.name.split("/")[1][:-4])])) for h in found.hits]
    assert [h.distance for h in found.hits] == pytest.approx(sorted(distances)[:10], abs=1e-4)


def test_every_writer_stores_the_images_container_and_name_beside_its_vectors(store: Store) -> None:
    """The exact scan and the index path filter by the vector's own copy of its image's container and
    name (migration 4): ingestion, the bulk path and a re-embedding each write it, and a vector written
    without one (by older code) gets it when written again."""
    rng = np.random.default_rng(4)
    store.registry.ensure_model(MODEL, DIM)
    store.registry.ensure_model("second:1", DIM, create_index=False)
    put(store, record("one/ingested.png"), {MODEL: unit(rng, 1)[0]})
    # Names of other lengths in bytes (one with a two-byte letter) travel in separate COPY records.
    bulk = [record("two/bulk-a.png", b"a"), record("two/bulk-b.png", b"b"), record("two/Straße 7.png", b"c")]
    store.bulk.upsert(bulk, unit(rng, 3), MODEL)
    again = record("one/ingested.png")
    assert store.registry.add_vector(image_id("images", again.name), "second:1", again.sha256, unit(rng, 1)[0])
    with store.pool.connection() as conn:
        conn.execute(
            "UPDATE image_vectors SET container = NULL, name = NULL WHERE image_id = %s",
            (image_id("images", "two/bulk-b.png"),),
        )
    store.bulk.upsert([record("two/bulk-b.png", b"b")], unit(rng, 1), MODEL)

    def named() -> list[tuple[str, str, str, str]]:
        with store.pool.connection() as conn:
            rows = conn.execute(
                "SELECT v.model_id, i.name, v.container, v.name FROM image_vectors v "
                "JOIN images i ON i.id = v.image_id ORDER BY v.model_id, i.name"
            ).fetchall()
        return sorted(tuple(r) for r in rows)

    assert named() == sorted(
        [
            ("second:1", "one/ingested.png", "images", "one/ingested.png"),
            (MODEL, "one/ingested.png", "images", "one/ingested.png"),
            (MODEL, "two/Straße 7.png", "images", "two/Straße 7.png"),
            (MODEL, "two/bulk-a.png", "images", "two/bulk-a.png"),
            (MODEL, "two/bulk-b.png", "images", "two/bulk-b.png"),
        ]
    )
