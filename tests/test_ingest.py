"""Ingestion end to end: real Azurite, real PostgreSQL, the fake Vision server over HTTP."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import numpy as np
import pytest

from shared.blobs import BlobInfo
from shared.catalogue import image_id
from shared.cli import main as cli_main
from shared.errors import DatabaseUnavailable, ProviderUnavailable
from shared.ingest import Outcome, handle_blob_event, ingest_blob, reconcile
from shared.runtime import Runtime
from tests.appfns import bindings, blob_trigger_client, handler
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes


def upload(rt: Runtime, name: str, data: bytes, content_type: str = "image/jpeg", **metadata: str) -> None:
    rt.blobs.container.upload_blob(name, data, overwrite=True, metadata=metadata or None)
    if content_type:
        rt.blobs.container.get_blob_client(name).set_http_headers(
            content_settings=__import__("azure.storage.blob", fromlist=["ContentSettings"]).ContentSettings(
                content_type=content_type
            )
        )


def as_host_delivers(rt: Runtime, name: str) -> Any:
    """What the Functions host hands the blob trigger: a BlobClient for the blob (SDK-type binding)."""
    connection = rt.settings.raw("ImagesStorage")
    assert connection is not None
    return blob_trigger_client(connection, rt.settings.images_container, name)


def deliver(rt: Runtime, name: str) -> None:
    handler("index_image")(as_host_delivers(rt, name))


def rows(rt: Runtime) -> dict[str, str]:
    with rt.store.pool.connection() as conn:
        return dict(conn.execute("SELECT name, status FROM images ORDER BY name").fetchall())


def blob_names(rt: Runtime) -> set[str]:
    return {b.name for b in rt.blobs.list()}


def test_blob_trigger_binding_matches_the_product() -> None:
    (trigger,) = [b for b in bindings("index_image") if b["type"] == "blobTrigger"]
    assert trigger["path"] == "%IMAGES_CONTAINER%/{name}"
    assert trigger["connection"] == "ImagesStorage"
    assert trigger["source"] == "LogsAndContainerScan"
    (grid,) = bindings("remove_deleted_image")
    assert grid["type"] == "eventGridTrigger"
    (timer,) = bindings("reconcile_timer")
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "0 0 * * * *"


def test_uploaded_image_becomes_one_searchable_row_with_its_metadata(runtime: Runtime, fake_vision: FakeVision) -> None:
    data = image_bytes("red", (120, 80), "PNG")
    upload(runtime, "photos/red.png", data, "image/png", owner="museum")
    deliver(runtime, "photos/red.png")

    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "photos/red.png"))
    assert row is not None and row.status == "indexed"
    assert (row.content_type, row.width, row.height, row.byte_size) == ("image/png", 120, 80, len(data))
    assert row.metadata == {"owner": "museum"}
    assert row.etag and row.etag.strip('"') and row.last_modified is not None
    stored = runtime.store.catalogue.get_vector(row.id, runtime.model.model_id)
    assert stored is not None and np.allclose(stored, FakeVision.vector_for_image(data), atol=1e-6)
    (call,) = fake_vision.calls("image")
    assert call["query"]["model-version"] == "2023-04-15"
    hits = runtime.store.vectors.nearest(runtime.model, runtime.provider.embed_text("something red"), 5)
    assert [h.name for h in hits] == ["photos/red.png"]


def test_the_same_blob_delivered_three_times_costs_one_embedding(runtime: Runtime, fake_vision: FakeVision) -> None:
    upload(runtime, "a.jpg", image_bytes("blue"))
    for _ in range(3):
        deliver(runtime, "a.jpg")
    assert rows(runtime) == {"a.jpg": "indexed"}
    assert len(fake_vision.calls("image")) == 1


def test_concurrent_deliveries_leave_one_row_and_one_call(runtime: Runtime, fake_vision: FakeVision) -> None:
    upload(runtime, "c.jpg", image_bytes("green"))
    fake_vision.latency = 0.2  # keep the first call in flight while the others arrive
    errors: list[BaseException] = []

    def one() -> None:
        try:
            handler("index_image")(as_host_delivers(runtime, "c.jpg"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        fake_vision.latency = 0.0
    assert not errors
    assert rows(runtime) == {"c.jpg": "indexed"}
    assert len(fake_vision.calls("image")) == 1


def test_changed_bytes_are_re_embedded(runtime: Runtime, fake_vision: FakeVision) -> None:
    upload(runtime, "x.jpg", image_bytes("red"))
    deliver(runtime, "x.jpg")
    new = image_bytes("blue")
    upload(runtime, "x.jpg", new)
    deliver(runtime, "x.jpg")
    assert len(fake_vision.calls("image")) == 2
    iid = image_id(runtime.settings.images_container, "x.jpg")
    stored = runtime.store.catalogue.get_vector(iid, runtime.model.model_id)
    assert stored is not None and np.allclose(stored, FakeVision.vector_for_image(new), atol=1e-6)
    assert runtime.store.catalogue.count() == 1


def blob_deleted_event(
    container: str, name: str, event_type: str = "Microsoft.Storage.BlobDeleted"
) -> func.EventGridEvent:
    return func.EventGridEvent(
        id="e1",
        data={"api": "DeleteBlob", "url": f"http://127.0.0.1/devstoreaccount1/{container}/{name}"},
        topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z",
        subject=f"/blobServices/default/containers/{container}/blobs/{name}",
        event_type=event_type,
        event_time=datetime.now(UTC),
        data_version="",
    )


def test_event_grid_delete_removes_the_row_and_ignores_other_events(runtime: Runtime) -> None:
    container = runtime.settings.images_container
    for name in ("keep.jpg", "gone.jpg"):
        upload(runtime, name, image_bytes("red", seed=len(name)))
        deliver(runtime, name)
    runtime.blobs.delete("gone.jpg")
    handler("remove_deleted_image")(blob_deleted_event("other-container", "keep.jpg"))
    handler("remove_deleted_image")(blob_deleted_event(container, "keep.jpg", "Microsoft.Storage.BlobCreated"))
    assert rows(runtime) == {"gone.jpg": "indexed", "keep.jpg": "indexed"}
    handler("remove_deleted_image")(blob_deleted_event(container, "gone.jpg"))
    assert rows(runtime) == {"keep.jpg": "indexed"}


def test_a_late_delete_event_does_not_remove_a_re_uploaded_blob(runtime: Runtime) -> None:
    upload(runtime, "again.jpg", image_bytes("red"))
    deliver(runtime, "again.jpg")
    outcome = handle_blob_event(blob_deleted_event(runtime.settings.images_container, "again.jpg"), runtime)
    assert outcome is not None and outcome.outcome == "skipped"
    assert rows(runtime) == {"again.jpg": "indexed"}


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("notes.jpg", b"just some text, not a picture", "NotAnImage"),
        ("page.jpg", b"<!DOCTYPE html><html><body>hi</body></html>", "NotAnImage"),
        ("cut.jpg", image_bytes("red", (400, 300))[:900], "CorruptImage"),
        ("cut.png", image_bytes("red", (400, 300), "PNG")[:200], "CorruptImage"),
        ("tiny.png", image_bytes("red", (10, 40), "PNG"), "BadDimensions"),
        ("empty.jpg", b"", "EmptyFile"),
    ],
)
def test_bad_files_are_recorded_and_the_invocation_completes(
    runtime: Runtime, fake_vision: FakeVision, name: str, data: bytes, code: str
) -> None:
    upload(runtime, "good.jpg", image_bytes("green"))
    deliver(runtime, "good.jpg")
    upload(runtime, name, data)
    deliver(runtime, name)  # completes: no exception, so the host does not retry
    assert rows(runtime) == {"good.jpg": "indexed", name: "failed"}
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, name))
    assert row is not None and row.failure_code == code and row.failure_reason
    assert len(fake_vision.calls("image")) == 1  # only the good image reached the service
    stats = runtime.store.catalogue.stats()
    assert stats["by_status"] == {"failed": 1, "indexed": 1}
    assert stats["failures"][0]["name"] == name


def test_oversized_blob_is_recorded_without_reading_it_whole(runtime: Runtime, fake_vision: FakeVision) -> None:
    big = image_bytes("red") + b"\0" * (20 * 1024 * 1024)
    upload(runtime, "huge.jpg", big)
    deliver(runtime, "huge.jpg")
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "huge.jpg"))
    assert row is not None and row.status == "failed" and row.failure_code == "TooLarge"
    assert row.byte_size == len(big)
    assert fake_vision.calls("image") == []
    # Every path reads the properties first: an oversized blob's bytes are never downloaded.
    data, info = runtime.blobs.read("huge.jpg", 20 * 1024 * 1024)
    assert data == b"" and info.size == len(big)


def test_an_image_the_service_refuses_is_recorded_and_not_sent_again(runtime: Runtime, fake_vision: FakeVision) -> None:
    upload(runtime, "refused.jpg", image_bytes("red"))
    fake_vision.fail_next(status=400, code="InvalidRequest", inner_code="InvalidImageFormat")
    deliver(runtime, "refused.jpg")
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "refused.jpg"))
    assert row is not None and row.status == "failed" and "InvalidImageFormat" in (row.failure_reason or "")
    deliver(runtime, "refused.jpg")  # delivered again: the same bytes are not sent again
    assert len(fake_vision.calls("image")) == 1
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "refused.jpg"))
    assert row is not None and row.failure_count == 2
    upload(runtime, "refused.jpg", image_bytes("green", (80, 60)))  # fixed bytes: the record clears
    deliver(runtime, "refused.jpg")
    assert rows(runtime) == {"refused.jpg": "indexed"}


def test_throttling_then_success_indexes_the_image(runtime: Runtime, fake_vision: FakeVision) -> None:
    upload(runtime, "busy.jpg", image_bytes("yellow"))
    fake_vision.fail_next(status=429, retry_after="1", times=1)
    deliver(runtime, "busy.jpg")
    assert rows(runtime) == {"busy.jpg": "indexed"}
    assert [c["status"] for c in fake_vision.calls("image")] == [429, 200]


def test_persistent_outage_fails_the_invocation_without_a_partial_row(
    runtime: Runtime, fake_vision: FakeVision
) -> None:
    upload(runtime, "down.jpg", image_bytes("red"))
    fake_vision.fail_next(status=503, times=100)
    with pytest.raises(ProviderUnavailable):
        deliver(runtime, "down.jpg")
    assert rows(runtime) == {}
    fake_vision.reset()
    report = reconcile(runtime)
    assert report.indexed == 1 and not report.errors
    assert rows(runtime) == {"down.jpg": "indexed"}


def test_unreachable_database_fails_the_invocation(runtime: Runtime, fake_vision: FakeVision) -> None:
    upload(runtime, "db.jpg", image_bytes("red"))
    runtime.store.pool.close()
    from shared.db import make_pool

    dead = make_pool(
        type(runtime.settings)({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "DATABASE_POOL_MAX": "1"})
    )
    live_pool, runtime.store.pool = runtime.store.pool, dead
    try:
        dead.timeout = 2
        with pytest.raises(DatabaseUnavailable):
            deliver(runtime, "db.jpg")
    finally:
        dead.close()
        from shared.db import make_pool as reopen

        runtime.store.pool = reopen(runtime.settings)
        del live_pool
    assert fake_vision.calls("image") == []
    report = reconcile(runtime)
    assert report.indexed == 1 and rows(runtime) == {"db.jpg": "indexed"}


def test_reconcile_indexes_missing_removes_orphans_and_then_has_nothing_to_do(
    runtime: Runtime, fake_vision: FakeVision
) -> None:
    for i in range(5):
        upload(runtime, f"r{i}.jpg", image_bytes("blue", seed=i))
    deliver(runtime, "r0.jpg")
    runtime.blobs.delete("r0.jpg")  # missed delete: an orphan row
    dry = reconcile(runtime, dry_run=True)
    assert (dry.to_index, dry.to_remove) == (4, 1) and rows(runtime) == {"r0.jpg": "indexed"}
    report = reconcile(runtime)
    assert (report.indexed, report.removed, report.errors) == (4, 1, [])
    assert set(rows(runtime)) == blob_names(runtime)
    calls = len(fake_vision.calls("image"))
    again = reconcile(runtime)
    assert (again.to_index, again.to_remove) == (0, 0)
    assert len(fake_vision.calls("image")) == calls


def test_reingesting_identical_bytes_under_a_new_etag_makes_no_call(runtime: Runtime, fake_vision: FakeVision) -> None:
    data = image_bytes("white")
    upload(runtime, "same.jpg", data)
    outcome = ingest_blob(runtime, "same.jpg")
    assert outcome == Outcome("same.jpg", "indexed", True, len(data), outcome.duration_ms)
    upload(runtime, "same.jpg", data, owner="new-metadata")  # new ETag, same bytes
    assert reconcile(runtime).unchanged == 1
    assert len(fake_vision.calls("image")) == 1
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "same.jpg"))
    assert row is not None and row.metadata == {"owner": "new-metadata"}


def test_ingest_logs_one_structured_line_per_blob(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    upload(runtime, "log.jpg", image_bytes("red"))
    with caplog.at_level("INFO", logger="shared.ingest"):
        deliver(runtime, "log.jpg")
        deliver(runtime, "log.jpg")
    lines = [r for r in caplog.records if r.getMessage().startswith("ingest ")]
    assert len(lines) == 2
    first, second = (r.custom_dimensions for r in lines)  # type: ignore[attr-defined]
    assert first["outcome"] == "indexed" and first["embedding_skipped"] is False and first["bytes"] > 0
    assert second["outcome"] == "unchanged" and second["embedding_skipped"] is True
    assert "duration_ms" in first


def test_cli_upload_then_reconcile_indexes_a_folder(
    runtime: Runtime,
    fake_vision: FakeVision,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "pictures"
    for i in range(240):
        sub = folder / f"set{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        colour = ["red", "green", "blue", "yellow"][i % 4]
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        (sub / f"img{i:03d}.{fmt.lower()}").write_bytes(image_bytes(colour, (48 + i % 7, 40), fmt, seed=i))
    (folder / "README.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    for key in ("DATABASE_URL", "ImagesStorage", "IMAGES_CONTAINER", "VISION_ENDPOINT", "VISION_KEY"):
        monkeypatch.setenv(key, runtime.settings.raw(key) or "")

    assert cli_main(["upload", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "uploaded 240 file(s)" in out and "skipped 1" in out
    props = runtime.blobs.properties("set0/img000.png")
    assert props is not None and props.content_type == "image/png"

    assert cli_main(["reconcile"]) == 0
    assert "indexed 240" in capsys.readouterr().out
    assert runtime.store.catalogue.count("indexed") == 240
    calls = len(fake_vision.calls("image"))
    assert calls == 240
    assert cli_main(["reconcile"]) == 0
    assert "indexed 0" in capsys.readouterr().out
    assert len(fake_vision.calls("image")) == calls

    assert cli_main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "indexed" in out and "240" in out and "azure-vision:2023-04-15" in out


def test_blob_info_of_the_trigger_reaches_the_row(runtime: Runtime) -> None:
    info = BlobInfo("meta.jpg", 10, '"0xABC"', datetime(2026, 1, 2, tzinfo=UTC), "image/jpeg", {"k": "v"})
    from shared.ingest import ingest_bytes, providers_of

    ingest_bytes(
        runtime.store, providers_of(runtime), runtime.settings.images_container, "meta.jpg", image_bytes(), info
    )
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "meta.jpg"))
    assert row is not None and row.etag == '"0xABC"' and row.metadata == {"k": "v"}
    assert row.last_modified == datetime(2026, 1, 2, tzinfo=UTC)


def test_a_thumbnail_is_stored_at_ingest_and_removed_with_the_image(runtime: Runtime) -> None:
    import io

    from PIL import Image

    upload(runtime, "big/photo.jpg", image_bytes("blue", (1600, 900)))
    deliver(runtime, "big/photo.jpg")
    assert runtime.blobs.thumbnails is not None
    preview = runtime.blobs.thumbnails.get_blob_client("big/photo.jpg").download_blob().readall()
    img = Image.open(io.BytesIO(preview))
    assert img.format == "JPEG" and max(img.size) == 320 and img.size == (320, 180)
    row = runtime.store.catalogue.get_image(image_id(runtime.settings.images_container, "big/photo.jpg"))
    assert row is not None
    with runtime.store.pool.connection() as conn:
        assert conn.execute("SELECT thumbnail FROM images WHERE id = %s", (row.id,)).fetchone() == (True,)

    runtime.blobs.delete("big/photo.jpg")
    handler("remove_deleted_image")(blob_deleted_event(runtime.settings.images_container, "big/photo.jpg"))
    assert runtime.blobs.thumbnails.get_blob_client("big/photo.jpg").exists() is False
