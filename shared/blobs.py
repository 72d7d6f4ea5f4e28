"""Blob Storage: the client for the images account, listing, bounded reads and time-limited read links."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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

from .errors import PermanentError, TransientError
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


def make_service_client(conn: StorageConnection, credential: Any | None = None) -> BlobServiceClient:
    """A client for the images account, from a connection string or a managed identity."""
    if conn.connection_string is not None:
        return BlobServiceClient.from_connection_string(conn.connection_string)
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=conn.client_id)
    assert conn.blob_service_uri is not None
    return BlobServiceClient(conn.blob_service_uri, credential=credential)


class ImageBlobs:
    """The images container: list, read with a size cap, upload, and sign read links."""

    def __init__(self, service: BlobServiceClient, container: str, thumbnails: str | None = None) -> None:
        self.service = service
        self.container_name = container
        self.container: ContainerClient = service.get_container_client(container)
        self.thumbnails_name = thumbnails
        self.thumbnails: ContainerClient | None = service.get_container_client(thumbnails) if thumbnails else None
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_expiry: datetime | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, credential: Any | None = None) -> ImageBlobs:
        return cls(
            make_service_client(settings.images_storage, credential),
            settings.images_container,
            settings.thumbnails_container,
        )

    def ensure_container(self) -> None:
        """Create the images (and thumbnails) containers if missing: private, no public access."""
        with _storage_errors("creating the containers"):
            for client in (self.container, self.thumbnails):
                if client is not None and not client.exists():
                    with contextlib.suppress(ResourceExistsError):
                        client.create_container()

    def put_thumbnail(self, name: str, preview: bytes) -> None:
        """Store the preview of an image (made by :func:`shared.thumbnails.make_thumbnail`)."""
        if self.thumbnails is None:
            return
        from azure.storage.blob import ContentSettings

        from .thumbnails import THUMBNAIL_CONTENT_TYPE

        with _storage_errors(f"storing the thumbnail of {name}"):
            self.thumbnails.upload_blob(
                name,
                preview,
                overwrite=True,
                content_settings=ContentSettings(
                    content_type=THUMBNAIL_CONTENT_TYPE, cache_control="private, max-age=3600"
                ),
            )

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
        """A read-only link to one blob that expires after ``minutes``: a service SAS signed with the
        account key when the connection has one (Azurite, connection strings), else a user delegation SAS
        signed with a key obtained through the managed identity."""
        now = now or datetime.now(UTC)
        start = now - timedelta(minutes=5)  # tolerate clock skew between us and Storage
        expiry = now + timedelta(minutes=minutes)
        container = self.thumbnails if thumbnail and self.thumbnails is not None else self.container
        blob = container.get_blob_client(name)
        container_name = str(container.container_name)
        account = str(self.service.account_name)
        key = getattr(self.service.credential, "account_key", None)
        if key:
            sas = generate_blob_sas(
                account,
                container_name,
                name,
                account_key=key,
                permission=BlobSasPermissions(read=True),
                expiry=expiry,
                start=start,
            )
        else:
            sas = generate_blob_sas(
                account,
                container_name,
                name,
                user_delegation_key=self._user_delegation_key(now, expiry),
                permission=BlobSasPermissions(read=True),
                expiry=expiry,
                start=start,
            )
        return f"{blob.url}?{sas}", expiry

    def _user_delegation_key(self, now: datetime, expiry: datetime) -> UserDelegationKey:
        # One key serves many links; fetch a new one when it would expire before the link does.
        with self._lock:
            if self._delegation_key is None or self._delegation_expiry is None or self._delegation_expiry < expiry:
                key_expiry = now + timedelta(hours=6)
                with _storage_errors("getting a user delegation key (needs Storage Blob Delegator)"):
                    self._delegation_key = self.service.get_user_delegation_key(now - timedelta(minutes=5), key_expiry)
                self._delegation_expiry = key_expiry
            assert self._delegation_key is not None
            return self._delegation_key


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """Map Azure SDK failures: network, throttling and 5xx are transient; the rest propagate."""
    try:
        yield
    except ResourceNotFoundError:
        raise
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageUnavailable(f"storage unreachable while {what}: {exc}") from exc
    except AzureError as exc:
        status = getattr(exc, "status_code", None)
        if status is None or status == 429 or status >= 500:
            raise StorageUnavailable(f"storage error while {what}: {exc}") from exc
        raise
