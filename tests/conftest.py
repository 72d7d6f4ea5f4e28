"""Fixtures that start the real services: PostgreSQL + pgvector, Azurite and the fake Vision server.

Each test run gets a fresh PostgreSQL data directory and database, a fresh Azurite workspace and a
fake Vision server on free ports; all are stopped and removed at the end of the run.

``TEST_DATABASE_URL`` points the suite at a server you already have instead of the embedded one: a
single node or a Citus coordinator, with pgvector installed, and a user that may create databases
(``postgresql://postgres@host:5432/postgres``). The run creates its own database there and drops it
afterwards. Tests marked ``embedded_only`` (they stop and start the server) are then skipped, and on
Citus so are those marked ``single_node`` (each has a Citus counterpart where the behaviour differs).
See docs/databases.md.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from scripts.services import (
    Azurite,
    Postgres,
    VectorUnsupported,
    check_vectors,
    external_postgres,
    remove_tree,
    start_azurite,
    start_postgres,
)
from shared.blobs import ImageBlobs
from shared.db import make_pool
from shared.runtime import Runtime, build_runtime, set_runtime
from shared.schema import migrate
from shared.settings import Settings
from shared.store import Store
from tests.fake_vision import FakeVision


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("services")
    yield path
    remove_tree(path)


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[Postgres]:
    external = os.environ.get("TEST_DATABASE_URL", "").strip()
    if external:
        yield external_postgres(external)
        return
    # Not under pytest's own temporary folder: as root the server runs as another user, which must be
    # able to enter its data folder, and each pytest session resets that folder's tree to owner-only.
    pgdata = Path(tempfile.mkdtemp(prefix="imagesearch-test-pg-"))
    pg = start_postgres(pgdata / "data")
    try:
        # Before any test: one clear line instead of hundreds of "server closed the connection".
        check_vectors(pg)
    except VectorUnsupported as exc:
        pg.stop()
        pytest.exit(str(exc), returncode=3)
    yield pg
    pg.stop()
    remove_tree(pgdata)


@pytest.fixture(scope="session")
def citus(postgres: Postgres) -> bool:
    """Whether the suite runs against a Citus cluster."""
    return postgres.is_citus()


@pytest.fixture(autouse=True)
def _database_markers(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("embedded_only") and os.environ.get("TEST_DATABASE_URL", "").strip():
        pytest.skip("stops and starts the database server: only with the embedded server")
    if request.node.get_closest_marker("single_node") and request.getfixturevalue("citus"):
        pytest.skip("holds on a single node only (its Citus counterpart runs instead)")
    if request.node.get_closest_marker("citus_only") and not request.getfixturevalue("citus"):
        pytest.skip("Citus behaviour: runs with TEST_DATABASE_URL pointing at a Citus coordinator")


@pytest.fixture
def empty_database(postgres: Postgres) -> Iterator[str]:
    """The URL of a new database without the schema (a fresh install), dropped after the test."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def database_url(postgres: Postgres) -> Iterator[str]:
    """A fresh database for this test run, with the application schema."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        if not postgres.embedded:
            try:
                check_vectors(postgres, name)
            except VectorUnsupported as exc:
                pytest.exit(str(exc), returncode=3)
        yield url
    finally:
        if not postgres.embedded:
            postgres.drop_database(name)


@pytest.fixture(scope="session")
def azurite(services_dir: Path) -> Iterator[Azurite]:
    az = start_azurite(services_dir / "azurite")
    yield az
    az.stop()


def make_settings(**values: str) -> Settings:
    return Settings({k: v for k, v in values.items() if v is not None})


@pytest.fixture
def db_settings(database_url: str) -> Settings:
    return make_settings(DATABASE_URL=database_url)


@pytest.fixture(scope="session")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = make_pool(make_settings(DATABASE_URL=database_url), min_size=1)
    p.wait(timeout=30)
    yield p
    p.close()


@pytest.fixture
def store(pool: ConnectionPool) -> Store:
    """A store over an emptied collection."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    return Store(pool)


