"""Ingestion overhead: what the pipeline adds to each image besides the embedding call.

Generated JPEG and PNG images of 0.3, 2, 5 and 12 megapixels (gradients, shapes and sensor-like
noise, so they compress like photographs; made once and cached in bench/.cache/) go through the
real pipeline, ``ingest_bytes`` with the real store (PostgreSQL), the real Azure AI Vision client
against the fake server answering at once, and thumbnails stored in Azurite as in production, and
again without thumbnails; then four of the kinds again with the fake answering after 100 ms, as
Azure does (the thumbnail is made while the call is in flight). Overhead = the call's wall time
minus the time inside the embedding call (timed around the provider): validation, hashing,
database, thumbnail. Each copy of an image is a new blob (a numbered comment makes its bytes
differ), and the two modes alternate image by image.

Memory: a child process ingests one large image (the input already in memory) and reports how far
its peak RSS rose above what it used just before (VmHWM after resetting it), and the peak of Python
allocations (tracemalloc; Pillow's pixel buffers are not among them, hence RSS).

    .venv/bin/python -m bench.ingest [--quick] [--per-class N]
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import data
from bench.common import (
    ROOT,
    Stopwatch,
    fake_vision,
    log,
    machine,
    parser,
    percentile,
    services,
    summary_ms,
    table,
    write_json,
)
from shared.embeddings import EmbeddingProvider, Vector
from shared.images import inspect_image
from shared.ingest import ingest_bytes
from shared.maintenance import migrate
from shared.runtime import Runtime, build_runtime
from shared.settings import Settings
from shared.thumbnails import make_thumbnail
from tests.fake_vision import FakeVision

CONTAINER = "images"
EMBEDDING_CALL_MS = 100.0  # a typical Azure AI Vision vectorizeImage round trip
TARGET_SHARE = 0.05  # overhead at most 5 % of it


class TimedProvider:
    """Wraps a provider and adds up the time spent in its calls."""

    def __init__(self, inner: EmbeddingProvider) -> None:
        self.inner = inner
        self.seconds = 0.0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_image(self, data_: bytes) -> Vector:
        start = time.perf_counter()
        try:
            return self.inner.embed_image(data_)
        finally:
            self.seconds += time.perf_counter() - start

    def embed_text(self, text: str) -> Vector:
        return self.inner.embed_text(text)


def settings_for(database_url: str, storage: str, fake: FakeVision) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "ImagesStorage": storage,
        "IMAGES_CONTAINER": CONTAINER,
        "THUMBNAILS_CONTAINER": "thumbnails",
        "VISION_ENDPOINT": fake.endpoint,
        "VISION_KEY": fake.key or "",
    }


def ingest_once(rt: Runtime, timed: TimedProvider, name: str, blob: bytes, thumbnails: bool) -> dict[str, float]:
    timed.seconds = 0.0
    with Stopwatch() as t:
        outcome = ingest_bytes(
            rt.store, {timed.model_id: timed}, CONTAINER, name, blob, blobs=rt.blobs, thumbnails=thumbnails
        )
    if outcome.outcome != "indexed":
        raise RuntimeError(f"{name} was not indexed: {outcome}")
    return {"total": t.seconds, "embed": timed.seconds, "overhead": t.seconds - timed.seconds}


def overhead_pass(
    rt: Runtime,
    timed: TimedProvider,
    bases: dict[tuple[str, str], bytes],
    copies: int,
    tag: str,
    latency: float,
    fake: Any,
) -> list[dict[str, Any]]:
    """Ingest ``copies`` of each image with and without thumbnails (alternating); print and return the overhead."""
    fake.latency = latency
    samples: dict[tuple[str, str, bool], list[dict[str, float]]] = {}
    for (size, fmt), base in bases.items():
        for i in range(copies):
            blob = data.variant(base, i)
            modes = (True, False) if i % 2 == 0 else (False, True)
            for thumbs in modes:
                name = f"{tag}/{'thumbs' if thumbs else 'plain'}/{size}/{fmt}/{i}.{fmt.lower()}"
                samples.setdefault((size, fmt, thumbs), []).append(ingest_once(rt, timed, name, blob, thumbs))
    rows = []
    out = []
    for (size, fmt, thumbs), items in samples.items():
        overhead = summary_ms([s["overhead"] for s in items])
        total = sum(s["total"] for s in items)
        share = overhead["p50_ms"] / EMBEDDING_CALL_MS
        embed = percentile([s["embed"] * 1000 for s in items], 50)
        megabytes = len(bases[(size, fmt)]) / 1e6
        thumb = "yes" if thumbs else "no"
        rows.append([f"{size} {fmt}", megabytes, thumb, overhead["p50_ms"], overhead["p95_ms"], 100 * share, embed])
        rows[-1].append(len(items) / total)
        out.append(
            {
                "size": size,
                "format": fmt,
                "bytes": len(bases[(size, fmt)]),
                "thumbnails": thumbs,
                "vision_latency_ms": latency * 1000,
                "overhead": overhead,
                "embed_call_ms_p50": embed,
                "images_per_s": len(items) / total,
                "overhead_share_of_100ms_call": share,
                "target_met": share <= TARGET_SHARE,
            }
        )
    rows.sort(key=lambda r: r[2])  # stable: by size within each mode
    answering = "at once" if latency == 0 else f"after {latency * 1000:.0f} ms"
    table(
        f"Ingestion overhead per image ({copies} per row; fake Vision answering {answering}; "
        f"target: p50 <= {TARGET_SHARE * EMBEDDING_CALL_MS:.0f} ms = 5 % of a 100 ms call)",
        ["image", "MB", "thumbnail", "overhead p50 ms", "p95 ms", "% of 100 ms", "embed call p50 ms", "images/s"],
        rows,
    )
    return out


def components(blob: bytes, rt: Runtime, repeat: int) -> dict[str, float]:
    """Median milliseconds of the overhead's parts, each measured alone on the same bytes."""
    parts: dict[str, list[float]] = {"sha256": [], "validate": [], "thumbnail_make": [], "thumbnail_upload": []}
    assert rt.blobs.thumbnails is not None
    for i in range(repeat):
        with Stopwatch() as t:
            hashlib.sha256(blob).digest()
        parts["sha256"].append(t.seconds)
        with Stopwatch() as t:
            inspect_image(blob)
        parts["validate"].append(t.seconds)
        with Stopwatch() as t:
            preview = make_thumbnail(blob)
        parts["thumbnail_make"].append(t.seconds)
        with Stopwatch() as t:
            rt.blobs.thumbnails.upload_blob(f"components/{i}.jpg", preview, overwrite=True)
        parts["thumbnail_upload"].append(t.seconds)
    return {k: statistics.median(v) * 1000 for k, v in parts.items()}


