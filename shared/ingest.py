"""Ingestion: every uploaded image becomes searchable once, correctly, and nothing is lost.

How one blob is indexed (:func:`ingest_bytes`):
1. **Check and claim**, in one short transaction: bytes already indexed (same sha256, every wanted
   model) or already refused are answered at once; otherwise the delivery claims (image, sha256) with a
   lease. A concurrent delivery of the same bytes finds the claim and waits, holding no connection,
   until the claimant has written (then it has nothing to do) or given up (then it takes over). So
   three deliveries at once cost one embedding call. A claim is a row with an expiry, not a lock: a
   worker that dies mid-call leaves a claim that simply expires.
2. **Validate and embed**, with no database connection held (the call may take a minute of retries).
3. **Write**, in one short transaction, conditional on not going backwards: a row written from a
   newer Last-Modified is never replaced by an older one.
4. **Ask Storage** what the blob is now, before and after writing: a delivery of bytes that are no
   longer the blob's (overwritten, or deleted) writes nothing, or takes back what it wrote. This
   closes the gaps Last-Modified leaves (one-second resolution) and makes deletes stick: a late
   delivery cannot bring back a deleted blob.

Failures: permanent ones (not an image, too large, refused by the service) are recorded on the blob's
row with their reason, and the invocation completes, so the host does not retry them forever.
Transient ones (throttling, outages, database) propagate after the provider's bounded retries: the
invocation fails, the host retries it and finally reports a poison blob.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from .blobs import BlobGone, BlobInfo, ImageBlobs
from .catalogue import Check, ImageRecord, SeenVersion
from .embeddings import EmbeddingProvider, Vector
from .errors import InvalidImage, PermanentError, ProviderMisconfigured, ServiceRefused, TransientError
from .images import MAX_BYTES, inspect_image
from .store import Store
from .thumbnails import make_thumbnail

if TYPE_CHECKING:
    import azure.functions as func
    from azure.storage.blob import BlobClient

    from .runtime import Runtime

log = logging.getLogger(__name__)

# How long a claim on (image, bytes) lasts when its holder says nothing more: longer than the slowest
# embedding a worker may wait for (the provider's retry budget), so a live claimant never loses it.
DEFAULT_CLAIM_SECONDS: Final = 180.0
# How often a delivery waiting for another delivery of the same bytes looks again (jittered).
CLAIM_POLL_SECONDS: Final = 0.25
# A delivery that finds its write overtaken (the blob changed while it worked) starts over with the
# blob's current bytes at most this many times; the newer version's own delivery does the rest.
MAX_ROUNDS: Final = 3


@dataclass(frozen=True)
class Outcome:
    """What happened to one blob; logged as one structured line."""

    name: str
    outcome: str  # indexed | unchanged | failed | deleted | superseded | skipped
    embedded: bool = False
    bytes: int = 0
    duration_ms: float = 0.0
    reason: str | None = None
    code: str | None = None


def log_outcome(o: Outcome) -> None:
    fields = {
        "blob": o.name,
        "outcome": o.outcome,
        "embedding_skipped": not o.embedded,
        "bytes": o.bytes,
        "duration_ms": round(o.duration_ms, 1),
    }
    if o.code:
        fields["code"] = o.code
    if o.reason:
        fields["reason"] = o.reason
    level = logging.WARNING if o.outcome == "failed" else logging.INFO
    log.log(level, "ingest " + " ".join(f"{k}={v!r}" for k, v in fields.items()), extra={"custom_dimensions": fields})


class BlobState(Protocol):
    """What ingestion asks Storage: the blob's current version, and its bytes (at most ``limit``)."""

    def properties(self, name: str) -> BlobInfo | None: ...

    def read(self, name: str, limit: int) -> tuple[bytes, BlobInfo]: ...

    def put_thumbnail(self, name: str, preview: bytes) -> None: ...


# Previews are made on these threads while the calling thread waits for the embedding service.
_PREVIEWS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="thumbnail")


