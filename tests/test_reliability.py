"""Nothing is lost under faults and hostile input (issue #8).

Beyond the per-feature tests: every file of the bad-input corpus (tests/badfiles.py) through the blob
trigger and through reconcile; scripted faults of the embedding service (throttling, outages,
timeouts, resets, answers that break the contract, auth) through the blob trigger; the real database
stopped and restarted in the middle of a reconcile of hundreds of images; and many deliveries of many
blobs at once. After each, the table must equal the container: no image lost, no duplicate, no orphan,
no partial row, one vector per indexed image for the active model, made from the blob's current bytes.

The counts (faults injected, hostile inputs, images checked and lost) are real tallies of what ran,
stored in pytest's cache: ``pytest --cache-show 'reliability/*'``.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import json
import logging
import mimetypes
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import numpy as np
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from scripts.services import AZURITE_KEY, Azurite, Postgres
from shared.catalogue import ImageRecord, image_id
from shared.db import make_pool
from shared.errors import DatabaseUnavailable, ProviderMisconfigured, ProviderResponseError, ProviderUnavailable
from shared.ingest import reconcile
from shared.runtime import Runtime, build_runtime, set_runtime
from shared.settings import Settings, get_settings
from shared.store import Store
from tests.appfns import POISON_BLOB_THRESHOLD, handler
from tests.badfiles import CORPUS, BadFile, Tally
from tests.conftest import make_settings, prepare
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes
from tests.test_ingest import as_host_delivers, upload

tally = Tally("test_reliability")


@pytest.fixture(scope="module", autouse=True)
def _save_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tally.save(request.config)


# Short timeouts so that faults cost seconds, not minutes; each test may ask for other budgets.
FAST = {"VISION_TIMEOUT_SECONDS": "1", "VISION_MAX_RETRY_SECONDS": "3"}


@pytest.fixture
def make_runtime(app_settings: Settings, pool: ConnectionPool) -> Iterator[Callable[..., Runtime]]:
    """Runtimes over one emptied collection and fresh container, with ``FAST`` plus any overrides;
    the last one made is the one the triggers use."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    made: list[Runtime] = []

    def make(**overrides: str) -> Runtime:
        settings = app_settings.with_overrides({**FAST, **overrides})
        prepare(settings)
        rt = build_runtime(settings)
        rt.blobs.ensure_container()
        set_runtime(rt)
        made.append(rt)
        return rt

    yield make
    set_runtime(None)
    for rt in made:
        rt.close()


@pytest.fixture
def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()


