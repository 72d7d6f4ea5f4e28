"""The local stack: ``python -m scripts.local run|stop|status`` (``make run`` / ``make stop``).

``run`` starts Azurite and an embedded PostgreSQL (data under .local/, both left running), writes
local.settings.json from the example when it is missing, creates the schema and the images and
thumbnails containers, then runs ``func start`` if Azure Functions Core Tools is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping

from scripts.services import ROOT, start_azurite, start_postgres, wait_for_port

STATE = ROOT / ".local"
PG_PORT = int(os.environ.get("LOCAL_PG_PORT", "54329"))
AZURITE_PORTS = (10000, 10001, 10002)
SETTINGS = ROOT / "local.settings.json"
EXAMPLE = ROOT / "local.settings.json.example"


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
        return True
    return False


def say(message: str) -> None:
    print(f"[local] {message}", flush=True)


def ensure_settings() -> dict[str, str]:
    if not SETTINGS.exists():
        shutil.copyfile(EXAMPLE, SETTINGS)
        say("wrote local.settings.json from local.settings.json.example: put your Vision endpoint (and key) in it")
    values: dict[str, str] = json.loads(SETTINGS.read_text())["Values"]
    return values


def start_services() -> None:
    STATE.mkdir(exist_ok=True)
    if listening(PG_PORT):
        say(f"PostgreSQL already listening on 127.0.0.1:{PG_PORT}")
    else:
        pg = start_postgres(STATE / "pgdata", port=PG_PORT, persistent=True)
        say(f"PostgreSQL {pg.uri()} (data in .local/pgdata)")
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'imagesearch'").fetchone() is None:
            conn.execute("CREATE DATABASE imagesearch")
    if all(listening(p) for p in AZURITE_PORTS):
        say("Azurite already listening on 10000-10002")
    else:
        az = start_azurite(STATE / "azurite", ports=AZURITE_PORTS, log=STATE / "azurite.log")
        assert az.process is not None
        (STATE / "azurite.pid").write_text(str(az.process.pid))
        say("Azurite on 127.0.0.1:10000 (blob), 10001 (queue), 10002 (table); log in .local/azurite.log")


def create_containers(env: Mapping[str, str]) -> list[str]:
    """Create the images and thumbnails containers the settings name (private); the names of those created.

    Both, so that images uploaded with Storage Explorer or the SDK get thumbnails from the first one on.
    """
    from shared.blobs import ImageBlobs
    from shared.settings import Settings

    return ImageBlobs.from_settings(Settings(env), profile="cli").ensure_container()


def prepare_app(values: dict[str, str]) -> None:
    env = {**values, **os.environ}
    subprocess.run([sys.executable, "-m", "shared.cli", "migrate"], check=True, cwd=ROOT, env=env)
    # Only in the local emulator: containers in Azure are infra/'s to create.
    if env.get("ImagesStorage", "").startswith("UseDevelopmentStorage"):
        wait_for_port(AZURITE_PORTS[0])
        created = create_containers(env)
        say(f"created container(s) {', '.join(created)} in Azurite" if created else "containers ready in Azurite")


def run() -> int:
    values = ensure_settings()
    start_services()
    prepare_app(values)
    func = shutil.which("func")
    if func is None:
        say("Azure Functions Core Tools (`func`) is not installed, so the app itself is not started.")
        say("Install it (https://learn.microsoft.com/azure/azure-functions/functions-run-local): e.g.")
        say("  npm install -g azure-functions-core-tools@4   or   apt/brew/winget install azure-functions-core-tools")
        say("then run `make run` again. Azurite and PostgreSQL keep running; `make stop` stops them.")
        return 0
    say("starting `func start` (Ctrl+C stops the app; `make stop` stops the services)")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    return subprocess.call([func, "start"], cwd=ROOT, env=env)


def stop() -> int:
    pid_file = STATE / "azurite.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            say("stopped Azurite")
        pid_file.unlink()
    if (STATE / "pgdata" / "postmaster.pid").exists():
        from scripts.services import Postgres

        Postgres(f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres", STATE / "pgdata", PG_PORT).stop()
        say("stopped PostgreSQL")
    return 0


def status() -> int:
    say(f"PostgreSQL 127.0.0.1:{PG_PORT}: {'up' if listening(PG_PORT) else 'down'}")
    say(f"Azurite 127.0.0.1:10000-10002: {'up' if all(listening(p) for p in AZURITE_PORTS) else 'down'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.local", description="Run the local stack.")
    parser.add_argument("command", choices=["run", "stop", "status"])
    args = parser.parse_args()
    return {"run": run, "stop": stop, "status": status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
