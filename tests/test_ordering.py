"""Out-of-order delivery: an older event never undoes a newer state.

At-least-once delivery means events arrive late, twice and out of order: the blob trigger, Event Grid
deletes and reconcile race each other. Each test interleaves two of them both ways, with real
PostgreSQL, real Azurite and the fake Vision server, and checks what a searcher would see: the row
holds the blob's current bytes (or no row for a deleted blob), and a search with those bytes finds it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from shared.blobs import BlobInfo
from shared.catalogue import image_id
from shared.embeddings import EmbeddingProvider, Vector
from shared.ingest import ingest_bytes, providers_of, reconcile
from shared.runtime import Runtime
from tests.appfns import handler
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes
from tests.test_ingest import as_host_delivers, blob_deleted_event, upload

A = image_bytes("red", seed=1)
B = image_bytes("blue", seed=2)


class Gate:
    """Wraps the active model's provider: the first image call waits until released (a delivery
    caught mid-embedding), every other call goes straight through."""

    def __init__(self, inner: EmbeddingProvider) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.released = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_image(self, data: bytes) -> Vector:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.entered.set()
            assert self.released.wait(30), "the test never released the gate"
        return self.inner.embed_image(data)

    def embed_text(self, text: str) -> Vector:
        return self.inner.embed_text(text)


@pytest.fixture
def gate(runtime: Runtime) -> Iterator[Gate]:
    model = runtime.model
    original = runtime.provider_for(model)
    gated = Gate(original)
    runtime._providers[model.model_id] = gated  # type: ignore[assignment]
    yield gated
    gated.released.set()
    runtime._providers[model.model_id] = original


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def deliver(rt: Runtime, name: str) -> None:
    handler("index_image")(as_host_delivers(rt, name))


def delete(rt: Runtime, name: str) -> None:
    """The blob is deleted and its BlobDeleted event handled."""
    rt.blobs.delete(name)
    handler("remove_deleted_image")(blob_deleted_event(rt.settings.images_container, name))


def stored_sha(rt: Runtime, name: str) -> bytes | None:
    row = rt.store.catalogue.get_image(image_id(rt.settings.images_container, name))
    return None if row is None else row.sha256


def found_by(rt: Runtime, data: bytes) -> list[str]:
    """What an image search with ``data`` returns first (the names of the 3 nearest)."""
    vector = FakeVision.vector_for_image(data, rt.settings.vision_model_version)
    hits = rt.store.vectors.nearest(rt.model, np.asarray(vector, dtype=np.float32), 3)
    return [h.name for h in hits if h.score > 0.999]


def info_of(rt: Runtime, name: str) -> BlobInfo:
    info = rt.blobs.properties(name)
    assert info is not None
    return info


# --- 1. an older delivery never overwrites a newer vector -------------------------------------------


def test_a_delivery_overtaken_by_an_overwrite_writes_nothing(runtime: Runtime, gate: Gate) -> None:
    upload(runtime, "x.jpg", A)
    thread, errors = in_background(lambda: deliver(runtime, "x.jpg"))  # reads A, then waits in the call
    assert gate.entered.wait(10)
    upload(runtime, "x.jpg", B)
    deliver(runtime, "x.jpg")  # B's delivery overtakes it
    gate.released.set()
    thread.join(30)
    assert errors == []
    assert stored_sha(runtime, "x.jpg") == hashlib.sha256(B).digest()
    assert found_by(runtime, B) == ["x.jpg"] and found_by(runtime, A) == []


def test_the_newer_delivery_first_then_the_older_one_finishing_late(runtime: Runtime) -> None:
    """The other order: B indexed, then the bytes of A (read before the overwrite, as the polling
    trigger hands them over) arrive: nothing is written, and no embedding call is paid."""
    upload(runtime, "x.jpg", A)
    old_info = info_of(runtime, "x.jpg")
    upload(runtime, "x.jpg", B)
    deliver(runtime, "x.jpg")
    outcome = ingest_bytes(
        runtime.store,
        providers_of(runtime),
        runtime.settings.images_container,
        "x.jpg",
        A,
        old_info,
        blobs=runtime.blobs,
    )
    assert outcome.outcome == "superseded" and not outcome.embedded
    assert stored_sha(runtime, "x.jpg") == hashlib.sha256(B).digest()
    assert found_by(runtime, B) == ["x.jpg"]


def test_an_older_delivery_that_writes_last_is_corrected_at_once(
    runtime: Runtime, fake_vision: FakeVision, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest window: B is uploaded and fully indexed between A's last check and A's write
    (same second, so Last-Modified cannot order them). A's check after writing sees B and indexes it."""
    upload(runtime, "x.jpg", A)
    catalogue = runtime.store.catalogue
    save = catalogue.save_indexed
    raced = []

    def racing_save(record: Any, vectors: Any, **kwargs: Any) -> Any:
        if record.sha256 == hashlib.sha256(A).digest() and not raced:
            raced.append(True)
            upload(runtime, "x.jpg", B)
            deliver(runtime, "x.jpg")  # B is indexed first ...
        return save(record, vectors, **kwargs)  # ... then A writes over it

    monkeypatch.setattr(catalogue, "save_indexed", racing_save)
    deliver(runtime, "x.jpg")
    assert raced
    assert stored_sha(runtime, "x.jpg") == hashlib.sha256(B).digest()
    assert found_by(runtime, B) == ["x.jpg"] and found_by(runtime, A) == []