def ingest_bytes(
    store: Store,
    providers: Mapping[str, EmbeddingProvider],
    container: str,
    name: str,
    data: bytes,
    info: BlobInfo | None = None,
    *,
    blobs: BlobState | None = None,
    thumbnails: bool = False,
    claim_seconds: float = DEFAULT_CLAIM_SECONDS,
    fresh: bool = False,
) -> Outcome:
    """Index one blob's bytes under every model in ``providers``; see the module docstring for the rules.

    ``blobs`` (the container) lets ingestion ask Storage which version is current before and after
    writing, and store the thumbnail (with ``thumbnails``); without it (benchmarks, imports of bytes
    at hand) writes are ordered by Last-Modified alone. ``fresh``: ``data`` and ``info`` were just read
    from Storage (no need to ask again whether they are current). A preview is made beside the embedding call and
    stored only once the write is known to be current, so an older preview never replaces a newer one;
    its failure is logged and never fails the ingestion (search then links the original).
    """
    started = time.perf_counter()
    outcome = _Ingestion(store, providers, container, blobs, thumbnails, claim_seconds).run(name, data, info, fresh)
    outcome = replace(outcome, duration_ms=(time.perf_counter() - started) * 1000)
    log_outcome(outcome)
    return outcome


@dataclass
class _Ingestion:
    store: Store
    providers: Mapping[str, EmbeddingProvider]
    container: str
    blobs: BlobState | None
    thumbnails: bool
    claim_seconds: float

    def run(self, name: str, data: bytes, info: BlobInfo | None, fresh: bool) -> Outcome:
        for _ in range(MAX_ROUNDS):
            outcome, current = self._once(name, data, info, fresh)
            if outcome is not None:
                return outcome
            # The blob changed while this delivery worked, and what it wrote may now hide the newer
            # version: index what the blob holds now.
            assert self.blobs is not None and current is not None
            try:
                data, info = self.blobs.read(name, MAX_BYTES)
            except BlobGone:
                return self._gone(name, info)
            fresh = True
        return Outcome(name, "superseded", reason="the blob kept changing; its newest delivery indexes it")

    def _once(
        self, name: str, data: bytes, info: BlobInfo | None, fresh: bool
    ) -> tuple[Outcome | None, BlobInfo | None]:
        size = info.size if info is not None and info.size else len(data)
        if self.blobs is not None and info is not None and info.etag is not None and not fresh:
            # Bytes handed over by a caller may be a late delivery of a version Storage no longer has.
            now = self.blobs.properties(name)
            stale = self._stale(name, info, now, size)
            if stale is not None:
                return stale, None
        if size > MAX_BYTES or len(data) > MAX_BYTES:
            return self._too_large(name, size, info), None
        sha = hashlib.sha256(data).digest()
        owner = uuid.uuid4()
        check = self._claim(name, sha, owner, info)
        if check.state == "unchanged":
            return Outcome(name, "unchanged", bytes=size), None
        if check.state == "failed":
            current = check.current
            return Outcome(
                name,
                "failed",
                bytes=size,
                code=current.failure_code if current else None,
                reason=current.failure_reason if current else None,
            ), None
        try:
            image = inspect_image(data)
            pending = _PREVIEWS.submit(make_thumbnail, data) if self.thumbnails and self.blobs is not None else None
            try:
                vectors: dict[str, Vector] = {
                    model_id: provider.embed_image(data)
                    for model_id, provider in self.providers.items()
                    if model_id not in check.have
                }
            finally:
                preview = _preview(pending, name)
        except ProviderMisconfigured:
            self._release(name, sha, owner)
            raise  # the service refused *us*, not the image: fail loudly so the host retries
        except PermanentError as exc:
            return self._failed(name, sha, size, info, owner, exc), None
        except BaseException:
            self._release(name, sha, owner)  # the next delivery takes over at once, not at the lease's end
            raise

        record = _record(self.container, name, sha, (image.content_type, image.width, image.height), info, size)
        if self.blobs is not None and info is not None and info.etag is not None:
            now = self.blobs.properties(name)
            if now is None or now.etag != info.etag:
                self._release(name, sha, owner)
                stale = self._stale(name, info, now, size)
                return stale or Outcome(name, "superseded", bytes=size), None
        if self.store.catalogue.save_indexed(record, vectors, owner=owner) is None:
            return Outcome(name, "superseded", bytes=size, reason="a newer version is indexed"), None
        if self.blobs is not None and info is not None and info.etag is not None:
            now = self.blobs.properties(name)
            if now is None:
                # Deleted while this delivery wrote: take the write back (the delete may have run first).
                self.store.catalogue.delete_version(self.container, name, info.etag)
                self._drop_thumbnail(name)
                return Outcome(name, "deleted", bytes=size, reason="the blob was deleted while it was indexed"), None
            if now.etag != info.etag:
                return None, now  # overtaken: start over with the current bytes
        if preview is not None:
            self._store_preview(name, sha, preview)
        return Outcome(name, "indexed", embedded=bool(vectors), bytes=size), None

    # --- the steps ---------------------------------------------------------------------------------
    def _claim(self, name: str, sha: bytes, owner: uuid.UUID, info: BlobInfo | None) -> Check:
        """Check and claim; while another delivery holds the claim on these bytes, wait (no connection
        held) until it wrote them, gave up, or its lease ran out."""
        seen = SeenVersion(info.etag, info.last_modified, dict(info.metadata)) if info is not None else None
        deadline = time.monotonic() + self.claim_seconds + 5
        while True:
            check = self.store.catalogue.check_and_claim(
                self.container,
                name,
                sha,
                set(self.providers),
                owner=owner,
                lease_seconds=self.claim_seconds,
                seen=seen,
            )
            if check.state != "busy":
                return check
            if time.monotonic() > deadline:
                raise ClaimTimeout(f"another delivery of {name} held its claim for {self.claim_seconds:.0f} s")
            time.sleep(CLAIM_POLL_SECONDS * (0.5 + random.random()))

    def _release(self, name: str, sha: bytes, owner: uuid.UUID) -> None:
        try:
            self.store.catalogue.release(self.container, name, sha, owner)
        except TransientError as exc:  # the claim expires on its own
            log.warning("claim on %s not released: %s", name, exc.message)

    def _failed(
        self, name: str, sha: bytes, size: int, info: BlobInfo | None, owner: uuid.UUID, exc: PermanentError
    ) -> Outcome:
        self.store.catalogue.save_failure(
            self.container,
            name,
            exc.code,
            exc.message,
            sha256=sha,
            byte_size=size,
            etag=info.etag if info else None,
            last_modified=info.last_modified if info else None,
            owner=owner,
        )
        return Outcome(name, "failed", bytes=size, code=exc.code, reason=exc.message)

    def _too_large(self, name: str, size: int, info: BlobInfo | None) -> Outcome:
        # Refused from its size alone: its bytes were never read, so there is no digest to remember.
        exc = InvalidImage(
            f"the file is {size:,} bytes; the embedding service takes at most {MAX_BYTES:,}", code="TooLarge"
        )
        self.store.catalogue.save_failure(
            self.container,
            name,
            exc.code,
            exc.message,
            byte_size=size,
            etag=info.etag if info else None,
            last_modified=info.last_modified if info else None,
        )
        return Outcome(name, "failed", bytes=size, code=exc.code, reason=exc.message)

    def _stale(self, name: str, delivered: BlobInfo, now: BlobInfo | None, size: int) -> Outcome | None:
        """None when ``delivered`` is still the blob's version; else what this delivery amounts to."""
        if now is None:
            return self._gone(name, delivered, size)
        if now.etag != delivered.etag:
            return Outcome(
                name, "superseded", bytes=size, reason="the blob was overwritten; its new version's delivery indexes it"
            )
        return None

    def _gone(self, name: str, delivered: BlobInfo | None, size: int = 0) -> Outcome:
        # Only a row holding the version that is gone goes: a newer upload's row stays.
        if (
            delivered is not None
            and delivered.etag is not None
            and self.store.catalogue.delete_version(self.container, name, delivered.etag)
        ):
            self._drop_thumbnail(name)
        return Outcome(name, "deleted", bytes=size, reason="the blob no longer exists")

    def _store_preview(self, name: str, sha: bytes, preview: bytes) -> None:
        assert self.blobs is not None
        try:
            self.blobs.put_thumbnail(name, preview)
            self.store.catalogue.mark_thumbnail(self.container, name, sha)
        except Exception as exc:  # a preview is a convenience: search then links the original
            log.warning("thumbnail for %s not stored: %s", name, getattr(exc, "message", exc))

    def _drop_thumbnail(self, name: str) -> None:
        delete = getattr(self.blobs, "delete_thumbnail", None)
        if callable(delete):
            try:
                delete(name)
            except TransientError as exc:
                log.warning("thumbnail of %s not deleted: %s", name, exc.message)


