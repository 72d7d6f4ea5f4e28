"""Ingestion can never starve search: a 429 storm on image calls while searches keep coming.

One worker with ``DATABASE_POOL_MAX=4`` (as an operator runs it on Flex Consumption) delivers 8 blobs
while the fake Vision server throttles every image call for 20 s; meanwhile 16 searches a second that
need no image embedding (cached text queries, "more like this" by id) run for the whole storm. Before
this was built, each search waited for the storm to end (16.7 s each): ingestion held every pooled
connection, inside a transaction, across its retries.

Each blob is delivered as the host delivers it: again after a transient failure, up to
``poisonBlobThreshold`` times. Full-jitter backoff can spend all 10 attempts inside the 20 s storm
(about 4 blobs in 1,000); the host's next delivery then finds the storm over, as in production.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from shared.runtime import Runtime, build_runtime, set_runtime
from shared.settings import Settings
from tests import storm
from tests.conftest import prepare
from tests.fake_vision import FakeVision


@pytest.fixture
def worker(app_settings: Settings, pool: ConnectionPool) -> Iterator[Runtime]:
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    settings = app_settings.with_overrides({"DATABASE_POOL_MAX": "4", "VISION_MAX_RETRY_SECONDS": "60"})
    prepare(settings)
    rt = build_runtime(settings)
    rt.blobs.ensure_container()
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


@pytest.mark.slow
def test_searches_answer_fast_through_a_throttling_storm_and_every_image_is_indexed_once(
    worker: Runtime, fake_vision: FakeVision
) -> None:
    ids = storm.prepare(worker)
    before = len(fake_vision.calls("image"))
    result = storm.run(worker, fake_vision, ids=ids, storm_seconds=20, ingestions=8, searches_per_second=16)

    assert result.ingest_errors == [], "a blob would have gone to the poison queue"
    assert len(result.latencies) >= 16 * 20 * 0.9, "the searches did not keep their rate"
    assert set(result.statuses) == {200}
    assert result.p95_ms < 250, f"search p95 {result.p95_ms:.0f} ms during the storm (p50 {result.p50_ms:.0f} ms)"
    # Afterwards every image is indexed, and embedded exactly once (throttled calls aside).
    with worker.store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'indexed'), count(*) FROM images WHERE name LIKE 'storm/%'"
        ).fetchone()
    assert rows == (8, 8)
    answered = [c for c in fake_vision.calls("image")[before:] if c["status"] == 200]
    throttled = [c for c in fake_vision.calls("image")[before:] if c["status"] == 429]
    assert len(answered) == 8 and len(throttled) >= 8, (len(answered), len(throttled))
