#!/usr/bin/env python3
"""Run one benchmark, or all of them, each in its own process.

    bench/run.py search|index|bulk_load|storage|ingest|throughput|storm|all [--quick] [options of that benchmark]

``all --quick`` is the smoke test CI runs (``make bench-quick``): every benchmark at small sizes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("search", "index", "bulk_load", "storage", "ingest", "throughput", "storm")
# The project's virtual environment when there is one (the shebang's python3 may lack the packages).
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*BENCHMARKS, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    names = BENCHMARKS if argv[0] == "all" else (argv[0],)
    rest = argv[1:]
    if argv[0] == "all" and any(a != "--quick" for a in rest):
        print("all takes only --quick; run a benchmark alone to pass it options", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        started = time.monotonic()
        print(f"\n=== bench.{name} {' '.join(rest)}", flush=True)
        python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
        code = subprocess.call([python, "-m", f"bench.{name}", *rest], cwd=ROOT)
        print(f"=== bench.{name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