@pytest.fixture
def health_env(app_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process environment the health function reads (it takes the worker's settings)."""
    for key in ("DATABASE_URL", "VISION_ENDPOINT", "VISION_KEY", "ImagesStorage", "IMAGES_CONTAINER"):
        monkeypatch.setenv(key, app_settings.raw(key) or "")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def health_status() -> int:
    req = func.HttpRequest("GET", "http://localhost/api/health", body=b"", headers={})
    return int(handler("health")(req).status_code)


def deliver(rt: Runtime, name: str) -> None:
    handler("index_image")(as_host_delivers(rt, name))


def content_type_for(name: str) -> str:
    """What a careless uploader sets: the type the name suggests, whatever the bytes are."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def image_calls(fake: FakeVision) -> int:
    return len(fake.calls("image"))


# --- the invariant: the table equals the container ---------------------------------------------


@dataclass
class Audit:
    blobs: int
    indexed: int
    failed: int
    lost: int


def audit(rt: Runtime, *, failed: dict[str, str] | None = None) -> Audit:
    """The table equals the container: one row per blob and none other; failed rows (exactly those in
    ``failed``, name → code) have no vectors; every other row is indexed with exactly one vector,
    of the active model, of the blob's current bytes (the vector the service gives those bytes)."""
    failed = failed or {}
    container = rt.settings.images_container
    active = rt.model.model_id
    blobs = {b.name for b in rt.blobs.list()}
    with rt.store.pool.connection() as conn:
        rows = conn.execute(
            """SELECT i.name, i.status, i.sha256, i.failure_code,
                      count(v.image_id) AS vectors,
                      count(v.image_id) FILTER (WHERE v.model_id = %s AND v.sha256 = i.sha256) AS current
               FROM images i LEFT JOIN image_vectors v ON v.image_id = i.id
               WHERE i.container = %s GROUP BY i.id""",
            (active, container),
        ).fetchall()
        orphan_vectors = conn.execute(
            "SELECT count(*) FROM image_vectors v WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.id = v.image_id)"
        ).fetchone()
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), "duplicate rows"
    assert orphan_vectors == (0,), "vectors without an image"
    assert set(names) - blobs == set(), "orphan rows (their blob is gone)"
    missing = blobs - set(names)
    by_name = {r[0]: r for r in rows}
    lost = len(missing)
    indexed = 0
    with ThreadPoolExecutor(8) as pool:
        contents = dict(zip(blobs, pool.map(lambda n: rt.blobs.read(n, 30 * 1024 * 1024)[0], blobs), strict=True))
    for name in sorted(blobs - missing):
        _, status, sha, code, vectors, current = by_name[name]
        data = contents[name]
        if sha is None:  # refused from its size alone: its bytes were never read, so never hashed
            assert code == "TooLarge" and len(data) > 20 * 1024 * 1024, f"{name}: no sha256"
        else:
            assert bytes(sha) == hashlib.sha256(data).digest(), f"{name}: stale sha256"
        if name in failed:
            assert (status, code, vectors) == ("failed", failed[name], 0), f"{name}: expected a clean failure"
            continue
        if status != "indexed" or current != 1 or vectors != 1:
            lost += 1
            continue
        stored = rt.store.catalogue.get_vector(image_id(container, name), active)
        expected = FakeVision.vector_for_image(data, rt.settings.vision_model_version)
        assert stored is not None and np.allclose(stored, expected, atol=1e-5), f"{name}: wrong vector"
        indexed += 1
    result = Audit(len(blobs), indexed, len(failed), lost)
    tally.add("images_checked", len(blobs))
    tally.add("images_lost", lost)
    assert lost == 0, f"{lost} image(s) lost: missing rows {sorted(missing)[:10]}"
    return result


# --- 1. the bad-input corpus ---------------------------------------------------------------------


EXIF_WARNING = "ignore:Corrupt EXIF data:UserWarning"  # Pillow's note on broken-exif-jpeg; the image indexes


@pytest.mark.filterwarnings(EXIF_WARNING)
@pytest.mark.parametrize("bad", CORPUS, ids=[f.id for f in CORPUS])
def test_bad_input_reaches_a_defined_outcome_and_the_worker_stays_healthy(
    rt: Runtime, fake_vision: FakeVision, health_env: None, bad: BadFile
) -> None:
    data = bad.data()
    upload(rt, bad.name, data, content_type_for(bad.name))
    deliver(rt, bad.name)  # no exception: the invocation completes, the host does not retry
    tally.add("hostile_inputs")

    row = rt.store.catalogue.get_image(image_id(rt.settings.images_container, bad.name))
    assert row is not None and row.name == bad.name
    assert row.status == bad.expect, f"{bad.id}: {row.status} ({row.failure_code}: {row.failure_reason})"
    assert row.byte_size == len(data)
    if bad.expect == "failed":
        assert row.failure_code == bad.code and row.failure_reason
        assert bad.reason is None or bad.reason in row.failure_reason
        assert image_calls(fake_vision) == (1 if bad.via_service else 0)  # refused locally: no paid call
        audit(rt, failed={bad.name: bad.code or ""})
    else:
        assert (row.content_type, (row.width, row.height)) == (bad.content_type, bad.size)
        assert image_calls(fake_vision) == 1
        audit(rt)
        with rt.store.pool.connection() as conn:
            thumb = conn.execute("SELECT thumbnail FROM images WHERE id = %s", (row.id,)).fetchone()
        assert thumb == (True,), "every indexed image gets its preview"

    # Delivered again (at-least-once): the same outcome and no second call.
    deliver(rt, bad.name)
    again = rt.store.catalogue.get_image(row.id)
    assert again is not None and again.status == bad.expect
    assert image_calls(fake_vision) == (1 if bad.via_service or bad.expect == "indexed" else 0)
    if bad.expect == "failed":
        assert again.failure_count == 2

    # The worker is unharmed: a good image still indexes and the health check answers 200.
    upload(rt, "after/good.jpg", image_bytes("green", (64, 48), seed=len(bad.id)))
    deliver(rt, "after/good.jpg")
    assert rt.store.catalogue.get_image(image_id(rt.settings.images_container, "after/good.jpg")).status == "indexed"  # type: ignore[union-attr]
    assert health_status() == 200


@pytest.mark.filterwarnings(EXIF_WARNING)
def test_the_whole_corpus_through_reconcile(rt: Runtime, fake_vision: FakeVision) -> None:
    """The other way in: reconcile reads each blob itself (a ranged read capped at 20 MB + 1 byte)."""

    def put(bad: BadFile) -> None:
        upload(rt, bad.name, bad.data(), content_type_for(bad.name))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, CORPUS))
    report = reconcile(rt)
    tally.add("hostile_inputs", len(CORPUS))
    expected_failed = {f.name: f.code or "" for f in CORPUS if f.expect == "failed"}
    assert report.errors == []
    assert (report.indexed, report.failed) == (len(CORPUS) - len(expected_failed), len(expected_failed))
    assert image_calls(fake_vision) == report.indexed + sum(1 for f in CORPUS if f.via_service)
    result = audit(rt, failed=expected_failed)
    assert result.indexed == report.indexed
    again = reconcile(rt)
    assert (again.to_index, again.to_remove) == (0, 0)


