"""Migrations: a database made by the code before migrations existed is upgraded with its data intact,
a worker never changes the schema (it reports what to run), an index whose parameters changed is
rebuilt while search answers, and the app's own role needs no DDL rights."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator

import azure.functions as func
import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

from scripts.services import Azurite, Postgres
from shared import schema
from shared.catalogue import ImageRecord, image_id
from shared.db import make_pool, pgvector_version
from shared.errors import DatabaseUnavailable, InvalidInput
from shared.http import health
from shared.maintenance import grant_app_role, migrate, reindex
from shared.runtime import build_runtime
from shared.schema import LATEST_VERSION, SchemaOutdated, _legacy_index_name
from shared.settings import Settings
from shared.store import Store
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes

MODEL = "azure-vision:2023-04-15"


def settings_for(url: str, fake: FakeVision, azurite: Azurite) -> Settings:
    return Settings(
        {
            "DATABASE_URL": url,
            "VISION_ENDPOINT": fake.endpoint,
            "VISION_KEY": fake.key or "",
            "ImagesStorage": azurite.connection_string,
        }
    )


@pytest.fixture
def legacy_database(empty_database: str, citus: bool) -> Iterator[str]:
    """What the code before migrations left behind: its schema (created on first use, no
    schema_migrations), a model with its vector HNSW index under the old name, and 50 indexed images."""
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with conn.transaction():
            if citus:
                conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
            for step in schema.MIGRATIONS[0].steps:
                step(conn, citus)
        conn.execute(
            "INSERT INTO embedding_models (model_id, dimension, state, config, activated_at) "
            "VALUES (%s, 1024, 'active', %s, now())",
            (MODEL, '{"EMBEDDING_PROVIDER": "azure-vision", "VISION_MODEL_VERSION": "2023-04-15"}'),
        )
        conn.execute(
            f'CREATE INDEX "{_legacy_index_name(MODEL, 1024)}" ON image_vectors USING hnsw '
            f"((embedding::vector(1024)) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
            f"WHERE model_id = '{MODEL}'"
        )
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((50, 1024)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [
        ImageRecord("images", f"old/{i:02d}.jpg", bytes([i]) * 32, "image/jpeg", 64, 48, 1000 + i) for i in range(50)
    ]
    write_as_before_names(empty_database, records, vectors)
    yield empty_database


def write_as_before_names(url: str, records: list[ImageRecord], vectors: npt.NDArray[np.float32]) -> None:
    """Indexed images and their vectors as code older than migration 4 wrote them: no container and name
    beside the vector."""
    with psycopg.connect(url) as conn:
        register_vector(conn)
        for record, vector in zip(records, vectors, strict=True):
            iid = image_id(record.container, record.name)
            conn.execute(
                "INSERT INTO images (id, container, name, status, sha256, content_type, width, height, byte_size) "
                "VALUES (%s, %s, %s, 'indexed', %s, %s, %s, %s, %s)",
                (iid, record.container, record.name, record.sha256, record.content_type, 64, 48, record.byte_size),
            )
            conn.execute(
                "INSERT INTO image_vectors (image_id, model_id, sha256, embedding) VALUES (%s, %s, %s, %s)",
                (iid, MODEL, record.sha256, vector),
            )


def psycopg_pool(url: str) -> ConnectionPool:
    return make_pool(Settings({"DATABASE_URL": url}), role="admin")


def counts(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM image_vectors)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_database_of_the_previous_version_is_upgraded_with_its_data_intact(
    legacy_database: str, fake_vision: FakeVision, azurite: Azurite
) -> None:
    settings = settings_for(legacy_database, fake_vision, azurite)
    # A cold start against the old schema changes nothing and says what to run.
    with pytest.raises(
        SchemaOutdated,
        match=re.escape(f"version 1, this code needs {LATEST_VERSION}: run `python -m shared.cli migrate`"),
    ):
        build_runtime(settings)
    answer = health(func.HttpRequest("GET", "/api/health", body=b""), settings)
    body = json.loads(answer.get_body())
    assert answer.status_code == 503 and "python -m shared.cli migrate" in body["checks"]["database"]["error"]
    with psycopg.connect(legacy_database) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)

    before = counts(legacy_database)
    said: list[str] = []
    result = migrate(settings, say=said.append)
    assert (result.schema.before, result.schema.after) == (1, LATEST_VERSION)
    assert counts(legacy_database) == before == (50, 50)
    # Migration 4 copied each image's container and name beside its vectors, and said how far it got.
    with psycopg.connect(legacy_database) as conn:
        unnamed = conn.execute(
            "SELECT count(*) FROM image_vectors v JOIN images i ON i.id = v.image_id "
            "WHERE v.container IS DISTINCT FROM i.container OR v.name IS DISTINCT FROM i.name"
        ).fetchone()
    assert unnamed == (0,)
    assert any("50 vectors looked at" in line and "50 named" in line for line in said), said
    # The old index is known to the model (vector, m 16), and the settings' halfvec default is a rebuild away.
    status = next(s for s in Store(psycopg_pool(legacy_database)).registry.models() if s.model.model_id == MODEL)
    assert status.model.index_name == _legacy_index_name(MODEL, 1024) and status.model.precision == "vector"
    assert result.built is None and any("reindex" in note for note in result.notes)

    again = migrate(settings, say=lambda _: None)
    assert again.schema.applied == () and again.built is None

    rt = build_runtime(settings)  # now it starts
    try:
        vector = rt.store.catalogue.get_vector(image_id("images", "old/07.jpg"), MODEL)
        assert vector is not None
        assert rt.store.vectors.nearest(rt.model, vector, 5)[0].name == "old/07.jpg"
    finally:
        rt.close()


class _Interrupted(Exception):
    pass


def test_naming_the_vectors_goes_on_where_an_interrupted_run_stopped(
    legacy_database: str, fake_vision: FakeVision, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 4 names the existing vectors in batches, each committed: stopped after the first batch
    (the operator's Ctrl-C, a lost connection), it is not recorded as done, and the next run names only
    the rest."""
    settings = settings_for(legacy_database, fake_vision, azurite)
    monkeypatch.setattr(schema, "NAMING_BATCH_ROWS", 20)

    def stop_after_a_batch(line: str) -> None:
        if "looked at" in line:
            raise _Interrupted(line)

    with pytest.raises(_Interrupted, match="20 vectors looked at"):
        migrate(settings, say=stop_after_a_batch, prepare_model=False)

    def unnamed() -> int:
        with psycopg.connect(legacy_database) as conn:
            return int(conn.execute("SELECT count(*) FROM image_vectors WHERE name IS NULL").fetchone()[0])  # type: ignore[index]

    assert unnamed() == 30
    with psycopg.connect(legacy_database) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (3,)
    said: list[str] = []
    result = migrate(settings, say=said.append, prepare_model=False)
    assert result.schema.applied == ("4 image names beside their vectors",) and unnamed() == 0
    assert "named 30 vectors" in " ".join(said), said