# --- ingestion: the fake Vision server and a runtime wired to all three services -------------------


@pytest.fixture(scope="session")
def fake_vision_server() -> Iterator[FakeVision]:
    with FakeVision() as fake:
        yield fake


@pytest.fixture
def fake_vision(fake_vision_server: FakeVision) -> FakeVision:
    """The fake Vision server with no scripted faults and an empty request log."""
    fake_vision_server.reset()
    return fake_vision_server


@pytest.fixture
def app_settings(database_url: str, azurite: Azurite, fake_vision: FakeVision) -> Settings:
    """Settings for one test: its own container in Azurite, the test database, the fake Vision server."""
    container = f"t-{uuid.uuid4().hex[:12]}"
    return make_settings(
        DATABASE_URL=database_url,
        ImagesStorage=azurite.connection_string,
        IMAGES_CONTAINER=container,
        THUMBNAILS_CONTAINER=f"{container}-thumbs",
        VISION_ENDPOINT=fake_vision.endpoint,
        VISION_KEY=fake_vision.key or "",
        VISION_MAX_RETRY_SECONDS="3",
        DATABASE_POOL_MAX="12",
    )


@pytest.fixture
def runtime(app_settings: Settings, pool: ConnectionPool) -> Iterator[Runtime]:
    """The app's runtime over an emptied collection and a fresh container; installed for the triggers."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    prepare(app_settings)
    rt = build_runtime(app_settings)
    rt.blobs.ensure_container()
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.close()


def prepare(settings: Settings) -> None:
    """What an operator runs before the app serves: migrate, which registers the configured model and
    builds its index (the app itself changes no schema)."""
    from shared.maintenance import migrate as operator_migrate

    operator_migrate(settings, say=lambda _: None)


@pytest.fixture
def blobs(runtime: Runtime) -> ImageBlobs:
    return runtime.blobs


# --- search (issue #4): images indexed straight into the store, as ingestion would leave them ------


class Catalogue:
    """Adds indexed images to a runtime's collection without the blob trigger: the row and the vector
    the fake Vision server gives those bytes; ``upload=True`` also puts the bytes in the container."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def add(
        self,
        name: str,
        colour: str = "red",
        *,
        seed: int = 0,
        fmt: str = "PNG",
        size: tuple[int, int] = (32, 24),
        data: bytes | None = None,
        content_type: str | None = None,
        last_modified: object = None,
        vector: object = None,
        upload: bool = False,
    ) -> int:
        import hashlib

        import numpy as np

        from shared.catalogue import ImageRecord
        from shared.images import inspect_image
        from tests.imagegen import image_bytes

        data = data if data is not None else image_bytes(colour, size, fmt, seed)
        info = inspect_image(data)
        rt = self.runtime
        if vector is None:
            vector = FakeVision.vector_for_image(data, rt.settings.vision_model_version)
        record = ImageRecord(
            container=rt.settings.images_container,
            name=name,
            sha256=hashlib.sha256(data).digest(),
            content_type=content_type or info.content_type,
            width=info.width,
            height=info.height,
            byte_size=len(data),
            last_modified=last_modified,  # type: ignore[arg-type]
        )
        if upload:
            rt.blobs.upload(name, data, record.content_type)
        iid = rt.store.catalogue.save_indexed(record, {rt.model.model_id: np.asarray(vector, dtype=np.float32)})
        assert iid is not None
        return iid

    def fail(self, name: str, reason: str = "not an image") -> int:
        iid = self.runtime.store.catalogue.save_failure(
            self.runtime.settings.images_container, name, "InvalidImage", reason
        )
        assert iid is not None
        return iid


@pytest.fixture
def catalogue(runtime: Runtime) -> Catalogue:
    return Catalogue(runtime)