def run(per_class: int, quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "ingest", "quick": quick, "per_class": per_class}
    log("generating images (cached in bench/.cache)")
    bases = {(sc.name, fmt): data.image_file(sc, fmt, 1) for sc in data.SIZE_CLASSES for fmt in ("JPEG", "PNG")}
    largest = data.largest_png()
    with services(azurite=True) as svc, fake_vision() as fake:
        assert svc.azurite is not None
        env = settings_for(svc.database_url, svc.azurite.connection_string, fake)
        migrate(Settings(env), say=lambda _: None)
        rt = build_runtime(Settings(env))
        rt.blobs.ensure_container()
        with svc.connect() as conn:
            result["machine"] = machine(conn)
        timed = TimedProvider(rt.provider)
        # Warm up: imports, connections, the first thumbnail upload.
        for i in range(3):
            ingest_once(rt, timed, f"warmup/{i}.jpg", data.variant(bases[("0.3 MP", "JPEG")], 10_000 + i), True)

        log(f"ingesting {per_class} copies of each size and format, with and without thumbnails")
        result["overhead"] = overhead_pass(rt, timed, bases, per_class, "instant", 0.0, fake)
        # The same at the latency of the real service: the thumbnail is made while the call is in flight.
        subset = {k: bases[k] for k in (("0.3 MP", "JPEG"), ("2 MP", "JPEG"), ("12 MP", "JPEG"), ("2 MP", "PNG"))}
        copies = max(2, per_class // 3)
        log(f"again with the fake answering after {EMBEDDING_CALL_MS:.0f} ms ({copies} copies of 4 kinds)")
        result["overhead_at_100ms"] = overhead_pass(rt, timed, subset, copies, "at100", EMBEDDING_CALL_MS / 1000, fake)
        fake.latency = 0.0

        log("overhead parts, each alone")
        parts_rows = []
        parts = {}
        for (size, fmt), base in bases.items():
            c = components(base, rt, 3 if quick else 7)
            parts[f"{size} {fmt}"] = c
            parts_rows.append([f"{size} {fmt}", c["sha256"], c["validate"], c["thumbnail_make"], c["thumbnail_upload"]])
        table(
            "Parts of the overhead, each measured alone (median ms)",
            ["image", "sha256", "validate", "thumbnail make", "thumbnail upload"],
            parts_rows,
        )
        result["parts_ms"] = parts
        rt.close()

        log("peak memory of one ingestion, in a child process")
        memory = []
        cases = [
            ("largest PNG", largest),
            ("12 MP PNG", data.variant(bases[("12 MP", "PNG")], 9_999)),
            ("12 MP JPEG", data.variant(bases[("12 MP", "JPEG")], 9_999)),
        ]
        for label, blob in cases:
            memory.append({"image": label, **child_memory(env, label, blob)})
        table(
            "Peak memory of one ingestion (thumbnail included; input bytes already in memory)",
            ["image", "MB", "RSS rise MB", "x file size", "tracemalloc peak MB", "x file size "],
            [
                [m["image"], m["bytes"] / 1e6, m["rss_rise"] / 1e6, m["rss_rise"] / m["bytes"], *traced(m)]
                for m in memory
            ],
        )
        result["memory"] = memory
    return result


def traced(m: dict[str, Any]) -> list[float]:
    return [m["traced_peak"] / 1e6, m["traced_peak"] / m["bytes"]]


def child_memory(env: dict[str, str], label: str, blob: bytes) -> dict[str, Any]:
    path = data.CACHE / "memory-input.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    done = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--memory-child", str(path), label],
        cwd=ROOT,
        env={**os.environ, "BENCH_SETTINGS": json.dumps(env)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _status(field: str) -> int:
    """A size from /proc/self/status (VmRSS: resident now, VmHWM: peak since the last reset), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS. (ru_maxrss cannot be used:
    # a child inherits its parent's peak across fork and exec.)
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(path: Path, label: str) -> None:
    """In a fresh process: ingest one image and print its peak memory as JSON."""
    env = json.loads(os.environ["BENCH_SETTINGS"])
    rt = build_runtime(Settings(env))
    provider = {rt.provider.model_id: rt.provider}
    small = data.variant(data.image_file(data.SIZE_CLASSES[0], "JPEG", 1), 20_000 + os.getpid())
    ingest_bytes(
        rt.store, provider, CONTAINER, f"memory/warmup-{os.getpid()}.jpg", small, blobs=rt.blobs, thumbnails=True
    )
    blob = path.read_bytes()
    gc.collect()
    _reset_peak()
    before = _status("VmRSS")
    outcome = ingest_bytes(rt.store, provider, CONTAINER, f"memory/{label}-rss", blob, blobs=rt.blobs, thumbnails=True)
    peak = _status("VmHWM")
    gc.collect()
    tracemalloc.start()
    ingest_bytes(rt.store, provider, CONTAINER, f"memory/{label}-traced", blob, blobs=rt.blobs, thumbnails=True)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rt.close()
    print(
        json.dumps(
            {
                "bytes": len(blob),
                "outcome": outcome.outcome,
                "rss_before": before,
                "rss_peak": peak,
                "rss_rise": max(0, peak - before),
                "traced_peak": traced_peak,
            }
        )
    )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        memory_child(Path(sys.argv[2]), sys.argv[3])
        return
    p = parser(__doc__ or "")
    p.add_argument("--per-class", type=int, help="copies of each size and format (default 30; quick 3)")
    args = p.parse_args()
    per_class = args.per_class or (3 if args.quick else 30)
    write_json("ingest", run(per_class, args.quick), args.out)


if __name__ == "__main__":
    main()
