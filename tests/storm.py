"""The throttling storm: searches keep answering while ingestion waits out a 429 storm.

One worker (one runtime, ``DATABASE_POOL_MAX`` as given) runs blob-trigger ingestions while the fake
Vision server answers every image call 429 (``Retry-After: 1``) for a while; meanwhile a steady
stream of searches that need no image embedding (text queries answered from the query cache, and
"more like this" by id) goes through the registered HTTP functions. Used by tests/test_storm.py (the
requirement) and bench/storm.py (the figures, beside the same searches with no ingestion).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from shared.errors import ProviderUnavailable
from shared.runtime import Runtime
from tests.appfns import POISON_BLOB_THRESHOLD, blob_trigger_client, handler
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes

COLOURS = ("red", "green", "blue", "yellow", "black", "white")
TEXTS = ("a red car", "something green", "a blue sky at noon", "yellow flowers")


@dataclass
class StormResult:
    latencies: list[float] = field(default_factory=list)  # seconds, every search
    statuses: list[int] = field(default_factory=list)
    ingest_errors: list[str] = field(default_factory=list)  # blobs that would have gone to the poison queue
    redeliveries: int = 0  # deliveries the host made again after a transient failure
    ingest_seconds: float = 0.0
    searches_per_second: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def p95_ms(self) -> float:
        return self.percentile(95) * 1000


def prepare(rt: Runtime, seeds: int = 6) -> list[int]:
    """Images already indexed (for "more like this"), and the query texts in the embedding cache."""
    ids = []
    for i in range(seeds):
        name = f"seed/{i}.jpg"
        rt.blobs.upload(name, image_bytes(COLOURS[i % len(COLOURS)], (40, 32), seed=100 + i), "image/jpeg")
        deliver(rt, name)
        found = rt.store.catalogue.current(rt.settings.images_container, name)
        assert found is not None and found.status == "indexed", f"{name} was not indexed before the storm"
        ids.append(found.id)
    for text in TEXTS:
        assert search(text)[0] == 200
    return ids


def deliver(rt: Runtime, name: str) -> None:
    connection = rt.settings.raw("ImagesStorage")
    assert connection is not None
    handler("index_image")(blob_trigger_client(connection, rt.settings.images_container, name))


def search(text: str) -> tuple[int, float]:
    req = func.HttpRequest("GET", "http://localhost/api/search", params={"q": text, "k": "10"}, body=b"")
    return _timed(lambda: handler("search")(req))


def similar(image_id: int) -> tuple[int, float]:
    req = func.HttpRequest(
        "GET", f"http://localhost/api/images/{image_id}/similar", route_params={"id": str(image_id)}, body=b""
    )
    return _timed(lambda: handler("similar")(req))


def _timed(call: Callable[[], Any]) -> tuple[int, float]:
    started = time.perf_counter()
    response = call()
    return int(response.status_code), time.perf_counter() - started


def run(
    rt: Runtime,
    fake: FakeVision,
    *,
    ids: list[int],
    storm_seconds: float,
    ingestions: int,
    searches_per_second: float,
    prefix: str = "storm",
) -> StormResult:
    """Upload ``ingestions`` images and deliver them all at once while image calls are throttled for
    ``storm_seconds`` (none when 0 ingestions: the baseline), with searches at a steady rate for the
    whole storm. Returns once the searches and the ingestions are done."""
    result = StormResult()
    names = [f"{prefix}/{i:02d}.jpg" for i in range(ingestions)]
    for i, name in enumerate(names):
        rt.blobs.upload(name, image_bytes(COLOURS[i % len(COLOURS)], (48, 40), seed=1000 + i), "image/jpeg")
    lock = threading.Lock()

    def ingest(name: str) -> None:
        # As the host does: an invocation that fails transiently (the retry budget or the attempts ran
        # out) is delivered again, up to poisonBlobThreshold tries in all. Full jitter makes a short
        # run of waits possible: 10 attempts can end inside a 20 s storm (about 4 runs in 1,000 each).
        for delivery in range(1, POISON_BLOB_THRESHOLD + 1):
            try:
                deliver(rt, name)
                return
            except ProviderUnavailable as exc:
                if delivery < POISON_BLOB_THRESHOLD:
                    with lock:
                        result.redeliveries += 1
                    continue
                error: Exception = exc
            except Exception as exc:  # recorded: the test asserts there are none
                error = exc
            with lock:
                result.ingest_errors.append(f"{name}: {type(error).__name__}: {error}")
            return

    if ingestions:
        fake.storm_images(storm_seconds)
    started = time.perf_counter()
    workers = [threading.Thread(target=ingest, args=(name,), name=f"ingest-{name}") for name in names]
    for w in workers:
        w.start()

    # Four clients share the rate, each on its own schedule, so one slow answer never delays the others.
    clients = 4
    interval = clients / searches_per_second

    def client(number: int) -> None:
        deadline = started + storm_seconds
        at = started + number * interval / clients
        n = number
        while at < deadline:
            time.sleep(max(0.0, at - time.perf_counter()))
            status, _ = search(TEXTS[n % len(TEXTS)]) if n % 2 == 0 else similar(ids[n % len(ids)])
            # From when the search was due, not when the client got round to it: a search stuck behind
            # a slow one counts its wait too (a closed loop would hide it by sending fewer searches).
            waited = time.perf_counter() - at
            with lock:
                result.statuses.append(status)
                result.latencies.append(waited)
            n += 1
            at += interval

    searchers = [threading.Thread(target=client, args=(c,), name=f"search-{c}") for c in range(clients)]
    for s in searchers:
        s.start()
    for s in searchers:
        s.join()
    result.searches_per_second = len(result.latencies) / storm_seconds
    for w in workers:
        w.join()
    result.ingest_seconds = time.perf_counter() - started
    return result
