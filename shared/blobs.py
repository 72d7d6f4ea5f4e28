"""Blob Storage: the client for the images account, listing, bounded reads and time-limited read links."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, unquote, urlparse

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    UserDelegationKey,
    generate_blob_sas,
)

from .errors import AccessDenied, PermanentError, ResourceMissing, ServiceRefused, TransientError
from .settings import Settings, StorageConnection


class BlobGone(PermanentError):
    """The blob no longer exists (deleted between the event and the read)."""

    code = "BlobGone"


class StorageUnavailable(TransientError):
    code = "StorageUnavailable"


@dataclass(frozen=True)
class BlobInfo:
    """What a listing says about one blob: enough to tell whether it changed."""

    name: str
    size: int
    etag: str | None
    last_modified: datetime | None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def normalize_etag(etag: str | None) -> str | None:
    """ETags in one form, quoted as in HTTP headers: listings return them bare, properties quoted."""
    if not etag:
        return None
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def make_service_client(
    conn: StorageConnection, credential: Any | None = None, profile: str = "ingest"
) -> BlobServiceClient:
    """A client for the images account, from a connection string or a managed identity, that retries and
    times out as its caller can afford: ``profile`` is one of :data:`STORAGE_PROFILES`."""
    options = STORAGE_PROFILES[profile].client_options()
    if conn.connection_string is not None:
        return BlobServiceClient.from_connection_string(conn.connection_string, **options)
    assert conn.blob_service_uri is not None
    return BlobServiceClient(conn.blob_service_uri, credential=credential or _identity(conn), **options)


class ImageBlobs:
    """The images container: list, read with a size cap, upload, and sign read links."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        thumbnails: str | None = None,
        *,
        links_service: BlobServiceClient | None = None,
    ) -> None:
        self.service = service
        # Read links are signed while a search waits: their one network call (a user delegation key, with a
        # managed identity) goes through a client that gives up within a second or two.
        self.links_service = links_service or service
        self.container_name = container
        self.container: ContainerClient = service.get_container_client(container)
        self.thumbnails_name = thumbnails
        self.thumbnails: ContainerClient | None = service.get_container_client(thumbnails) if thumbnails else None
        # Where read links point: each container's URL as the SDK writes a blob's (scheme, host, the
        # container's name quoted), without a query. With a BlobClient built per link only for its url, a
        # link took 98 us p50, without 28 (2 cores), and a search signs one or two links per result.
        # By thumbnail or not: the container's name and that URL (no thumbnails container: the image's).
        images = (container, _url_without_query(self.container.url))
        thumbs = (
            (thumbnails, _url_without_query(self.thumbnails.url))
            if thumbnails and self.thumbnails is not None
            else images
        )
        self._link_targets: dict[bool, tuple[str, str]] = {False: images, True: thumbs}
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_expiry: datetime | None = None
        self._lock = threading.Lock()
        self._signed = functools.lru_cache(maxsize=LINK_CACHE_ENTRIES)(self._sign)

    @classmethod
    def from_settings(cls, settings: Settings, credential: Any | None = None, *, profile: str = "ingest") -> ImageBlobs:
        """The images account as ``settings`` name it; ``profile`` (see :data:`STORAGE_PROFILES`) sets how long
        its calls may wait: ``ingest`` for the triggers, ``cli`` for commands. Read links always use ``links``."""
        conn = settings.images_storage
        if conn.uses_identity and credential is None:
            credential = _identity(conn)  # one credential (and token cache) for both clients
        return cls(
            make_service_client(conn, credential, profile),
            settings.images_container,
            settings.thumbnails_container,
            links_service=make_service_client(conn, credential, "links"),
        )

    def ensure_container(self, *, images: bool = True) -> list[str]:
        """Create the images (unless ``images`` is False) and thumbnails containers if missing: private, no
        public access. Returns the names of those it created."""
        created: list[str] = []
        with _storage_errors("creating the containers"):
            for client in (self.container if images else None, self.thumbnails):
                if client is not None and not client.exists():
                    with contextlib.suppress(ResourceExistsError):
                        client.create_container()
                        created.append(str(client.container_name))
        return created

    def put_thumbnail(self, name: str, preview: bytes) -> None:
        """Store the preview of an image (made by :func:`shared.thumbnails.make_thumbnail`)."""
        if self.thumbnails is None:
            return
        from azure.storage.blob import ContentSettings

        from .thumbnails import THUMBNAIL_CONTENT_TYPE

        thumbnails = self.thumbnails

        def store() -> None:
            with _storage_errors(f"storing the thumbnail of {name}"):
                thumbnails.upload_blob(
                    name,
                    preview,
                    overwrite=True,
                    content_settings=ContentSettings(
                        content_type=THUMBNAIL_CONTENT_TYPE, cache_control="private, max-age=3600"
                    ),
                )

        try:
            store()
        except ResourceMissing as exc:
            if exc.code != "ContainerNotFound":
                raise
            # Created on first use: images uploaded into a container made by hand (Storage Explorer, the
            # SDK) must still get previews. It is private, and its name is a checked setting.
            self.ensure_container(images=False)
            store()

    def delete_thumbnail(self, name: str) -> None:
        if self.thumbnails is not None:
            with _storage_errors(f"deleting the thumbnail of {name}"), contextlib.suppress(ResourceNotFoundError):
                self.thumbnails.delete_blob(name)

    def list(self) -> Iterator[BlobInfo]:
        with _storage_errors("listing the container"):
            for b in self.container.list_blobs(include=["metadata"]):
                yield BlobInfo(
                    name=b.name,
                    size=int(b.size or 0),
                    etag=normalize_etag(b.etag),
                    last_modified=b.last_modified,
                    content_type=b.content_settings.content_type if b.content_settings else None,
                    metadata=dict(b.metadata or {}),
                )

    def properties(self, name: str) -> BlobInfo | None:
        with _storage_errors(f"reading the properties of {name}"):
            try:
                p = self.container.get_blob_client(name).get_blob_properties()
            except ResourceNotFoundError:
                return None
        return BlobInfo(
            name=name,
            size=int(p.size or 0),
            etag=normalize_etag(p.etag),
            last_modified=p.last_modified,
            content_type=p.content_settings.content_type if p.content_settings else None,
            metadata=dict(p.metadata or {}),
        )

    def read(self, name: str, limit: int) -> tuple[bytes, BlobInfo]:
        """The blob's bytes and properties, never more than ``limit`` bytes of it.

        The properties come first: a blob larger than ``limit`` is answered with no bytes at all (its
        ``info.size`` says why), so a 2 GB file dropped into the container by mistake costs one HEAD.
        Otherwise one ranged read, on condition that the blob is still the version those properties
        describe (the bytes and the ETag always belong together); a blob replaced in between is read again.
        """
        for _ in range(3):
            info = self.properties(name)
            if info is None:
                raise BlobGone(f"blob {name} no longer exists")
            if info.size > limit:
                return b"", info
            if info.size == 0:
                return b"", info  # Storage refuses any range of an empty blob (416)
            with _storage_errors(f"reading {name}"):
                try:
                    downloader = self.container.get_blob_client(name).download_blob(
                        offset=0, length=info.size, etag=info.etag, match_condition=MatchConditions.IfNotModified
                    )
                    return downloader.readall(), info
                except ResourceNotFoundError:
                    raise BlobGone(f"blob {name} no longer exists") from None
                except ResourceModifiedError:
                    continue  # replaced between the HEAD and the read: read the new version
        raise StorageUnavailable(f"blob {name} kept changing while it was read; try again")

    def upload(self, name: str, data: bytes, content_type: str, *, overwrite: bool = True) -> None:
        from azure.storage.blob import ContentSettings

        with _storage_errors(f"uploading {name}"):
            self.container.upload_blob(
                name, data, overwrite=overwrite, content_settings=ContentSettings(content_type=content_type)
            )

    def delete(self, name: str) -> None:
        with _storage_errors(f"deleting {name}"), contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(name)

    def read_link(
        self, name: str, minutes: int, *, now: datetime | None = None, thumbnail: bool = False
    ) -> tuple[str, datetime]:
        """A read-only link to one blob (or its thumbnail) and when it expires: a service SAS signed with
        the account key when the connection has one (Azurite, connection strings), else a user delegation
        SAS signed with a key obtained through the managed identity.

        A link lives ``minutes`` at most and four fifths of that at least: every link to a blob asked for
        within one window (a fifth of its lifetime: 3 minutes of 15) is the same link, expiring the
        lifetime after the window opened. So a browser that showed an image keeps it in its cache when a
        later answer names it again (paging back, a refined query), and a search signs each link once per
        window instead of once per answer (100,000 vectors, 2 cores: ten links signed anew added 0.33 ms
        to a 0.77 ms p50 search, the same ten signed before 0.05 ms)."""
        now = now or datetime.now(UTC)
        window = max(1, minutes * 60 // LINK_WINDOWS)
        opened = int(now.timestamp()) // window * window
        return self._signed(name, thumbnail, opened, minutes), _at(opened + minutes * 60)

    def forget_links(self) -> None:
        """Sign every link anew from now on (benchmarks: each answer's links as if none was signed before)."""
        self._signed.cache_clear()

    def _sign(self, name: str, thumbnail: bool, opened: int, minutes: int) -> str:
        """The link to ``name`` for the window that opened at ``opened`` (seconds since the epoch)."""
        start = _at(opened - 5 * 60)  # tolerate clock skew between us and Storage
        expiry = _at(opened + minutes * 60)
        container_name, base = self._link_targets[thumbnail]
        account = str(self.service.account_name)
        key = getattr(self.service.credential, "account_key", None)
        if key:
            sas = generate_blob_sas(
                account, container_name, name, account_key=key, permission=_READ, expiry=expiry, start=start
            )
        else:
            sas = generate_blob_sas(
                account,
                container_name,
                name,
                user_delegation_key=self._user_delegation_key(_at(opened), expiry),
                permission=_READ,
                expiry=expiry,
                start=start,
            )
        # The blob's URL as BlobClient.url writes it (the test compares the two for awkward names).
        return f"{base}/{quote(name, safe='~/')}?{sas}"

    def _user_delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        # One key serves many links; fetch a new one when it would expire before the link does.
        with self._lock:
            if self._delegation_key is None or self._delegation_expiry is None or self._delegation_expiry < expiry:
                # 6 hours longer than the link: it serves the links of the next 6 hours, and never ends a
                # link early (READ_LINK_MINUTES may be a day; Storage gives keys of up to 7 days).
                key_expiry = expiry + timedelta(hours=6)
                with _storage_errors("getting a user delegation key (needs Storage Blob Delegator)"):
                    self._delegation_key = self.links_service.get_user_delegation_key(
                        now - timedelta(minutes=5), key_expiry
                    )
                self._delegation_expiry = key_expiry
            assert self._delegation_key is not None
            return self._delegation_key


_READ: Final = BlobSasPermissions(read=True)
# A read link is reused within windows of 1 / LINK_WINDOWS of its lifetime (see ImageBlobs.read_link);
# the links remembered, least recently used forgotten first (a search answer has up to 200).
LINK_WINDOWS: Final = 5
LINK_CACHE_ENTRIES: Final = 4096


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _url_without_query(url: str) -> str:
    return url.split("?", 1)[0]


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """Map Azure SDK failures to the project's errors, each with one line that says what to do next.

    Network failures, throttling and 5xx are transient (:class:`StorageUnavailable`); not found is
    :class:`ResourceMissing` (a blob that is gone is caught inside the block, where it is expected);
    401/403 is :class:`AccessDenied`; other 4xx are :class:`ServiceRefused`. 304, 409 and 412 propagate
    as the SDK raises them: they are answers a caller acts on (not modified, exists, changed).
    """
    try:
        yield
    except ResourceNotFoundError as exc:
        raise ResourceMissing(_missing(exc, what), code=_error_code(exc) or "ResourceNotFound") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageUnavailable(
            f"storage unreachable while {what}: {_first_line(exc)} — check that the endpoint in ImagesStorage is "
            "right and up (locally, `make run` starts Azurite)"
        ) from exc
    except AzureError as exc:
        status = getattr(exc, "status_code", None)
        if status is None or status == 429 or status >= 500:
            raise StorageUnavailable(f"storage error while {what}: {_first_line(exc)}") from exc
        if status < 400 or status in (409, 412):
            raise
        code = _error_code(exc) or str(status)
        account, _ = _location(exc)
        if status in (401, 403):
            raise AccessDenied(
                f"storage account '{account}' refused {what} ({status} {code}): {_access_hint(exc)}", code=code
            ) from exc
        raise ServiceRefused(f"storage account '{account}' refused {what} ({status} {code})", code=code) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _error_code(exc: AzureError) -> str | None:
    """Storage's error code (``ContainerNotFound``, ``AuthenticationFailed``, …); the SDK gives an enum or a str."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code)) if code else None


def _location(exc: AzureError) -> tuple[str, str | None]:
    """(account, container) of the failed request, from its URL: ``https://<account>.blob…/<container>/…``,
    or path-style ``http://127.0.0.1:10000/<account>/<container>/…`` for Azurite."""
    response = getattr(exc, "response", None)
    url = str(response.request.url) if response is not None and response.request is not None else ""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    parts = [unquote(p) for p in parsed.path.split("/") if p]
    path_style = "." not in host or host.replace(".", "").isdigit() or ":" in host
    if path_style:
        account = parts[0] if parts else host or "?"
        parts = parts[1:]
    else:
        account = host.split(".")[0]
    return account, (parts[0] if parts else None)


def _missing(exc: ResourceNotFoundError, what: str) -> str:
    account, container = _location(exc)
    code = _error_code(exc)
    if code == "ContainerNotFound" and container:
        return (
            f"container '{container}' does not exist in storage account '{account}' ({what}): check the name in "
            "IMAGES_CONTAINER (or THUMBNAILS_CONTAINER), or create it (`make run` and `python -m shared.cli "
            "upload` do)"
        )
    return f"not found in storage account '{account}' while {what} ({code or 404})"


def _access_hint(exc: AzureError) -> str:
    """What to fix, by how the refused request was signed (never showing the key, token or signature)."""
    response = getattr(exc, "response", None)
    request = response.request if response is not None else None
    auth = str(request.headers.get("Authorization", "")) if request is not None else ""
    if auth.startswith("Bearer"):
        return (
            "give this app's identity a Storage Blob Data role on the account (Contributor to upload; new role "
            "assignments take a few minutes)"
        )
    if request is not None and "sig=" in str(request.url):
        return "the SAS in ImagesStorage is wrong, expired or lacks a permission"
    return "check the account name and account key in ImagesStorage (and the account's network rules)"


# --- how long each caller waits for Storage ----------------------------------------------------------


@dataclass(frozen=True)
class StorageProfile:
    """Retries and timeouts for one kind of caller, given to the SDK's own ExponentialRetry policy and transport.

    The SDK waits ``initial_backoff + increment_base ** n`` seconds (± ``jitter``) before retry n (1, 2, …).
    Its defaults (3 retries after 15 + 3, 15 + 9, 15 + 27 s; 20 s to connect) made a command with Storage
    unreachable take ~85 s to say so. (azure-core's ``retry_backoff_factor`` does not apply: Storage clients
    bring their own retry policy.)
    """

    retry_total: int
    initial_backoff: float
    increment_base: float
    jitter: float
    connection_timeout: float  # seconds to open a connection
    read_timeout: float  # seconds to wait for each read from the socket

    def client_options(self) -> dict[str, Any]:
        return {
            "retry_total": self.retry_total,
            "initial_backoff": self.initial_backoff,
            "increment_base": self.increment_base,
            "random_jitter_range": self.jitter,
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
        }


STORAGE_PROFILES: Final[dict[str, StorageProfile]] = {
    # Blob trigger, Event Grid deletes, the reconcile timer: nobody waits on them, and the host retries a
    # failed invocation anyway; ride out a short blip (waits ~3, 5, 9 s), then fail so the host takes over.
    "ingest": StorageProfile(
        retry_total=3, initial_backoff=1, increment_base=2, jitter=1, connection_timeout=10, read_timeout=60
    ),
    # Commands: someone is watching; one line within seconds (waits ~1.5, 1.5 s) beats a minute of silence.
    "cli": StorageProfile(
        retry_total=2, initial_backoff=0.5, increment_base=1, jitter=0.5, connection_timeout=5, read_timeout=30
    ),
    # Read links for a search answer (a user delegation key): one quick retry, then the search answers 503.
    "links": StorageProfile(
        retry_total=1, initial_backoff=0, increment_base=0.5, jitter=0.25, connection_timeout=2, read_timeout=5
    ),
}


def _identity(conn: StorageConnection) -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=conn.client_id)