class ClaimTimeout(TransientError):
    """Another delivery of the same bytes neither finished nor gave up within its lease."""

    code = "ClaimTimeout"


def _preview(pending: Future[bytes] | None, name: str) -> bytes | None:
    if pending is None:
        return None
    try:
        return pending.result()
    except Exception as exc:  # a preview is a convenience: never lose the image over it
        log.warning("thumbnail for %s not made: %s", name, exc)
        return None


def _record(
    container: str, name: str, sha: bytes, image: tuple[str, int, int], info: BlobInfo | None, size: int
) -> ImageRecord:
    content_type, width, height = image
    return ImageRecord(
        container=container,
        name=name,
        sha256=sha,
        content_type=content_type,
        width=width,
        height=height,
        byte_size=size,
        etag=info.etag if info else None,
        last_modified=info.last_modified if info else None,
        metadata=dict(info.metadata) if info else {},
    )


# --- triggers --------------------------------------------------------------------------------------


def providers_of(rt: Runtime) -> dict[str, EmbeddingProvider]:
    return rt.targets()


def blob_name(path: str | None, container: str) -> str:
    """The blob's name inside the container, from the trigger's ``container/name`` path."""
    if not path:
        raise InvalidImage("the trigger gave no blob name", code="NoName")
    prefix = f"{container}/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def handle_blob_trigger(client: BlobClient, rt: Runtime | None = None) -> Outcome:
    """The blob trigger, bound to a ``BlobClient`` (SDK-type binding): the host hands over which blob,
    never its bytes, so the size cap holds before anything is read (see :meth:`ImageBlobs.read`)."""
    from .runtime import get_runtime

    rt = rt or get_runtime()
    container = rt.settings.images_container
    if client.container_name != container:
        log.warning("blob %s/%s is not in %s: ignored", client.container_name, client.blob_name, container)
        return Outcome(client.blob_name, "skipped", reason=f"not in container {container}")
    return ingest_blob(rt, blob_name(client.blob_name, container))