def _storage(url: str, citus: bool) -> list[str]:
    """How image_vectors stores its vectors on every node that holds it: 'm' in the row, 'e' out of line."""
    query = "SELECT attstorage FROM pg_attribute WHERE attrelid = '{}'::regclass AND attname = 'embedding'"
    with psycopg.connect(url, autocommit=True) as conn:
        found = [str(r[0]) for r in conn.execute(query.format("image_vectors")).fetchall()]
        if citus:
            shards = conn.execute(
                "SELECT result FROM run_command_on_shards('image_vectors', %s)", (query.format("%s"),)
            )
            found += [str(r[0]) for r in shards.fetchall()]
    return found


def _toasted(url: str) -> int:
    """Vectors kept out of their rows, in image_vectors' TOAST table (single node)."""
    with psycopg.connect(url, autocommit=True) as conn:
        toast = conn.execute(
            "SELECT t.relname FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid "
            "WHERE c.relname = 'image_vectors'"
        )
        name = toast.fetchone()[0]  # type: ignore[index]
        count = sql.SQL("SELECT count(DISTINCT chunk_id) FROM pg_toast.{}").format(sql.Identifier(name))
        return int(conn.execute(count).fetchone()[0])  # type: ignore[index]


def test_after_migrate_vectors_are_stored_in_their_rows_on_every_node(
    legacy_database: str, fake_vision: FakeVision, azurite: Azurite, citus: bool
) -> None:
    """An exact scan then reads one page per vector instead of a TOAST lookup and three chunks."""
    assert "m" not in _storage(legacy_database, citus)  # pgvector's default: out of line (EXTERNAL)
    migrate(settings_for(legacy_database, fake_vision, azurite), say=lambda _: None)
    stored = _storage(legacy_database, citus)
    assert set(stored) == {"m"} and len(stored) == (5 if citus else 1), stored  # Citus: coordinator + 4 shards


