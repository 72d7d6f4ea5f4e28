"""Settings: one name each, read from the environment once, validated when first needed.

App settings in Azure, ``Values`` in local.settings.json and environment variables for the CLI all
arrive as environment variables. A missing or malformed setting raises :class:`SettingError`
naming it, the first time it is used, so a Function App with no database configured can still
answer its health check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Final
from urllib.parse import unquote, urlparse

from .errors import SettingError

BLOB_SOURCES: Final = ("LogsAndContainerScan", "EventGrid")
PROVIDERS: Final = ("azure-vision", "clip")
DATABASE_AUTH_MODES: Final = ("password", "entra")

# Every setting the code reads, with its default (None: no default). infra/ must set each one that
# has no default in Azure, and local.settings.json.example lists them all.
DEFAULTS: Final[dict[str, str | None]] = {
    "ImagesStorage": None,
    "IMAGES_CONTAINER": "images",
    "THUMBNAILS_CONTAINER": "thumbnails",
    "BLOB_TRIGGER_SOURCE": "LogsAndContainerScan",
    "EMBEDDING_PROVIDER": "azure-vision",
    "VISION_ENDPOINT": None,
    "VISION_KEY": None,
    "VISION_API_VERSION": "2024-02-01",
    "VISION_MODEL_VERSION": "2023-04-15",
    "VISION_TIMEOUT_SECONDS": "30",
    "VISION_MAX_RETRY_SECONDS": "60",
    # This worker's share of the Vision resource's calls per second; 0: no client-side limit.
    "VISION_MAX_REQUESTS_PER_SECOND": "0",
    "CLIP_MODEL_PATH": None,
    "CLIP_MODEL_NAME": "ViT-B-32",
    "CLIP_THREADS": "0",
    "DATABASE_URL": None,
    "DATABASE_AUTH": "password",
    "DATABASE_POOL_MAX": "10",
    "HNSW_PRECISION": "halfvec",
    "HNSW_M": "32",
    "HNSW_EF_CONSTRUCTION": "128",
    "HNSW_EF_SEARCH": "auto",
    "READ_LINK_MINUTES": "15",
    "RECONCILE_SCHEDULE": "0 0 * * * *",
}
SETTING_NAMES: Final = tuple(DEFAULTS)


@dataclass(frozen=True)
class StorageConnection:
    """How to reach the images storage account: a connection string, or an identity and a URL."""

    connection_string: str | None = None
    blob_service_uri: str | None = None
    client_id: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


class Settings:
    """Typed view of the environment. Each property validates its setting on first access."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env: Mapping[str, str] = dict(os.environ if environ is None else environ)

    def with_overrides(self, values: Mapping[str, str]) -> Settings:
        """The same settings with some replaced (e.g. the identity of another embedding model)."""
        return Settings({**self._env, **values})

    def raw(self, name: str) -> str | None:
        """The setting's value with surrounding blanks removed, or its default; None when unset."""
        value = self._env.get(name)
        if value is not None and value.strip():
            return value.strip()
        return DEFAULTS.get(name)

    def _required(self, name: str, hint: str) -> str:
        value = self.raw(name)
        if value is None:
            raise SettingError(name, f"is not set: {hint}")
        return value

    def _choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self._required(name, f"use one of {', '.join(choices)}")
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise SettingError(name, f"is {value!r}: use one of {', '.join(choices)}")

    def _int(self, name: str, low: int, high: int, *, hint: str | None = None) -> int:
        hint = hint or f"give a whole number from {low} to {high}"
        value = self._required(name, hint)
        try:
            number = int(value)
        except ValueError:
            raise SettingError(name, f"is {value!r}: {hint}") from None
        if not low <= number <= high:
            raise SettingError(name, f"is {number}: {hint}")
        return number

    # --- storage -------------------------------------------------------------------------------
    @cached_property
    def images_storage(self) -> StorageConnection:
        conn = self.raw("ImagesStorage")
        if conn is not None:
            if "=" not in conn:
                raise SettingError(
                    "ImagesStorage",
                    "is not a storage connection string (expected 'UseDevelopmentStorage=true' or "
                    "'DefaultEndpointsProtocol=...;AccountName=...'); for a managed identity set "
                    "ImagesStorage__blobServiceUri or ImagesStorage__accountName instead",
                )
            return StorageConnection(connection_string=conn)
        uri = self.raw("ImagesStorage__blobServiceUri") or self.raw("ImagesStorage__serviceUri")
        account = self.raw("ImagesStorage__accountName")
        if uri is None and account is not None:
            uri = f"https://{account}.blob.core.windows.net"
        if uri is None:
            raise SettingError(
                "ImagesStorage",
                "is not set: give a connection string (locally 'UseDevelopmentStorage=true'), or "
                "ImagesStorage__blobServiceUri / ImagesStorage__accountName for a managed identity",
            )
        _check_url("ImagesStorage__blobServiceUri", uri)
        return StorageConnection(blob_service_uri=uri.rstrip("/"), client_id=self.raw("ImagesStorage__clientId"))

    @cached_property
    def images_container(self) -> str:
        return self._container("IMAGES_CONTAINER", "name the blob container that holds the images")

    @cached_property
    def thumbnails_container(self) -> str:
        name = self._container("THUMBNAILS_CONTAINER", "name the blob container for thumbnails")
        if name == self.images_container:
            raise SettingError(
                "THUMBNAILS_CONTAINER", "must differ from IMAGES_CONTAINER (thumbnails would be indexed)"
            )
        return name

    def _container(self, setting: str, hint: str) -> str:
        name = self._required(setting, hint)
        # Blob container naming rules: 3-63 chars, lowercase letters, digits and single hyphens.
        ok = 3 <= len(name) <= 63 and name[0].isalnum() and name[-1].isalnum() and "--" not in name
        if not ok or any(not (c.islower() or c.isdigit() or c == "-") for c in name):
            raise SettingError(setting, f"is {name!r}: a container name is 3-63 lowercase letters, digits and hyphens")
        return name

    @cached_property
    def blob_trigger_source(self) -> str:
        return self._choice("BLOB_TRIGGER_SOURCE", BLOB_SOURCES)

    # --- embeddings ----------------------------------------------------------------------------
    @cached_property
    def embedding_provider(self) -> str:
        return self._choice("EMBEDDING_PROVIDER", PROVIDERS)

    @cached_property
    def vision_endpoint(self) -> str:
        value = self._required(
            "VISION_ENDPOINT", "give your Azure AI Vision endpoint, e.g. https://<name>.cognitiveservices.azure.com/"
        )
        _check_url("VISION_ENDPOINT", value)
        return value.rstrip("/") + "/"

    @cached_property
    def vision_key(self) -> str | None:
        return self.raw("VISION_KEY")

    @cached_property
    def vision_api_version(self) -> str:
        return self._required("VISION_API_VERSION", "e.g. 2024-02-01")

    @cached_property
    def vision_model_version(self) -> str:
        value = self._required("VISION_MODEL_VERSION", "e.g. 2023-04-15")
        if value.lower() == "latest":
            raise SettingError(
                "VISION_MODEL_VERSION",
                "is 'latest': pin a model version such as 2023-04-15, because vectors of different "
                "model versions must never be compared",
            )
        return value

    @cached_property
    def vision_timeout_seconds(self) -> int:
        return self._int("VISION_TIMEOUT_SECONDS", 1, 600)

    @cached_property
    def vision_max_retry_seconds(self) -> int:
        return self._int("VISION_MAX_RETRY_SECONDS", 0, 3600)

    @cached_property
    def vision_max_requests_per_second(self) -> float:
        """This worker's share of the Vision resource's rate limit (S1: 20/s, F0: 0.33/s); 0: unlimited."""
        name, hint = "VISION_MAX_REQUESTS_PER_SECOND", "give calls per second, e.g. 20 (0 for no limit)"
        value = self._required(name, hint)
        try:
            rate = float(value)
        except ValueError:
            raise SettingError(name, f"is {value!r}: {hint}") from None
        if not (0 <= rate <= 10_000):  # also refuses nan and inf
            raise SettingError(name, f"is {value!r}: {hint}")
        return rate

    @cached_property
    def clip_model_path(self) -> str:
        return self._required(
            "CLIP_MODEL_PATH",
            "give the folder that holds the local CLIP model (vision/ and text/); docs/local-provider.md "
            "says how to download it",
        )

    @cached_property
    def clip_model_name(self) -> str:
        # Part of every stored vector's model id: a new name for new weights keeps their vectors apart.
        name = self._required("CLIP_MODEL_NAME", "name the local CLIP model, e.g. ViT-B-32")
        if len(name) > 64 or not all(c.isascii() and (c.isalnum() or c in "._+-/@") for c in name):
            raise SettingError(
                "CLIP_MODEL_NAME", f"is {name!r}: use up to 64 letters, digits and . _ + - / @, e.g. ViT-B-32"
            )
        return name

    @cached_property
    def clip_threads(self) -> int:
        # 0: ONNX Runtime's default, one thread per physical core.
        return self._int("CLIP_THREADS", 0, 256)

    # --- database ------------------------------------------------------------------------------
    @cached_property
    def database_url(self) -> str:
        value = self._required(
            "DATABASE_URL",
            "give a libpq URI such as postgresql://user@host:5432/dbname?sslmode=verify-full&sslrootcert=system",
        )
        try:
            from psycopg.conninfo import conninfo_to_dict

            conninfo_to_dict(value)
        except Exception as exc:  # psycopg raises ProgrammingError for a malformed conninfo
            reason = " ".join(str(exc).split())  # one line, whatever psycopg's message looks like
            # libpq quotes a malformed URI whole, password included; this message reaches logs and /api/health.
            reason = _without_passwords(reason, value)
            raise SettingError("DATABASE_URL", f"is not a valid libpq URI or conninfo string ({reason})") from None
        return value

    @cached_property
    def database_auth(self) -> str:
        return self._choice("DATABASE_AUTH", DATABASE_AUTH_MODES)

    @cached_property
    def database_pool_max(self) -> int:
        return self._int("DATABASE_POOL_MAX", 1, 200)

    @cached_property
    def hnsw_precision(self) -> str:
        """Element type of new HNSW indexes: ``halfvec`` (half the size, same recall) or ``vector``."""
        return self._choice("HNSW_PRECISION", ("halfvec", "vector"))

    @cached_property
    def hnsw_m(self) -> int:
        return self._int("HNSW_M", 2, 100)

    @cached_property
    def hnsw_ef_construction(self) -> int:
        return self._int("HNSW_EF_CONSTRUCTION", 4, 1000)

    @cached_property
    def hnsw_ef_search(self) -> int | None:
        """hnsw.ef_search for searches: a number, or ``auto`` (None here), which grows with the collection
        (``shared.vectorsearch.auto_ef_search``). Either way raised for a large k."""
        hint = "give auto or a whole number from 1 to 1000"
        if self._required("HNSW_EF_SEARCH", hint).lower() == "auto":
            return None
        return self._int("HNSW_EF_SEARCH", 1, 1000, hint=hint)

    # --- search --------------------------------------------------------------------------------
    @cached_property
    def read_link_minutes(self) -> int:
        return self._int("READ_LINK_MINUTES", 1, 24 * 60)


_URI_USERINFO: Final = re.compile(r"://(.*)@", re.DOTALL)
_CONNINFO_PASSWORD: Final = re.compile(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'?|(\S+))", re.IGNORECASE)


def _without_passwords(text: str, conninfo: str) -> str:
    """``text`` with every password written in ``conninfo`` (URI userinfo or ``password=``) masked."""
    secrets = [m.group(1).partition(":")[2] for m in _URI_USERINFO.finditer(conninfo)]
    secrets += [m.group(1) or m.group(2) or "" for m in _CONNINFO_PASSWORD.finditer(conninfo)]
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def _check_url(name: str, value: str) -> None:
    parsed = urlparse(value)
    local = parsed.hostname in ("localhost", "127.0.0.1", "::1")
    if parsed.scheme not in ("https", "http") or not parsed.hostname or (parsed.scheme == "http" and not local):
        raise SettingError(name, f"is {value!r}: give an https:// URL")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