# --- 2. faults of the embedding service ------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A scripted fault, what the delivery then does, and what it costs.

    ``outcome``: ``indexed`` (retried through within the budget), or the exception the invocation
    fails with (the host then retries the delivery: simulated by delivering again once the fault is
    over), or ``failed`` (the service refused the image: recorded, the invocation completes).
    ``scripted``: faulty answers queued; ``min_gap``: the least time between two calls (Retry-After).
    """

    id: str
    inject: Callable[[FakeVision], None]
    scripted: int
    outcome: str | type[Exception]
    min_gap: float = 0.0
    budget: str | None = None  # VISION_MAX_RETRY_SECONDS, when neither LONG nor SHORT fits


def _http_date(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


GATEWAY_HTML = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
PERSISTENT = 1000  # more faulty answers than any retry budget lets a delivery see
# The retry budget: enough to ride out a burst (waits of up to 1 s, the next try's 1 s reserved),
# and short where the fault persists, so that giving up costs seconds.
LONG = {"VISION_MAX_RETRY_SECONDS": "6"}
SHORT = {"VISION_MAX_RETRY_SECONDS": "2"}

FAULTS: tuple[Fault, ...] = (
    # Throttling: retried, never sooner than Retry-After, within the budget.
    Fault("429-burst-retry-after", lambda f: f.fail_next(429, retry_after="1", times=3), 3, "indexed", 0.95),
    Fault("429-burst-no-retry-after", lambda f: f.fail_next(429, times=3), 3, "indexed"),
    Fault(
        "429-retry-after-ms",
        lambda f: f.fail_next(429, headers={"retry-after-ms": "400"}, times=2),
        2,
        "indexed",
        0.38,
    ),
    Fault(
        "429-retry-after-http-date", lambda f: f.fail_next(429, retry_after=_http_date(2), times=1), 1, "indexed", 0.9
    ),
    Fault(
        "429-storm-retry-after",
        lambda f: f.fail_next(429, retry_after="1", times=PERSISTENT),
        PERSISTENT,
        ProviderUnavailable,
        0.95,
        budget="3",  # a wait of 1 s and the next try's 1 s fit: the retry is what is tested
    ),
    Fault("429-storm-no-retry-after", lambda f: f.fail_next(429, times=PERSISTENT), PERSISTENT, ProviderUnavailable),
    Fault("429-retry-after-beyond-budget", lambda f: f.fail_next(429, retry_after="3600"), 1, ProviderUnavailable),
    # Outages: 5xx and gateways, bursts and persistent.
    Fault("500-burst", lambda f: f.fail_next(500, times=3), 3, "indexed"),
    Fault(
        "502-gateway-html",
        lambda f: f.respond_next(502, body=GATEWAY_HTML, content_type="text/html", times=2),
        2,
        "indexed",
    ),
    Fault("503-burst-retry-after", lambda f: f.fail_next(503, retry_after="1", times=2), 2, "indexed", 0.95),
    Fault("504-burst", lambda f: f.fail_next(504, times=2), 2, "indexed"),
    Fault("408-request-timeout", lambda f: f.fail_next(408, times=2), 2, "indexed"),
    Fault("503-outage", lambda f: f.fail_next(503, times=PERSISTENT), PERSISTENT, ProviderUnavailable),
    # The network: no answer within VISION_TIMEOUT_SECONDS, connections reset mid-request.
    Fault("timeout-once", lambda f: f.delay_next(2.5), 1, "indexed"),
    # (3 s: one timed-out try, a wait, and a second try always fit; the retry is what is tested.)
    Fault(
        "timeouts-persistent",
        lambda f: f.delay_next(2.5, times=PERSISTENT),
        PERSISTENT,
        ProviderUnavailable,
        budget="3",
    ),
    Fault("connection-reset-burst", lambda f: f.close_connection_next(times=3), 3, "indexed"),
    Fault(
        "connection-reset-persistent",
        lambda f: f.close_connection_next(times=PERSISTENT),
        PERSISTENT,
        ProviderUnavailable,
    ),
    # Answers that break the contract: not retried in place (each call is billed); the host retries.
    Fault("malformed-json", lambda f: f.malformed_next("{'vector': [0.1,"), 1, ProviderResponseError),
    Fault("empty-200", lambda f: f.respond_next(200, body=b""), 1, ProviderResponseError),
    Fault("json-array", lambda f: f.respond_next(200, json_body=[0.1] * 1024), 1, ProviderResponseError),
    Fault("wrong-vector-length", lambda f: f.wrong_vector_next(512), 1, ProviderResponseError),
    Fault("vector-1025", lambda f: f.wrong_vector_next(1025), 1, ProviderResponseError),
    Fault(
        "vector-nan",
        lambda f: f.respond_next(200, body='{"modelVersion": "2023-04-15", "vector": [NaN' + ", 0.1" * 1023 + "]}"),
        1,
        ProviderResponseError,
    ),
    Fault(
        "vector-of-strings",
        lambda f: f.respond_next(200, json_body={"modelVersion": "2023-04-15", "vector": ["0.1"] * 1024}),
        1,
        ProviderResponseError,
    ),
    Fault("wrong-model-version", lambda f: f.wrong_model_version_next("2022-04-11"), 1, ProviderResponseError),
    Fault(
        "model-version-latest",
        lambda f: f.respond_next(200, json_body={"modelVersion": "latest", "vector": [0.01] * 1024}),
        1,
        ProviderResponseError,
    ),
    # The service refuses *us*: configuration, not the image — the image is not marked bad.
    Fault("401-key-rejected", lambda f: f.fail_next(401, code="401"), 1, ProviderMisconfigured),
    Fault("403-forbidden", lambda f: f.fail_next(403, code="Forbidden"), 1, ProviderMisconfigured),
    Fault(
        "404-wrong-endpoint",
        lambda f: f.fail_next(404, code="404", message="Resource not found"),
        1,
        ProviderMisconfigured,
    ),
    Fault(
        "302-redirect",
        lambda f: f.respond_next(302, headers={"Location": "https://login.example/"}),
        1,
        ProviderMisconfigured,
    ),
    Fault(
        "400-model-version-unsupported",
        lambda f: f.fail_next(
            400, code="InvalidRequest", inner_code="InvalidModel", message="model-version is not supported"
        ),
        1,
        ProviderMisconfigured,
    ),
    # The service refuses the image: a recorded failure, and the invocation completes.
    Fault(
        "400-invalid-image",
        lambda f: f.fail_next(400, code="InvalidRequest", inner_code="InvalidImageFormat"),
        1,
        "failed",
    ),
)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_a_fault_of_the_embedding_service_loses_no_image(
    make_runtime: Callable[..., Runtime], fake_vision: FakeVision, fault: Fault
) -> None:
    budget = {"VISION_MAX_RETRY_SECONDS": fault.budget} if fault.budget else None
    rt = make_runtime(**(budget or (LONG if fault.outcome == "indexed" else SHORT)))
    data = image_bytes("blue", (64, 48), seed=7)
    upload(rt, "victim.jpg", data)
    fault.inject(fake_vision)
    started = time.monotonic()
    if isinstance(fault.outcome, str):
        deliver(rt, "victim.jpg")
    else:
        with pytest.raises(fault.outcome) as raised:
            deliver(rt, "victim.jpg")
    elapsed = time.monotonic() - started
    calls = fake_vision.calls("image")
    served = min(len(calls), fault.scripted)  # each request consumes one scripted answer
    tally.add("faults_injected", served)
    tally.add("fault_scenarios")

    budget = float(rt.settings.vision_max_retry_seconds)
    assert elapsed < budget + float(rt.settings.vision_timeout_seconds) + 1.5, "the retry budget holds"
    gaps = [b["monotonic"] - a["monotonic"] for a, b in itertools.pairwise(calls)]
    assert all(g >= fault.min_gap for g in gaps), f"retried sooner than Retry-After: {gaps}"
    row = rt.store.catalogue.get_image(image_id(rt.settings.images_container, "victim.jpg"))

    if fault.outcome == "indexed":
        assert served == fault.scripted and len(calls) == fault.scripted + 1
        audit(rt)
        return
    if fault.outcome == "failed":
        assert row is not None and row.status == "failed" and row.failure_code == "InvalidImageFormat"
        audit(rt, failed={"victim.jpg": "InvalidImageFormat"})
        return
    # The invocation failed: nothing was written, so the host's retry starts clean.
    assert row is None, "no partial row after a failed invocation"
    if fault.outcome is ProviderUnavailable:
        assert len(calls) >= 2 or fault.id.endswith("beyond-budget")
        assert raised.value.retry_after is not None  # type: ignore[attr-defined]
    else:
        assert len(calls) == 1, "contract and configuration errors are not retried in place"
    fake_vision.reset()  # the fault is over; the host delivers the blob again
    deliver(rt, "victim.jpg")
    assert len(fake_vision.calls("image")) == 1
    audit(rt)


def test_a_service_storm_across_many_deliveries_loses_nothing(
    make_runtime: Callable[..., Runtime], fake_vision: FakeVision
) -> None:
    """A real rate limit (token bucket, 429 with Retry-After) hit by 8 workers at once: every blob ends
    indexed, after at most the host's 5 tries per blob, and each image is embedded exactly once."""
    rt = make_runtime(VISION_MAX_RETRY_SECONDS="4")
    names = [f"storm/{i:02d}.jpg" for i in range(40)]
    for i, name in enumerate(names):
        upload(rt, name, image_bytes(["red", "green", "blue", "yellow"][i % 4], (48, 40), seed=i))
    fake_vision.rate_limit_per_second = 12
    tries: dict[str, int] = {}

    def host(name: str) -> None:
        for attempt in range(1, POISON_BLOB_THRESHOLD + 1):
            tries[name] = attempt
            try:
                handler("index_image")(as_host_delivers(rt, name))
                return
            except ProviderUnavailable:
                continue
        raise AssertionError(f"{name} would have gone to the poison queue")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(host, names))
    calls = fake_vision.calls("image")
    throttled = sum(1 for c in calls if c["status"] == 429)
    tally.add("faults_injected", throttled)
    tally.add("fault_scenarios")
    assert throttled > 0, "the storm must really throttle"
    assert sum(1 for c in calls if c["status"] == 200) == len(names)
    assert audit(rt).indexed == len(names)