@pytest.mark.citus_only
def test_on_citus_a_shard_that_refuses_the_storage_change_fails_the_migration(
    legacy_database: str, fake_vision: FakeVision, azurite: Azurite
) -> None:
    """Citus reports a shard's error in run_command_on_shards' result instead of raising it: the
    migration must not be recorded as done while a shard keeps its vectors out of line."""
    settings = settings_for(legacy_database, fake_vision, azurite)
    rename = "SET citus.enable_manual_changes_to_shards TO on; ALTER TABLE IF EXISTS {} RENAME TO {}"
    with psycopg.connect(legacy_database, autocommit=True) as conn:
        shard = conn.execute(
            "SELECT shard_name FROM citus_shards WHERE table_name = 'image_vectors'::regclass ORDER BY shardid LIMIT 1"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT run_command_on_workers(%s)", (rename.format(shard, "hidden_shard"),))
    try:
        with pytest.raises(DatabaseUnavailable, match=f"not store the vectors in their rows on every shard.*{shard}"):
            migrate(settings, say=lambda _: None)
        with psycopg.connect(legacy_database) as conn:
            # Recorded up to the migration before the storage change, and no further.
            assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (schema._V3.version - 1,)
    finally:
        with psycopg.connect(legacy_database, autocommit=True) as conn:
            conn.execute("SELECT run_command_on_workers(%s)", (rename.format("hidden_shard", shard),))
    migrate(settings, say=lambda _: None)  # once every shard answers, the next run finishes it
    assert set(_storage(legacy_database, True)) == {"m"}


@pytest.mark.single_node
def test_vectors_written_before_the_migration_move_into_their_rows_with_vacuum_full(
    legacy_database: str, fake_vision: FakeVision, azurite: Azurite
) -> None:
    """As docs/deploy.md says: new vectors are stored in their rows at once, older ones when the table
    is rewritten; search answers the same before and after."""
    settings = settings_for(legacy_database, fake_vision, azurite)
    assert _toasted(legacy_database) == 50
    migrate(settings, say=lambda _: None)
    store = Store(psycopg_pool(legacy_database))
    try:
        rng = np.random.default_rng(10)
        fresh = rng.standard_normal((5, 1024)).astype(np.float32)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        records = [ImageRecord("images", f"new/{i}.jpg", bytes([i]) * 32, "image/jpeg", 64, 48, 10) for i in range(5)]
        store.bulk.upsert(records, fresh, MODEL)
        assert _toasted(legacy_database) == 50  # the new five are in their rows
        model = store.registry.active_model()
        assert model is not None
        query = store.catalogue.get_vector(image_id("images", "old/07.jpg"), MODEL)
        assert query is not None
        before = [h.id for h in store.vectors.search(model, query, 10, strategy="exact").hits]
        with psycopg.connect(legacy_database, autocommit=True) as conn:
            conn.execute("VACUUM FULL image_vectors")
        assert _toasted(legacy_database) == 0
        assert [h.id for h in store.vectors.search(model, query, 10, strategy="exact").hits] == before
    finally:
        store.close()


def test_reindex_moves_a_model_to_the_new_index_while_search_keeps_answering(
    legacy_database: str, fake_vision: FakeVision, azurite: Azurite
) -> None:
    settings = settings_for(legacy_database, fake_vision, azurite)
    migrate(settings, say=lambda _: None)
    rt = build_runtime(settings)
    query = rt.store.catalogue.get_vector(image_id("images", "old/03.jpg"), MODEL)
    assert query is not None
    stop = threading.Event()
    answers: list[str] = []
    errors: list[BaseException] = []

    def keep_searching() -> None:
        while not stop.is_set():
            try:
                rt.refresh_models(force=True)
                answers.append(rt.store.vectors.nearest(rt.model, query, 3)[0].name)
            except BaseException as exc:
                errors.append(exc)

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    try:
        result = reindex(settings, wait_seconds=0.5, say=lambda _: None)
    finally:
        stop.set()
        searcher.join()
        rt.close()
    assert result.rebuilt == [MODEL] and result.dropped == [_legacy_index_name(MODEL, 1024)]
    assert errors == [] and len(answers) > 0 and set(answers) == {"old/03.jpg"}
    with psycopg.connect(legacy_database) as conn:
        defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'")]
    assert len(defs) == 1 and "halfvec(1024)" in defs[0] and f"m='{settings.hnsw_m}'" in defs[0]
    assert reindex(settings, say=lambda _: None).rebuilt == []  # nothing left to do


def test_a_changed_hnsw_parameter_is_rebuilt_by_reindex(
    database_url: str, store: Store, fake_vision: FakeVision, azurite: Azurite
) -> None:
    """(``store`` empties the collection: the configured model is then the only one.)"""
    settings = settings_for(database_url, fake_vision, azurite)
    migrate(settings, say=lambda _: None)
    changed = settings.with_overrides({"HNSW_M": "24"})
    notes = migrate(changed, say=lambda _: None).notes
    assert any(f"m={settings.hnsw_m}" in n and "m=24" in n and "reindex" in n for n in notes)
    result = reindex(changed, wait_seconds=0, say=lambda _: None)
    assert result.rebuilt == [MODEL]
    assert migrate(changed, say=lambda _: None).notes == []
    reindex(settings, wait_seconds=0, say=lambda _: None)  # leave the shared database as the others expect


@pytest.mark.single_node
def test_the_apps_role_runs_ingestion_and_search_without_any_ddl_right(
    postgres: Postgres, database_url: str, app_settings: Settings, azurite: object, fake_vision: FakeVision
) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}-func"  # Function App names carry hyphens
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    migrate(app_settings, say=lambda _: None)
    statements = grant_app_role(app_settings, role)
    assert not any("CREATE" in s.upper() and "GRANT" not in s.upper() for s in statements)
    url = database_url.replace("postgres@", f"{role}@", 1)
    as_app = app_settings.with_overrides({"DATABASE_URL": url})
    rt = build_runtime(as_app)
    try:
        rt.blobs.ensure_container()
        rt.blobs.upload("least.jpg", image_bytes("red"), "image/jpeg")
        from shared.ingest import ingest_blob

        assert ingest_blob(rt, "least.jpg").outcome == "indexed"
        hits = rt.store.vectors.nearest(rt.model, rt.provider.embed_text("red"), 3)
        assert [h.name for h in hits] == ["least.jpg"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE app_may_not (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE images ADD COLUMN app_may_not int")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE embedding_models SET state = 'retired'")
    finally:
        rt.close()


def test_granting_a_role_that_does_not_exist_says_how_to_create_it(app_settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="does not exist: create it first"):
        grant_app_role(app_settings, "no-such-role")


@pytest.mark.citus_only
def test_on_citus_migrate_makes_the_search_settings_the_database_defaults_on_every_node(
    database_url: str, store: Store, fake_vision: FakeVision, azurite: Azurite
) -> None:
    """A common search then sends no SET and needs no transaction on the workers: they start their
    sessions with the same settings the search would have set."""
    migrate(settings_for(database_url, fake_vision, azurite), say=lambda _: None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        check = (
            "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = current_database() AND s.setrole = 0"
        )
        nodes = [conn.execute(check).fetchone()[0]]  # type: ignore[index]
        nodes += [r[3] for r in conn.execute("SELECT * FROM run_command_on_workers(%s)", (check,)).fetchall()]
        iterative = pgvector_version(conn) >= (0, 8)  # pgvector 0.7 has no iterative scans
    for settings in nodes:
        assert "hnsw.ef_search=" in settings, nodes
        assert ("hnsw.iterative_scan=relaxed_order" in settings) == iterative, nodes