# --- 2. a late delivery never resurrects a deleted blob ----------------------------------------------


def test_a_delivery_in_flight_when_the_blob_is_deleted_writes_nothing(runtime: Runtime, gate: Gate) -> None:
    upload(runtime, "gone.jpg", A)
    thread, errors = in_background(lambda: deliver(runtime, "gone.jpg"))
    assert gate.entered.wait(10)
    delete(runtime, "gone.jpg")  # no row yet: the event finds nothing to remove
    gate.released.set()
    thread.join(30)
    assert errors == []
    assert stored_sha(runtime, "gone.jpg") is None and found_by(runtime, A) == []


def test_a_delete_handled_just_before_the_write_is_not_undone(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(runtime, "gone.jpg", A)
    catalogue = runtime.store.catalogue
    save = catalogue.save_indexed

    def save_after_delete(record: Any, vectors: Any, **kwargs: Any) -> Any:
        delete(runtime, "gone.jpg")
        return save(record, vectors, **kwargs)

    monkeypatch.setattr(catalogue, "save_indexed", save_after_delete)
    deliver(runtime, "gone.jpg")
    assert stored_sha(runtime, "gone.jpg") is None and found_by(runtime, A) == []


def test_a_delete_after_the_delivery_removes_the_row(runtime: Runtime) -> None:
    upload(runtime, "gone.jpg", A)
    deliver(runtime, "gone.jpg")
    assert found_by(runtime, A) == ["gone.jpg"]
    delete(runtime, "gone.jpg")
    assert stored_sha(runtime, "gone.jpg") is None and found_by(runtime, A) == []


def test_bytes_read_before_the_delete_arriving_after_it_write_nothing(runtime: Runtime) -> None:
    upload(runtime, "gone.jpg", A)
    old_info = info_of(runtime, "gone.jpg")
    delete(runtime, "gone.jpg")
    outcome = ingest_bytes(
        runtime.store,
        providers_of(runtime),
        runtime.settings.images_container,
        "gone.jpg",
        A,
        old_info,
        blobs=runtime.blobs,
    )
    assert outcome.outcome == "deleted"
    assert stored_sha(runtime, "gone.jpg") is None


def test_a_late_delete_event_for_a_blob_uploaded_again_keeps_the_new_row(runtime: Runtime) -> None:
    upload(runtime, "again.jpg", A)
    deliver(runtime, "again.jpg")
    runtime.blobs.delete("again.jpg")
    upload(runtime, "again.jpg", B)
    deliver(runtime, "again.jpg")
    handler("remove_deleted_image")(blob_deleted_event(runtime.settings.images_container, "again.jpg"))  # late
    assert stored_sha(runtime, "again.jpg") == hashlib.sha256(B).digest()


# --- 3. reconcile never removes an image uploaded while it runs --------------------------------------


def test_reconcile_keeps_an_image_uploaded_after_its_listing(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    upload(runtime, "old.jpg", A)
    deliver(runtime, "old.jpg")
    listing = list(runtime.blobs.list())  # reconcile lists the container ...
    upload(runtime, "new.jpg", B)  # ... a blob is uploaded and indexed meanwhile ...
    deliver(runtime, "new.jpg")
    monkeypatch.setattr(runtime.blobs, "list", lambda: iter(listing))  # ... and then it reads the table
    report = reconcile(runtime)
    assert report.removed == 0 and report.kept == 1
    assert found_by(runtime, B) == ["new.jpg"]


def test_reconcile_removes_a_row_whose_blob_is_really_gone(runtime: Runtime) -> None:
    upload(runtime, "old.jpg", A)
    deliver(runtime, "old.jpg")
    runtime.blobs.delete("old.jpg")  # its delete event was lost
    report = reconcile(runtime)
    assert report.removed == 1 and stored_sha(runtime, "old.jpg") is None


def test_reconcile_listing_a_blob_deleted_before_it_is_read_writes_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(runtime, "brief.jpg", A)
    listing = list(runtime.blobs.list())  # listed while it existed ...
    runtime.blobs.delete("brief.jpg")  # ... deleted before reconcile reads it
    monkeypatch.setattr(runtime.blobs, "list", lambda: iter(listing))
    report = reconcile(runtime)
    assert report.errors == [] and report.indexed == 0
    assert stored_sha(runtime, "brief.jpg") is None


def test_reconcile_indexing_while_the_trigger_indexes_a_newer_version(runtime: Runtime, gate: Gate) -> None:
    """Reconcile reads A and is caught in the embedding call; the blob is overwritten with B and the
    trigger indexes B; reconcile's late write of A must not win."""
    upload(runtime, "race.jpg", A)
    thread, errors = in_background(lambda: reconcile(runtime))
    assert gate.entered.wait(10)
    upload(runtime, "race.jpg", B)
    deliver(runtime, "race.jpg")
    gate.released.set()
    thread.join(30)
    assert errors == []
    assert stored_sha(runtime, "race.jpg") == hashlib.sha256(B).digest()
