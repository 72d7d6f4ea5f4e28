"""Throughput against the rate limit: reconcile a backlog with Azure AI Vision throttling at 20 calls/s.

A backlog of images (1,000 by default) is uploaded to Azurite; ``reconcile`` then indexes them
through the real pipeline against the fake Vision server set up like an S1 resource: 100 ms per
call and 20 requests per second, 429 with ``Retry-After`` beyond that. Runs on the same backlog (the
tables emptied between them), with 8 threads (reconcile's default) and, in the full run, 3:

- without a client-side limiter (``VISION_MAX_REQUESTS_PER_SECOND`` unset): the threads send as
  fast as they can and rely on retries with backoff after each 429;
- with ``VISION_MAX_REQUESTS_PER_SECOND=20``: the worker's shared token bucket spaces the calls.

Reported: images per second as a fraction of the limit (target >= 90 %), the 429s received, and
that nothing was lost (every blob of the container has its row and vector afterwards). A self-check
of the limiter itself (``shared/ratelimit.py``: rate, burst, fairness across threads) runs first.

    .venv/bin/python -m bench.throughput [--quick] [--images N]
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import data
from bench.common import Stopwatch, fake_vision, log, machine, parser, services, table, write_json
from shared.ingest import reconcile
from shared.maintenance import migrate
from shared.ratelimit import RateLimiter, RateLimitTimeout
from shared.runtime import build_runtime
from shared.settings import Settings

CONTAINER = "backlog"
LATENCY = 0.1
LIMIT = 20.0
TARGET = 0.9


def limiter_self_check() -> dict[str, Any]:
    """The limiter keeps to its rate across threads, lets no thread starve, and honours a timeout."""
    rate, threads, per_thread = 50.0, 8, 10
    limiter = RateLimiter(rate)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per_thread):
            limiter.acquire()
            with lock:
                starts.append(time.monotonic())

    with Stopwatch() as t:
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    starts.sort()
    calls = threads * per_thread
    achieved = (calls - 1) / (starts[-1] - starts[0])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    timed_out = False
    try:
        RateLimiter(1.0).acquire()  # first slot at once
        busy = RateLimiter(1.0)
        busy.reserve()
        busy.reserve(timeout=0.1)  # the next slot is ~1 s away: must refuse
    except RateLimitTimeout:
        timed_out = True
    # A logic check, not a timing one: a limiter that did not limit would run at thousands per second,
    # and a busy machine only makes threads late (the schedule is absolute, so they catch up).
    ok = abs(achieved - rate) / rate < 0.2 and timed_out
    result = {
        "rate": rate,
        "threads": threads,
        "calls": calls,
        "achieved_per_s": achieved,
        "min_gap_ms": min(gaps) * 1000,
        "max_gap_ms": max(gaps) * 1000,
        "timeout_refused": timed_out,
        "seconds": t.seconds,
        "ok": ok,
    }
    table(
        "Limiter self-check (8 threads x 10 calls at 50/s)",
        ["achieved calls/s", "min gap ms", "max gap ms", "timeout honoured", "ok"],
        [[achieved, min(gaps) * 1000, max(gaps) * 1000, timed_out, ok]],
    )
    if not ok:
        raise SystemExit(f"rate limiter self-check failed: {result}")
    return result


def run(images: int, quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "throughput", "quick": quick, "images": images, "limit_per_s": LIMIT}
    result["limiter_self_check"] = limiter_self_check()
    # Each 429 logs a warning; the table counts them instead.
    logging.getLogger("shared.vision").setLevel(logging.ERROR)
    log(f"making {images:,} images")
    backlog = list(data.small_jpegs(images))
    with services(azurite=True) as svc, fake_vision(latency=LATENCY, rate_limit_per_second=LIMIT) as fake:
        assert svc.azurite is not None
        base = {
            "DATABASE_URL": svc.database_url,
            "ImagesStorage": svc.azurite.connection_string,
            "IMAGES_CONTAINER": CONTAINER,
            "THUMBNAILS_CONTAINER": "thumbnails",
            "VISION_ENDPOINT": fake.endpoint,
            "VISION_KEY": fake.key or "",
            "DATABASE_POOL_MAX": "12",
        }
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        migrate(Settings(base), say=lambda _: None)
        setup = build_runtime(Settings(base))
        setup.blobs.ensure_container()
        log(f"uploading the backlog to Azurite container {CONTAINER!r}")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: setup.blobs.upload(item[0], item[1], "image/jpeg"), backlog))
        setup.close()

        runs = []
        modes = [(8, None), (8, LIMIT)]
        if not quick:
            # Fewer threads (e.g. a reconcile run with --concurrency 3): a thread sleeping out a 429's
            # Retry-After is then a larger share of the capacity.
            modes += [(3, None), (3, LIMIT)]
        for concurrency, rate in modes:
            label = f"{concurrency} threads, " + (f"limiter at {rate:g}/s" if rate else "retries only (no limiter)")
            with svc.connect(autocommit=True) as conn:
                conn.execute("TRUNCATE image_vectors, images, ingest_claims")
            settings = {**base, "VISION_MAX_REQUESTS_PER_SECOND": str(rate or 0)}
            rt = build_runtime(Settings(settings))
            fake.reset()
            fake.latency = LATENCY
            fake.rate_limit_per_second = LIMIT  # a full bucket, as after a quiet spell
            time.sleep(1.0)
            log(f"reconcile, {label}")
            with Stopwatch() as t:
                report = reconcile(rt, concurrency=concurrency)
            calls = fake.calls("image")
            throttled = sum(1 for c in calls if c["status"] == 429)
            second = None
            if report.errors:
                log(f"{len(report.errors)} blobs hit errors; a second reconcile picks them up")
                second = reconcile(rt, concurrency=concurrency)
            state = rt.store.catalogue.index_state(CONTAINER, [rt.model.model_id])
            complete = sum(1 for s in state.values() if s.status == "indexed" and rt.model.model_id in s.models)
            rt.close()
            rate_achieved = report.indexed / t.seconds
            entry = {
                "mode": label,
                "concurrency": concurrency,
                "client_limit_per_s": rate,
                "seconds": t.seconds,
                "indexed": report.indexed,
                "errors_first_pass": len(report.errors),
                "indexed_second_pass": second.indexed if second else 0,
                "vision_calls": len(calls),
                "throttled_429": throttled,
                "images_per_s": rate_achieved,
                "fraction_of_limit": rate_achieved / LIMIT,
                "rows_complete": complete,
                "lost": images - complete,
                "target_met": rate_achieved / LIMIT >= TARGET and complete == images,
            }
            runs.append(entry)
            log(f"{label}: {rate_achieved:.1f} images/s, {throttled} x 429, {entry['lost']} lost")
        table(
            f"Reconcile {images:,} images, Vision at {LATENCY * 1000:.0f} ms/call and "
            f"{LIMIT:g} calls/s (target: >= {TARGET:.0%} of the limit, none lost)",
            ["mode", "seconds", "images/s", "of limit", "429s", "errors (1st pass)", "lost", "target met"],
            [
                [
                    r["mode"],
                    r["seconds"],
                    r["images_per_s"],
                    f"{r['fraction_of_limit']:.0%}",
                    r["throttled_429"],
                    r["errors_first_pass"],
                    r["lost"],
                    r["target_met"],
                ]
                for r in runs
            ],
        )
        result["runs"] = runs
    return result


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--images", type=int, help="backlog size (default 1,000; quick 200)")
    args = p.parse_args()
    images = args.images or (200 if args.quick else 1_000)
    write_json("throughput", run(images, args.quick), args.out)


if __name__ == "__main__":
    main()