def test_a_failure_while_re_embedding_changed_bytes_keeps_the_previous_version(
    rt: Runtime, fake_vision: FakeVision
) -> None:
    old, new = image_bytes("red", seed=1), image_bytes("blue", seed=2)
    upload(rt, "changing.jpg", old)
    deliver(rt, "changing.jpg")
    upload(rt, "changing.jpg", new)
    fake_vision.fail_next(503, times=PERSISTENT)
    with pytest.raises(ProviderUnavailable):
        deliver(rt, "changing.jpg")
    tally.add("faults_injected", len(fake_vision.calls("image")) - 1)
    tally.add("fault_scenarios")
    iid = image_id(rt.settings.images_container, "changing.jpg")
    kept = rt.store.catalogue.get_vector(iid, rt.model.model_id)
    assert kept is not None and np.allclose(kept, FakeVision.vector_for_image(old), atol=1e-5)
    fake_vision.reset()
    report = reconcile(rt)  # the timer catches it even if the host gave up
    assert report.indexed == 1 and not report.errors
    audit(rt)


def test_thumbnails_storage_refusing_costs_the_preview_not_the_image(
    rt: Runtime, fake_vision: FakeVision, caplog: pytest.LogCaptureFixture, azurite: Azurite
) -> None:
    # A missing thumbnails container is created on first use (tests/test_cli.py); a refusal cannot be mended.
    from azure.storage.blob import BlobServiceClient

    assert rt.blobs.thumbnails_name is not None
    refusing = BlobServiceClient.from_connection_string(azurite.connection_string.replace(AZURITE_KEY, "A" * 86 + "=="))
    rt.blobs.thumbnails = refusing.get_container_client(rt.blobs.thumbnails_name)
    upload(rt, "nothumb.jpg", image_bytes("yellow"))
    with caplog.at_level(logging.WARNING, logger="shared.ingest"):
        deliver(rt, "nothumb.jpg")
    tally.add("faults_injected")
    tally.add("fault_scenarios")
    warnings = [r.getMessage() for r in caplog.records if "thumbnail for nothumb.jpg not stored" in r.getMessage()]
    assert len(warnings) == 1 and "403" in warnings[0] and "\n" not in warnings[0], warnings
    audit(rt)