def ingest_blob(rt: Runtime, name: str) -> Outcome:
    """Read a blob from storage (properties first, then at most the cap) and ingest it; the blob
    trigger, reconcile and tests come here."""
    started = time.perf_counter()
    observed = datetime.now(UTC)
    try:
        data, info = rt.blobs.read(name, MAX_BYTES)
    except BlobGone:
        removed = rt.store.catalogue.delete_image(rt.settings.images_container, name, written_before=observed)
        if removed:
            _delete_thumbnail(rt, name)
        o = Outcome(name, "deleted", reason="blob no longer exists")
        log_outcome(replace(o, duration_ms=(time.perf_counter() - started) * 1000))
        return o
    return ingest_bytes(
        rt.store,
        providers_of(rt),
        rt.settings.images_container,
        name,
        data,
        info,
        blobs=rt.blobs,
        thumbnails=rt.blobs.thumbnails is not None,
        claim_seconds=claim_seconds(rt),
        fresh=True,
    )


def claim_seconds(rt: Runtime) -> float:
    """A claim outlives the slowest embedding this worker may wait for: the provider's retry budget and
    one more call, with a margin."""
    settings = rt.settings
    if settings.embedding_provider != "azure-vision":
        return DEFAULT_CLAIM_SECONDS
    return float(2 * settings.vision_max_retry_seconds + settings.vision_timeout_seconds + 30)


def remove_image(rt: Runtime, name: str, *, observed: datetime | None = None) -> bool:
    """Remove a blob's row, vectors and thumbnail; True when there was a row. With ``observed`` (when
    Storage was seen without the blob), a row written after that moment stays: it is a new upload's."""
    removed = rt.store.catalogue.delete_image(rt.settings.images_container, name, written_before=observed)
    if removed:
        _delete_thumbnail(rt, name)
    return removed


def _delete_thumbnail(rt: Runtime, name: str) -> None:
    try:
        rt.blobs.delete_thumbnail(name)
    except TransientError as exc:
        log.warning("thumbnail of %s not deleted: %s", name, exc.message)


def handle_blob_event(event: func.EventGridEvent, rt: Runtime | None = None) -> Outcome | None:
    """Event Grid: ``Microsoft.Storage.BlobDeleted`` removes the row; other events are logged and ignored."""
    from .runtime import get_runtime

    event_type = event.event_type
    subject = event.subject or ""
    if event_type != "Microsoft.Storage.BlobDeleted":
        log.info("ignored event type=%s subject=%s (only BlobDeleted is handled here)", event_type, subject)
        return None
    parsed = parse_blob_subject(subject)
    rt = rt or get_runtime()
    container = rt.settings.images_container
    if parsed is None or parsed[0] != container:
        log.info("ignored BlobDeleted for another container: subject=%s", subject)
        return None
    name = parsed[1]
    # A delete event can arrive after the blob was uploaded again under the same name: keep that row.
    observed = datetime.now(UTC)
    if rt.blobs.properties(name) is not None:
        o = Outcome(name, "skipped", reason="blob exists again (re-uploaded after the delete)")
        log_outcome(o)
        return o
    removed = remove_image(rt, name, observed=observed)
    o = Outcome(name, "deleted" if removed else "skipped", reason=None if removed else "no row for this blob")
    log_outcome(o)
    return o


