"""Ingestion: every uploaded image becomes searchable once, correctly, and nothing is lost.

- Idempotent under at-least-once delivery: the blob's advisory lock serialises concurrent
  deliveries, and bytes already embedded (same sha256, same model) are never sent to the service again.
- Permanent failures (not an image, too large, refused by the service) are recorded on the blob's row
  with their reason, and the invocation completes, so the host does not retry them forever.
- Transient failures (throttling, outages, database) propagate after the provider's bounded retries:
  the invocation fails, the host retries it and finally reports a poison blob.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .blobs import BlobGone, BlobInfo, ImageBlobs, normalize_etag
from .catalogue import Catalogue, ImageRecord
from .embeddings import EmbeddingProvider, Vector
from .errors import AppError, InvalidImage, PermanentError, ProviderMisconfigured, TransientError
from .images import MAX_BYTES, inspect_image
from .store import Store

if TYPE_CHECKING:
    import azure.functions as func

    from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one blob; logged as one structured line."""

    name: str
    outcome: str  # indexed | unchanged | failed | deleted | skipped
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
        fields["reason"] = o.reason
    level = logging.WARNING if o.outcome == "failed" else logging.INFO
    log.log(level, "ingest " + " ".join(f"{k}={v!r}" for k, v in fields.items()), extra={"custom_dimensions": fields})


ThumbnailWriter = Callable[[str, bytes], None]


def ingest_bytes(
    store: Store,
    providers: Mapping[str, EmbeddingProvider],
    container: str,
    name: str,
    data: bytes,
    info: BlobInfo | None = None,
    *,
    thumbnails: ThumbnailWriter | None = None,
) -> Outcome:
    """Index one blob's bytes under every model in ``providers``; see the module docstring for the rules.

    ``thumbnails(name, data)``, when given, stores a preview of new bytes; it runs beside the embedding
    call (so it costs no time when that call is slower), inside the blob's lock (so an older preview
    never overwrites a newer one). Its failure is logged and never fails the ingestion: search then
    links the original.
    """
    started = time.perf_counter()
    size = info.size if info is not None and info.size else len(data)
    sha = hashlib.sha256(data[: MAX_BYTES + 1]).digest()
    with store.catalogue.locked(container, name) as conn:
        outcome, extra, preview = _ingest_locked(conn, providers, container, name, data, sha, size, info, thumbnails)
    # Logged only now: the transaction has committed.
    result = Outcome(name, outcome, bytes=size, duration_ms=(time.perf_counter() - started) * 1000, **extra)
    if outcome == "indexed" and preview:
        try:
            store.catalogue.mark_thumbnail(container, name, sha)
        except TransientError as exc:
            log.warning("thumbnail of %s stored but not noted: %s", name, exc.message)
    log_outcome(result)
    return result


# Previews are made on these threads while the calling thread waits for the embedding service.
_PREVIEWS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="thumbnail")


def _preview_done(pending: Future[None] | None, name: str) -> bool:
    if pending is None:
        return False
    try:
        pending.result()
        return True
    except Exception as exc:  # a preview is a convenience: never lose the image over it
        log.warning("thumbnail for %s not stored: %s", name, exc)
        return False


def _ingest_locked(
    conn: Any,
    providers: Mapping[str, EmbeddingProvider],
    container: str,
    name: str,
    data: bytes,
    sha: bytes,
    size: int,
    info: BlobInfo | None,
    thumbnails: ThumbnailWriter | None = None,
) -> tuple[str, dict[str, Any], bool]:
    etag = info.etag if info else None
    modified = info.last_modified if info else None
    current = Catalogue.current(conn, container, name)
    have: set[str] = set()
    if current is not None and current.sha256 == sha:
        if current.status == "failed":
            # The same bytes failed permanently before: don't pay for the same refusal again.
            Catalogue.save_failure(
                conn,
                container,
                name,
                current.failure_code or "Failed",
                current.failure_reason or "",
                sha256=sha,
                byte_size=size,
                etag=etag,
                last_modified=modified,
            )
            return "failed", {"code": current.failure_code, "reason": current.failure_reason}, False
        have = Catalogue.vector_models(conn, container, name, sha)
        if set(providers) <= have:
            changed = (etag, modified) != (current.etag, current.last_modified)
            if changed or (info is not None and info.metadata != current.metadata):
                kept = (current.content_type or "", current.width or 0, current.height or 0)
                Catalogue.save_indexed(conn, _record(container, name, sha, kept, info, current.byte_size), {})
            return "unchanged", {}, False

    try:
        if size > MAX_BYTES or len(data) > MAX_BYTES:
            raise InvalidImage(
                f"the file is {size:,} bytes; the embedding service takes at most {MAX_BYTES:,}", code="TooLarge"
            )
        image = inspect_image(data)
        pending = _PREVIEWS.submit(thumbnails, name, data) if thumbnails is not None else None
        try:
            vectors: dict[str, Vector] = {
                model_id: provider.embed_image(data) for model_id, provider in providers.items() if model_id not in have
            }
        finally:
            preview = _preview_done(pending, name)
    except ProviderMisconfigured:
        raise  # the service refused *us*, not the image: fail loudly so the host retries
    except PermanentError as exc:
        Catalogue.save_failure(
            conn,
            container,
            name,
            exc.code,
            exc.message,
            sha256=sha,
            byte_size=size,
            etag=etag,
            last_modified=modified,
        )
        return "failed", {"code": exc.code, "reason": exc.message}, False
    shape = (image.content_type, image.width, image.height)
    Catalogue.save_indexed(conn, _record(container, name, sha, shape, info, size), vectors)
    return "indexed", {"embedded": bool(vectors)}, preview


