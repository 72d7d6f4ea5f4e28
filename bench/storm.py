"""Storm: search latency while ingestion waits out a throttling storm, against the same searches alone.

One worker (``DATABASE_POOL_MAX=4``) delivers 8 blobs while the fake Vision server answers every
image call 429 with ``Retry-After: 1`` for the storm's length; 16 searches a second that need no image
embedding (cached text queries, "more like this" by id) run for the whole storm. The baseline runs
the same searches for the same time with no ingestion. The scenario is tests/storm.py, the one
tests/test_storm.py holds to p95 < 250 ms.

    .venv/bin/python -m bench.storm [--quick] [--seconds S] [--ingestions N] [--rate R]
"""

from __future__ import annotations

import logging
from typing import Any

from bench.common import fake_vision, log, machine, parser, services, table, write_json
from shared.maintenance import migrate
from shared.runtime import build_runtime, set_runtime
from shared.settings import Settings
from tests import storm


def run(seconds: float, ingestions: int, rate: float) -> dict[str, Any]:
    logging.getLogger("shared.vision").setLevel(logging.ERROR)  # the storm's 429s, by design
    result: dict[str, Any] = {"benchmark": "storm", "seconds": seconds, "ingestions": ingestions, "rate": rate}
    with services(azurite=True) as svc, fake_vision() as fake:
        assert svc.azurite is not None
        settings = Settings(
            {
                "DATABASE_URL": svc.database_url,
                "ImagesStorage": svc.azurite.connection_string,
                "IMAGES_CONTAINER": "images",
                "THUMBNAILS_CONTAINER": "thumbnails",
                "VISION_ENDPOINT": fake.endpoint,
                "VISION_KEY": fake.key or "",
                "DATABASE_POOL_MAX": "4",
                "VISION_MAX_RETRY_SECONDS": str(int(seconds * 3)),
            }
        )
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        migrate(settings, say=lambda _: None)
        rt = build_runtime(settings)
        rt.blobs.ensure_container()
        set_runtime(rt)
        try:
            ids = storm.prepare(rt)
            log(f"baseline: {rate:g} searches/s for {seconds:g} s, no ingestion")
            alone = storm.run(rt, fake, ids=ids, storm_seconds=seconds, ingestions=0, searches_per_second=rate)
            log(f"storm: the same searches while {ingestions} deliveries meet {seconds:g} s of 429s")
            loaded = storm.run(
                rt, fake, ids=ids, storm_seconds=seconds, ingestions=ingestions, searches_per_second=rate
            )
        finally:
            set_runtime(None)
            rt.close()
    rows = []
    for label, r in (("searches alone", alone), (f"during the storm ({ingestions} ingestions)", loaded)):
        failed = sum(1 for s in r.statuses if s != 200)
        rows.append(
            [label, len(r.latencies), r.searches_per_second, failed, r.p50_ms, r.p95_ms, max(r.latencies) * 1000]
        )
        result["alone" if r is alone else "storm"] = {
            "searches": len(r.latencies),
            "per_second": r.searches_per_second,
            "non_200": failed,
            "p50_ms": r.p50_ms,
            "p95_ms": r.p95_ms,
            "max_ms": max(r.latencies) * 1000,
        }
    result["storm"]["ingest_errors"] = loaded.ingest_errors
    result["storm"]["ingestions_done_after_s"] = loaded.ingest_seconds
    result["storm"]["redeliveries"] = loaded.redeliveries
    table(
        f"Search during a {seconds:g} s throttling storm (DATABASE_POOL_MAX=4, target p95 < 250 ms)",
        ["searches", "count", "per s", "non-200", "p50 ms", "p95 ms", "max ms"],
        rows,
    )
    log(
        f"the {ingestions} ingestions finished {loaded.ingest_seconds:.1f} s after the storm began, "
        f"{loaded.redeliveries} delivered again after a transient failure; errors: {loaded.ingest_errors or 'none'}"
    )
    if loaded.ingest_errors or any(s != 200 for s in loaded.statuses):
        raise SystemExit("the storm lost searches or images")
    return result


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--seconds", type=float, help="length of the storm (default 20; quick 5)")
    p.add_argument("--ingestions", type=int, default=8, help="blobs delivered at once (default 8)")
    p.add_argument("--rate", type=float, default=16.0, help="searches per second (default 16)")
    args = p.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    write_json("storm", run(seconds, args.ingestions, args.rate), args.out)


if __name__ == "__main__":
    main()