def parse_blob_subject(subject: str) -> tuple[str, str] | None:
    """``/blobServices/default/containers/<c>/blobs/<name>`` → (container, name)."""
    prefix = "/blobServices/default/containers/"
    if not subject.startswith(prefix) or "/blobs/" not in subject:
        return None
    container, _, name = subject[len(prefix) :].partition("/blobs/")
    return (container, name) if container and name else None


# --- reconcile -------------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    listed: int = 0
    to_index: int = 0
    to_remove: int = 0
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    kept: int = 0
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would index" if self.dry_run else "indexed"
        text = (
            f"{self.listed} blobs listed; {verb} {self.to_index if self.dry_run else self.indexed}, "
            f"{'would remove' if self.dry_run else 'removed'} {self.to_remove if self.dry_run else self.removed}"
        )
        if not self.dry_run:
            text += f", unchanged {self.unchanged}, failed permanently {self.failed}, errors {len(self.errors)}"
            if self.kept:
                text += f", kept {self.kept} uploaded during the run"
        return text


def reconcile(
    rt: Runtime,
    *,
    dry_run: bool = False,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> ReconcileReport:
    """Make the table equal the container: index blobs missing or changed, remove rows whose blob is gone.

    Changes are told by ETag, so a second run reads nothing. A row whose blob the listing did not show
    is removed only once Storage confirms the blob is gone (it may have been uploaded after the listing).
    Per-blob transient errors are collected (the rest go on) and reported; the caller decides to fail
    (timer, CLI exit code).
    """
    container = rt.settings.images_container
    # A blob counts as missing when it lacks the *active* model's vector; filling in a model being
    # built is `reembed`'s job (its own concurrency and progress), not the hourly timer's.
    active = rt.model.model_id
    blobs = {b.name: b for b in rt.blobs.list()}
    state = rt.store.catalogue.index_state(container, [active])
    report = ReconcileReport(listed=len(blobs), dry_run=dry_run)
    todo = []
    for name, blob in blobs.items():
        row = state.get(name)
        changed = row is None or row.etag != blob.etag
        if changed or (row is not None and row.status == "indexed" and active not in row.models):
            todo.append(name)
    gone = [name for name in state if name not in blobs]
    report.to_index, report.to_remove = len(todo), len(gone)
    if on_plan:
        on_plan(len(todo) + len(gone))
    if dry_run:
        return report

    def forget(name: str) -> str:
        observed = datetime.now(UTC)
        if rt.blobs.properties(name) is not None:
            return "kept"  # uploaded after the listing: its delivery (or the next run) indexes it
        return "removed" if remove_image(rt, name, observed=observed) else "kept"

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reconcile") as pool:
        futures: dict[Future[Any], tuple[str, str]] = {pool.submit(forget, name): (name, "remove") for name in gone}
        futures.update({pool.submit(ingest_blob, rt, name): (name, "index") for name in todo})
        for fut in as_completed(futures):
            name, _ = futures[fut]
            try:
                result = fut.result()
            except (TransientError, ProviderMisconfigured, ServiceRefused) as exc:
                report.errors.append(f"{name}: {exc.message}")
            except Exception as exc:  # one bad blob must not stop the others; it is reported
                log.exception("reconcile: unexpected error on %s", name)
                report.errors.append(f"{name}: unexpected {type(exc).__name__}: {exc}")
            else:
                outcome = result if isinstance(result, str) else result.outcome
                if outcome == "indexed":
                    report.indexed += 1
                elif outcome in ("unchanged", "superseded"):
                    report.unchanged += 1
                elif outcome == "failed":
                    report.failed += 1
                elif outcome in ("deleted", "removed"):
                    report.removed += 1
                elif outcome == "kept":
                    report.kept += 1
            if progress:
                progress(1)
    log.info("reconcile %s", report.summary())
    return report


class ReconcileIncomplete(TransientError):
    code = "ReconcileIncomplete"


def handle_reconcile_timer(timer: func.TimerRequest, rt: Runtime | None = None) -> ReconcileReport:
    """Timer trigger: reconcile; fail the invocation when blobs could not be processed, so it shows."""
    from .runtime import get_runtime

    rt = rt or get_runtime()
    if timer.past_due:
        log.warning("reconcile timer is past due")
    report = reconcile(rt)
    if report.errors:
        raise ReconcileIncomplete(f"reconcile left {len(report.errors)} blobs unprocessed: {report.errors[:5]}")
    return report


__all__ = ["ImageBlobs", "Outcome", "ReconcileReport", "handle_blob_event", "handle_blob_trigger", "ingest_bytes"]