def _record(
    container: str, name: str, sha: bytes, image: tuple[str, int, int], info: BlobInfo | None, size: int | None = None
) -> ImageRecord:
    content_type, width, height = image
    return ImageRecord(
        container=container,
        name=name,
        sha256=sha,
        content_type=content_type,
        width=width,
        height=height,
        byte_size=size if size is not None else (info.size if info else 0),
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


def trigger_info(blob: func.InputStream, name: str) -> BlobInfo:
    # Properties and metadata come from the host's trigger metadata (absent in some hosts/tests).
    props: dict[str, Any] = dict(getattr(blob, "blob_properties", None) or {})
    metadata = {str(k): str(v) for k, v in dict(getattr(blob, "metadata", None) or {}).items()}
    modified = props.get("LastModified")
    return BlobInfo(
        name=name,
        size=int(blob.length or props.get("ContentLength") or props.get("Length") or 0),
        etag=normalize_etag(props.get("ETag") or props.get("Etag")),
        last_modified=_parse_time(modified),
        content_type=props.get("ContentType"),
        metadata=metadata,
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            return parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None


def handle_blob_trigger(blob: func.InputStream, rt: Runtime | None = None) -> Outcome:
    """The blob trigger: read at most 20 MB + 1 byte, then :func:`ingest_bytes`."""
    from .runtime import get_runtime

    rt = rt or get_runtime()
    container = rt.settings.images_container
    name = blob_name(blob.name, container)
    info = trigger_info(blob, name)
    # The host has the blob already; never copy more than the cap into our own buffers.
    data = blob.read(MAX_BYTES + 1)
    if not info.size:
        info = BlobInfo(info.name, len(data), info.etag, info.last_modified, info.content_type, info.metadata)
    return ingest_bytes(rt.store, providers_of(rt), container, name, data, info, thumbnails=rt.blobs.thumbnail_writer())


def ingest_blob(rt: Runtime, name: str) -> Outcome:
    """Read a blob from storage (with the size cap) and ingest it; used by reconcile and tests."""
    try:
        data, info = rt.blobs.read(name, MAX_BYTES)
    except BlobGone:
        remove_image(rt, name)
        o = Outcome(name, "deleted", reason="blob no longer exists")
        log_outcome(o)
        return o
    return ingest_bytes(
        rt.store,
        providers_of(rt),
        rt.settings.images_container,
        name,
        data,
        info,
        thumbnails=rt.blobs.thumbnail_writer(),
    )


def remove_image(rt: Runtime, name: str) -> bool:
    """Remove a blob's row, vectors and thumbnail; True when there was a row."""
    removed = rt.store.catalogue.delete_image(rt.settings.images_container, name)
    try:
        rt.blobs.delete_thumbnail(name)
    except TransientError as exc:
        log.warning("thumbnail of %s not deleted: %s", name, exc.message)
    return removed


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
    if rt.blobs.properties(name) is not None:
        o = Outcome(name, "skipped", reason="blob exists again (re-uploaded after the delete)")
        log_outcome(o)
        return o
    removed = remove_image(rt, name)
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

    Changes are told by ETag, so a second run reads nothing. Per-blob transient errors are collected
    (the rest go on) and reported; the caller decides to fail (timer, CLI exit code).
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

    for name in gone:
        try:
            if remove_image(rt, name):
                report.removed += 1
        except AppError as exc:
            report.errors.append(f"{name}: {exc.message}")
        if progress:
            progress(1)

    def one(name: str) -> Outcome:
        return ingest_blob(rt, name)

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reconcile") as pool:
        futures = {pool.submit(one, name): name for name in todo}
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                o = fut.result()
            except (TransientError, ProviderMisconfigured) as exc:
                report.errors.append(f"{name}: {exc.message}")
            except Exception as exc:  # one bad blob must not stop the others; it is reported
                log.exception("reconcile: unexpected error on %s", name)
                report.errors.append(f"{name}: unexpected {type(exc).__name__}: {exc}")
            else:
                if o.outcome == "indexed":
                    report.indexed += 1
                elif o.outcome == "unchanged":
                    report.unchanged += 1
                elif o.outcome == "failed":
                    report.failed += 1
                elif o.outcome == "deleted":
                    report.removed += 1
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