# --- the database stopped and restarted in the middle of a reconcile ---------------------------------


def count_rows(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM images").fetchone()
    return int(row[0]) if row else 0


def wait_until_accepting(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_again(pg: Postgres) -> None:
    pg.start()


@pytest.fixture
def restartable(postgres: Postgres, database_url: str) -> Iterator[Postgres]:
    """The session's PostgreSQL, which this test may stop: whatever happens, it is running again after."""
    yield postgres
    try:
        wait_until_accepting(database_url, timeout=2)
    except psycopg.OperationalError:
        start_again(postgres)
        wait_until_accepting(database_url)


def upload_many(rt: Runtime, images: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: rt.blobs.upload(item[0], item[1], "image/jpeg"), images.items()))


def many_images(prefix: str, n: int) -> dict[str, bytes]:
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    return {f"{prefix}/{i:03d}.jpg": image_bytes(colours[i % 6], (40, 32), seed=i) for i in range(n)}


@pytest.mark.embedded_only
@pytest.mark.parametrize(
    ("images", "outage_seconds", "pool_timeout"),
    [
        # Shorter than the pool's wait for a connection: the workers wait, then carry on.
        pytest.param(300, 2.0, None, id="300-images-outage-shorter-than-pool-timeout"),
        # Longer: the workers give up on their blobs (PoolTimeout), reported; the next run does them.
        # (The pool waits 30 s in production; 1.5 s here makes the same path cost seconds.)
        pytest.param(300, 4.0, 1.5, id="300-images-outage-longer-than-pool-timeout"),
    ],
)
def test_database_restart_in_the_middle_of_a_reconcile_loses_nothing(
    make_runtime: Callable[..., Runtime],
    fake_vision: FakeVision,
    restartable: Postgres,
    database_url: str,
    pool: ConnectionPool,
    health_env: None,
    images: int,
    outage_seconds: float,
    pool_timeout: float | None,
) -> None:
    rt = make_runtime()
    if pool_timeout is not None:
        rt.store.pool.timeout = pool_timeout
    upload_many(rt, many_images("bulk", images))
    fake_vision.latency = 0.01  # keep embedding calls in flight when the database goes
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = reconcile(rt, concurrency=8)
        except BaseException as exc:  # reconcile must collect errors, not raise them
            result["raised"] = exc

    worker = threading.Thread(target=run, name="reconcile-under-test")
    worker.start()
    deadline = time.monotonic() + 60
    while count_rows(database_url) < images // 5:
        assert worker.is_alive() and time.monotonic() < deadline, "reconcile made no progress"
        time.sleep(0.05)
    try:
        restartable.stop()
        tally.add("faults_injected")
        tally.add("database_outages")
        time.sleep(outage_seconds)
    finally:
        start_again(restartable)
        wait_until_accepting(database_url)
    worker.join(timeout=240)
    assert not worker.is_alive(), "reconcile hangs after the database came back"
    assert "raised" not in result, f"reconcile raised {result.get('raised')!r}"
    first = result["report"]
    tally.add("reconcile_blobs_deferred_by_the_outage", len(first.errors))
    assert first.indexed + len(first.errors) == images  # every blob was either done or reported
    assert all("database" in e.lower() or "connection" in e.lower() for e in first.errors), first.errors[:5]

    fake_vision.latency = 0.0
    second = reconcile(rt)
    assert second.errors == [] and second.indexed == len(first.errors)
    assert audit(rt).indexed == images
    calls = len(fake_vision.calls("image"))
    tally.add("embedding_calls_lost_to_the_outage", calls - images)
    assert calls <= images + 8, "at most the calls in flight when the database went are paid twice"
    # The worker's other users recover as well: the session pool and the health check.
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert health_status() == 200


@pytest.mark.embedded_only
def test_blob_trigger_during_a_database_restart_fails_transiently_then_indexes(
    rt: Runtime, fake_vision: FakeVision, restartable: Postgres, database_url: str, health_env: None
) -> None:
    upload(rt, "before.jpg", image_bytes("red"))
    deliver(rt, "before.jpg")  # the pool now holds live connections, which the restart kills
    upload(rt, "during.jpg", image_bytes("blue"))
    waits = rt.store.pool.timeout
    rt.store.pool.timeout = 1.5  # the delivery during the outage gives up sooner than in production
    try:
        restartable.stop()
        tally.add("faults_injected")
        tally.add("database_outages")
        with pytest.raises(DatabaseUnavailable):  # transient: the host retries the delivery
            deliver(rt, "during.jpg")
        assert health_status() == 503
    finally:
        start_again(restartable)
        wait_until_accepting(database_url)
        # The retry waits for a connection as long as in production: after failed attempts the pool
        # reconnects with a growing delay (1, 2, 4 s ...), which 1.5 s did not always cover (a CI flake).
        rt.store.pool.timeout = waits
    deliver(rt, "during.jpg")  # the host's retry
    assert len(fake_vision.calls("image")) == 2, "nothing was embedded while the database was down"
    assert audit(rt).indexed == 2
    assert health_status() == 200


@pytest.mark.embedded_only
def test_a_search_while_the_database_is_down_answers_503_within_seconds(
    rt: Runtime, fake_vision: FakeVision, restartable: Postgres, database_url: str
) -> None:
    """Searches fail fast (their pool waits 3 s for a connection), with Retry-After; ingestion may wait
    longer (its pool waits 30 s, and the host retries it anyway). Before: 30 s to a 503."""
    upload(rt, "up.jpg", image_bytes("red"))
    deliver(rt, "up.jpg")
    search = func.HttpRequest("GET", "http://localhost/api/search", params={"q": "red"}, body=b"")
    assert handler("search")(search).status_code == 200  # the search pool has a live connection
    try:
        restartable.stop()
        tally.add("faults_injected")
        tally.add("database_outages")
        started = time.monotonic()
        answer = handler("search")(search)
        elapsed = time.monotonic() - started
    finally:
        start_again(restartable)
        wait_until_accepting(database_url)
    assert answer.status_code == 503 and answer.headers.get("Retry-After")
    assert json.loads(answer.get_body())["error"]["code"] == "DatabaseUnavailable"
    assert elapsed < 10, f"{elapsed:.1f} s to a 503"  # a generous bound: the wait is 3 s, it used to be 30
    print(f"\nsearch with the database down: 503 after {elapsed:.1f} s")
    # And it recovers on its own, as soon as the pool's reconnection attempts find the server again.
    deadline = time.monotonic() + 30
    while handler("search")(search).status_code != 200:
        assert time.monotonic() < deadline, "searches did not recover after the database came back"
        time.sleep(0.5)


@pytest.mark.embedded_only
def test_a_search_after_a_database_restart_answers_on_a_new_connection(
    restartable: Postgres, database_url: str, pool: ConnectionPool
) -> None:
    """The search pool does not test each connection it hands out (that is a round trip per search): a
    connection the restart killed fails when a search uses it, and the search runs again on a new one."""
    search = make_pool(make_settings(DATABASE_URL=database_url, DATABASE_POOL_MAX="4"), role="search")
    try:
        store = Store(pool, search_pool=search)
        with pool.connection() as conn:
            conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
        model = store.registry.ensure_model("restart:1", 4)
        vectors = np.eye(4, dtype=np.float32)
        records = [
            ImageRecord("images", f"r{i}.jpg", hashlib.sha256(b"%d" % i).digest(), "image/jpeg", 4, 4, 1)
            for i in range(4)
        ]
        store.bulk.upsert(records, vectors, model.model_id)
        assert store.vectors.nearest(model, vectors[0], 2)[0].name == "r0.jpg"  # the pool now holds a connection
        restartable.stop()
        tally.add("faults_injected")
        tally.add("database_outages")
        start_again(restartable)
        wait_until_accepting(database_url)
        assert store.vectors.nearest(model, vectors[1], 2)[0].name == "r1.jpg"
    finally:
        search.close()


# --- 3. concurrency: at-least-once delivery, many workers ----------------------------------------


def test_100_blobs_delivered_3_times_from_8_threads_cost_100_calls(rt: Runtime, fake_vision: FakeVision) -> None:
    images = many_images("conc", 100)
    upload_many(rt, images)
    # Each blob's three deliveries follow each other, so with 8 workers they are in flight together.
    order = [name for name in images for _ in range(3)]
    fake_vision.latency = 0.02
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: deliver(rt, name), order))
    calls = len(fake_vision.calls("image"))
    tally.add("concurrent_deliveries", len(order))
    tally.add("concurrent_embedding_calls", calls)
    assert rt.store.catalogue.count() == 100
    assert calls == 100
    assert audit(rt).indexed == 100
