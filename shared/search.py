"""The search pipeline: a text, an image or an indexed image's id → a vector → the nearest images.

Used by the HTTP handlers (shared/api.py) and the CLI alike. Input is validated here, in terms of
the product (k, filters, cursor, text, image), so both front ends refuse the same things with the
same messages; the front ends only turn requests or arguments into calls.

Paging is keyset paging on (distance, id): a cursor holds the last result's distance and id, so the
next page is every matching row after it in that order. Ties in score cannot make a row appear
twice or be skipped. The cursor also holds a fingerprint of the query (model, what was searched,
filters), so it is refused when replayed on another query. Page size may change between pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as day_time
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from .catalogue import StoredImage
from .embeddings import EmbeddingProvider, Vector
from .errors import (
    InvalidImage,
    InvalidInput,
    PermanentError,
    ProviderRejected,
    ProviderResponseError,
)
from .images import MAX_BYTES, ImageInfo, inspect_image
from .registry import Model
from .store import Store
from .vectorsearch import After, SearchFilters

if TYPE_CHECKING:
    from .blobs import ImageBlobs
    from .runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_K: Final = 10
MAX_K: Final = 100
MAX_TEXT_WORDS: Final = 70
# The service counts words, not characters; this only keeps absurd inputs (one 1 MB "word") out.
MAX_TEXT_CHARS: Final = 2_000
MAX_IMAGE_BYTES: Final = MAX_BYTES  # 20,971,520: the service's limit
MAX_PREFIX_CHARS: Final = 1_024  # a blob name's maximum length
MAX_CONTENT_TYPES: Final = 20
MAX_CURSOR_CHARS: Final = 512
MAX_IMAGE_ID: Final = 2**63 - 1
CACHE_TTL_SECONDS: Final = 600.0
CACHE_MAX_ENTRIES: Final = 1_024

# Names of the options every kind of query takes (query string, JSON body, CLI flags).
OPTION_NAMES: Final = ("k", "prefix", "content_type", "uploaded_after", "uploaded_before", "min_score", "cursor")

_DIGITS: Final = re.compile(r"[0-9]{1,20}")
_DECIMAL: Final = re.compile(r"[+-]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?")
# RFC 6838 type/subtype names.
_MEDIA_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_CURSOR: Final = re.compile(r"[A-Za-z0-9_-]+")
_HEX_DIGITS: Final = frozenset("0123456789abcdef")  # what fingerprint() gives, 16 of them
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# --- errors --------------------------------------------------------------------------------------
class InvalidParameter(InvalidInput):
    """A query parameter (or JSON field, or CLI option) is malformed or out of range."""

    code = "InvalidParameter"

    def __init__(self, name: str, problem: str, *, code: str | None = None) -> None:
        super().__init__(f"{name} {problem}", code=code)
        self.parameter = name


class ImageNotFound(PermanentError):
    """No image of this collection has this id (ids are positive 63-bit integers)."""

    code = "ImageNotFound"


class ImageNotSearchable(PermanentError):
    """The image is known but has no vector to search with (it failed to index, or is not embedded yet)."""

    code = "ImageNotIndexed"


def show(value: object, limit: int = 60) -> str:
    """A client's value quoted for an error message: clipped, and ASCII-safe whatever it holds."""
    text = value if isinstance(value, str) else repr(value)
    clipped = text[:limit] + ("..." if len(text) > limit else "")
    return json.dumps(clipped, ensure_ascii=True)


# --- options -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """What a result must satisfy besides being near the query.

    ``uploaded_after`` is inclusive, ``uploaded_before`` exclusive, both on the blob's Last-Modified
    time (the row's creation time when Storage reported none); a date alone means 00:00 UTC.
    ``min_score`` is a cosine similarity from -1 to 1.
    """

    prefix: str | None = None
    content_types: tuple[str, ...] = ()
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    min_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The filters that are set, as the query echo shows them."""
        out: dict[str, Any] = {}
        if self.prefix is not None:
            out["prefix"] = self.prefix
        if self.content_types:
            out["content_type"] = list(self.content_types)
        if self.uploaded_after is not None:
            out["uploaded_after"] = self.uploaded_after.isoformat()
        if self.uploaded_before is not None:
            out["uploaded_before"] = self.uploaded_before.isoformat()
        if self.min_score is not None:
            out["min_score"] = self.min_score
        return out


@dataclass(frozen=True)
class Options:
    """Page size, filters and position of one query."""

    k: int = DEFAULT_K
    filters: Filters = field(default_factory=Filters)
    cursor: str | None = None


def parse_options(values: Mapping[str, object]) -> Options:
    """Options from strings (query string, CLI) or JSON values; a missing, null or empty value means the default.

    Names outside :data:`OPTION_NAMES` are not looked at: the caller decides whether they are an error."""

    def given(name: str) -> object | None:
        value = values.get(name)
        return None if value is None or value == "" else value

    k, prefix, types = given("k"), given("prefix"), given("content_type")
    after, before, score, cursor = (given(n) for n in ("uploaded_after", "uploaded_before", "min_score", "cursor"))
    filters = Filters(
        prefix=None if prefix is None else parse_prefix(prefix),
        content_types=() if types is None else parse_content_types(types),
        uploaded_after=None if after is None else parse_time("uploaded_after", after),
        uploaded_before=None if before is None else parse_time("uploaded_before", before),
        min_score=None if score is None else parse_min_score(score),
    )
    if filters.uploaded_after and filters.uploaded_before and filters.uploaded_after > filters.uploaded_before:
        raise InvalidParameter("uploaded_after", "is later than uploaded_before: no image can match")
    if cursor is not None and not isinstance(cursor, str):
        raise InvalidParameter("cursor", "must be the next_cursor string of an earlier answer")
    return Options(k=DEFAULT_K if k is None else parse_k(k), filters=filters, cursor=cursor)


def parse_k(value: object) -> int:
    """``k``: how many results, 1 to 100."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not 1 <= number <= MAX_K:
        raise InvalidParameter("k", f"is {show(value)}: give a whole number from 1 to {MAX_K}")
    return number


def parse_min_score(value: object) -> float:
    """``min_score``: the lowest cosine similarity a result may have, -1 to 1."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value.strip())
    if number is None or not math.isfinite(number) or not -1.0 <= number <= 1.0:
        raise InvalidParameter("min_score", f"is {show(value)}: give a number from -1 to 1 (cosine similarity)")
    return number


def parse_time(name: str, value: object) -> datetime:
    """An ISO 8601 date (00:00 UTC) or date-time (UTC unless it names an offset)."""
    if isinstance(value, str) and 0 < len(value.strip()) <= 64:
        text = value.strip()
        try:
            if len(text) <= 10 and "T" not in text.upper():
                return datetime.combine(date.fromisoformat(text), day_time(0), tzinfo=UTC)
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    raise InvalidParameter(name, f"is {show(value)}: give an ISO 8601 date or date-time, e.g. 2024-05-31T12:00:00Z")


def parse_prefix(value: object) -> str:
    """``prefix``: the start of the blob names to search among (a "folder", e.g. ``paintings/``)."""
    if not isinstance(value, str) or len(value) > MAX_PREFIX_CHARS or not _printable(value):
        raise InvalidParameter(
            "prefix", f"is {show(value)}: give the start of a blob name, up to {MAX_PREFIX_CHARS} printable characters"
        )
    return value


def parse_content_types(value: object) -> tuple[str, ...]:
    """``content_type``: one media type, several separated by commas, or (JSON) a list of them."""
    items: list[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = [part.strip() if isinstance(part, str) else part for part in value]
    else:
        items = [value]
    if not 0 < len(items) <= MAX_CONTENT_TYPES:
        raise InvalidParameter("content_type", f"gives {len(items)} media types: give 1 to {MAX_CONTENT_TYPES}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not _MEDIA_TYPE.fullmatch(item.lower()):
            raise InvalidParameter("content_type", f"holds {show(item)}: give media types such as image/png")
        if item.lower() not in out:
            out.append(item.lower())
    return tuple(out)


def normalize_text(value: object, name: str = "q") -> str:
    """The text query as embedded and cached: Unicode NFC, blanks collapsed; 1 to 70 words."""
    if not isinstance(value, str):
        raise InvalidParameter(name, "must be a text of 1 to 70 words")
    if len(value) > MAX_TEXT_CHARS * 4:
        raise InvalidParameter(name, f"is {len(value):,} characters long: give at most {MAX_TEXT_CHARS:,}")
    if not _printable(value.replace("\t", " ").replace("\n", " ").replace("\r", " ")):
        raise InvalidParameter(name, "holds control characters or text that is not valid Unicode")
    text = " ".join(unicodedata.normalize("NFC", value).split())
    words = len(text.split())
    if not 1 <= words <= MAX_TEXT_WORDS:
        code = "MissingParameter" if words == 0 else None
        raise InvalidParameter(name, f"has {words} words: give a text of 1 to {MAX_TEXT_WORDS} words", code=code)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidParameter(name, f"is {len(text):,} characters long: give at most {MAX_TEXT_CHARS:,}")
    return text


def parse_image_id(value: object) -> int:
    """An image id from a URL or argument; anything that is not a positive 63-bit integer names no image."""
    text = value.strip() if isinstance(value, str) else None
    if text is not None and _DIGITS.fullmatch(text) and 1 <= int(text) <= MAX_IMAGE_ID:
        return int(text)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_ID:
        return value
    raise ImageNotFound(f"no image has the id {show(value)}: ids are the positive whole numbers search results give")


def _printable(text: str) -> bool:
    # Lone surrogates (undecodable bytes) cannot be encoded in the JSON answer, NUL not stored in PostgreSQL.
    if _CONTROL.search(text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- cursors -------------------------------------------------------------------------------------
def fingerprint(model_id: str, kind: str, subject: str, filters: Filters) -> str:
    """What a cursor is bound to: the model, the kind of query, what was searched and the filters.

    16 hexadecimal digits of BLAKE2b over the repr of those values, which tells apart any two of what
    each can hold (text, a tuple of texts, a datetime, a float, None). It only binds a cursor to its
    query, it signs nothing: a client may write any cursor, which only says where a page starts.
    Measured in place (100,000 vectors, 2 cores, between two searches' round trips), JSON and SHA-256
    (OpenSSL) took 31 us p50 of a 1.1 ms search, this 9 us."""
    key = (
        model_id,
        kind,
        subject,
        filters.prefix,
        filters.content_types,
        filters.uploaded_after,
        filters.uploaded_before,
        filters.min_score,
    )
    return hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()


def encode_cursor(after: After, query_fingerprint: str) -> str:
    """The cursor of the page after ``after``: the JSON ``{"d":distance,"i":id,"q":fingerprint}`` in
    URL-safe base64. Written by hand, as json.dumps would write it (a finite float's repr is its JSON
    number, the fingerprint is hex): json.dumps cost 25-30 us of a 1.5 ms search."""
    if not (
        math.isfinite(after.distance) and len(query_fingerprint) == 16 and _HEX_DIGITS.issuperset(query_fingerprint)
    ):
        raise ValueError("a cursor holds a finite distance and a hexadecimal query fingerprint")
    raw = f'{{"d":{float(after.distance)!r},"i":{int(after.id)},"q":"{query_fingerprint}"}}'
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, query_fingerprint: str) -> After:
    """The position a cursor holds; :class:`InvalidParameter` when it is malformed or from another query."""
    bad = InvalidParameter(
        "cursor",
        "is not a cursor this API gave: pass next_cursor from the previous page unchanged",
        code="InvalidCursor",
    )
    if len(cursor) > MAX_CURSOR_CHARS or not _CURSOR.fullmatch(cursor):
        raise bad
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        raise bad from None
    if not isinstance(payload, dict) or set(payload) != {"d", "i", "q"}:
        raise bad
    distance, iid, query = payload["d"], payload["i"], payload["q"]
    if not isinstance(distance, int | float) or isinstance(distance, bool) or not math.isfinite(distance):
        raise bad
    if not isinstance(iid, int) or isinstance(iid, bool) or not 1 <= iid <= MAX_IMAGE_ID:
        raise bad
    if query != query_fingerprint:
        raise InvalidParameter(
            "cursor",
            "belongs to another query (other text, image, filters or model): start again without a cursor",
            code="InvalidCursor",
        )
    return After(float(distance), iid)


# --- the query-embedding cache -------------------------------------------------------------------
class EmbeddingCache:
    """Recently embedded queries: bounded (least recently used go first), entries expire, thread-safe.

    Two threads that miss on the same key at once both call the provider; both answers are equal,
    so that costs one call, never a wrong result.
    """

    def __init__(
        self,
        max_entries: int = CACHE_MAX_ENTRIES,
        ttl_seconds: float = CACHE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Vector]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Vector | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, vector: Vector) -> None:
        frozen = np.array(vector, dtype=np.float32)
        frozen.setflags(write=False)
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl_seconds, frozen)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Vector]) -> Vector:
        cached = self.get(key)
        if cached is not None:
            return cached
        vector = compute()
        self.put(key, vector)
        return vector

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# --- results -------------------------------------------------------------------------------------
@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3-4 times as much, per result
class Result:
    """One image found, with its cosine similarity to the query and a time-limited read link."""

    id: int
    name: str
    score: float
    url: str | None
    width: int | None
    height: int | None
    content_type: str | None
    byte_size: int | None
    distance: float
    thumbnail_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        # The id goes out as a string: 63-bit ids do not survive JavaScript's 53-bit numbers.
        return {
            "id": str(self.id),
            "name": self.name,
            "score": self.score,
            "url": self.url,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
            "byte_size": self.byte_size,
            "thumbnail_url": self.thumbnail_url,
        }


@dataclass(frozen=True)
class Results:
    """One page of results, best first, with the normalized query and the cursor of the next page."""

    query: dict[str, Any]
    results: list[Result]
    next_cursor: str | None
    strategy: str

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "results": [r.to_json() for r in self.results], "next_cursor": self.next_cursor}


@dataclass(frozen=True)
class QueryImage:
    """What an uploaded query image is, from its bytes."""

    info: ImageInfo
    sha256: str
    byte_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "byte_size": self.byte_size,
            "format": self.info.format,
            "content_type": self.info.content_type,
            "width": self.info.width,
            "height": self.info.height,
        }


def inspect_query_image(data: bytes) -> QueryImage:
    """Check an uploaded query image as ingestion checks blobs (format from the bytes, size, sides)."""
    return QueryImage(inspect_image(data), hashlib.sha256(data).hexdigest(), len(data))


# --- the pipeline --------------------------------------------------------------------------------
class ModelSource(Protocol):
    """Which model answers queries now, and its provider (the worker's Runtime is one)."""

    @property
    def model(self) -> Model: ...

    def provider_for(self, model: Model) -> EmbeddingProvider: ...


@dataclass(frozen=True)
class FixedModel:
    """A model source that never changes: one model and its provider (CLI, tests)."""

    model: Model
    provider: EmbeddingProvider

    def provider_for(self, model: Model) -> EmbeddingProvider:
        if model.model_id != self.provider.model_id:
            raise ValueError(
                f"vectors of different models cannot be compared: the provider embeds for "
                f"{self.provider.model_id}, the search is over {model.model_id}"
            )
        return self.provider


class Searcher:
    """Runs queries against one collection (store + container) under the source's current model."""

    def __init__(
        self,
        store: Store,
        models: ModelSource,
        *,
        blobs: ImageBlobs | None = None,
        container: str | None = None,
        read_link_minutes: int = 15,
        cache: EmbeddingCache | None = None,
        strategy: str = "auto",
        adapt_provider: Callable[[EmbeddingProvider], EmbeddingProvider] | None = None,
    ) -> None:
        """``blobs`` signs the read links (results have ``url`` None without it); ``container`` limits
        results to that container (default: the blobs' container); ``adapt_provider`` may wrap the
        source's provider for queries (e.g. with a shorter retry budget)."""
        self.store = store
        self.models = models
        self.blobs = blobs
        self.container = container if container is not None else (blobs.container_name if blobs else None)
        self.read_link_minutes = read_link_minutes
        self.cache = cache if cache is not None else EmbeddingCache()
        self.strategy = strategy
        self.adapt_provider = adapt_provider

    @classmethod
    def from_runtime(
        cls, runtime: Runtime, *, adapt_provider: Callable[[EmbeddingProvider], EmbeddingProvider] | None = None
    ) -> Searcher:
        """A searcher over the worker's objects: its store, active model, providers and container."""
        return cls(
            runtime.store,
            runtime,
            blobs=runtime.blobs,
            container=runtime.settings.images_container,
            read_link_minutes=runtime.settings.read_link_minutes,
            adapt_provider=adapt_provider,
        )

    # --- the three kinds of query ----------------------------------------------------------------
    def text(self, text: str, options: Options | None = None) -> Results:
        """Images described by ``text`` (1 to 70 words)."""
        options = options or Options()
        normalized = normalize_text(text)
        model = self.models.model
        vector = self.cache.get_or_compute(
            (model.model_id, "text", normalized), lambda: self._embed_text(model, normalized)
        )
        return self._run(model, "text", normalized, vector, options, {"text": normalized})

    def image(self, data: bytes, options: Options | None = None) -> Results:
        """Images that look like the uploaded one."""
        options = options or Options()
        image = inspect_query_image(data)
        model = self.models.model
        vector = self.cache.get_or_compute(
            (model.model_id, "image", image.sha256), lambda: self._embed_image(model, data)
        )
        return self._run(model, "image", image.sha256, vector, options, {"image": image.to_json()})

    def similar(self, image_id: int, options: Options | None = None) -> Results:
        """Images like an indexed one, by its stored vector (no embedding call); never the image itself."""
        options = options or Options()
        row = self.get_image(image_id)
        if row.status != "indexed":
            reason = f": {row.failure_reason}" if row.failure_reason else ""
            raise ImageNotSearchable(f"image {image_id} ({row.name}) could not be indexed{reason}")
        model = self.models.model
        vector = self.store.catalogue.get_vector(image_id, model.model_id)
        if vector is None:
            raise ImageNotSearchable(
                f"image {image_id} ({row.name}) has no vector for model {model.model_id} yet; try again later"
            )
        return self._run(model, "similar", str(image_id), vector, options, {"id": str(image_id)}, exclude_id=image_id)

    # --- single images ---------------------------------------------------------------------------
    def get_image(self, image_id: int) -> StoredImage:
        """The row of an image of this collection; :class:`ImageNotFound` otherwise."""
        row = self.store.catalogue.get_image(image_id)
        if row is None or (self.container is not None and row.container != self.container):
            raise ImageNotFound(f"no image has the id {image_id}")
        return row

    def read_link(
        self, name: str, *, thumbnail: bool = False, now: datetime | None = None
    ) -> tuple[str | None, datetime | None]:
        """A read-only link to one blob (or its thumbnail) and when it expires (None, None without storage)."""
        if self.blobs is None:
            return None, None
        return self.blobs.read_link(name, self.read_link_minutes, thumbnail=thumbnail, now=now)

    # --- internals -------------------------------------------------------------------------------
    def provider(self, model: Model) -> EmbeddingProvider:
        """The provider that embeds queries for ``model``."""
        provider = self.models.provider_for(model)
        return self.adapt_provider(provider) if self.adapt_provider is not None else provider

    def _embed_text(self, model: Model, text: str) -> Vector:
        try:
            return _checked(model, self.provider(model).embed_text(text))
        except ProviderRejected as exc:
            raise InvalidInput(f"the embedding service refused the text: {exc.message}", code="TextRejected") from exc

    def _embed_image(self, model: Model, data: bytes) -> Vector:
        try:
            return _checked(model, self.provider(model).embed_image(data))
        except ProviderRejected as exc:
            raise InvalidImage(f"the embedding service refused the image: {exc.message}", code="ImageRejected") from exc

    def _run(
        self,
        model: Model,
        kind: str,
        subject: str,
        vector: Vector,
        options: Options,
        echo: dict[str, Any],
        *,
        exclude_id: int | None = None,
    ) -> Results:
        query_fingerprint = fingerprint(model.model_id, kind, subject, options.filters)
        after = None if options.cursor is None else decode_cursor(options.cursor, query_fingerprint)
        f = options.filters
        filters = SearchFilters(
            container=self.container,
            prefix=f.prefix,
            content_types=f.content_types,
            uploaded_after=f.uploaded_after,
            uploaded_before=f.uploaded_before,
            exclude_id=exclude_id,
        )
        max_distance = None if f.min_score is None else 1.0 - f.min_score
        # One row more than asked tells whether a next page exists.
        found = self.store.vectors.search(
            model,
            vector,
            options.k + 1,
            filters=filters,
            after=after,
            max_distance=max_distance,
            strategy=self.strategy,
        )
        hits = found.hits[: options.k]
        now = datetime.now(UTC) if self.blobs is not None else None  # one answer's links expire together
        results = []
        for hit in hits:
            url, _ = self.read_link(hit.name, now=now)
            thumb = self.read_link(hit.name, thumbnail=True, now=now)[0] if hit.thumbnail else None
            score = 1.0 - hit.distance
            score = min(1.0, max(-1.0, score)) if math.isfinite(score) else -1.0
            results.append(
                Result(
                    hit.id,
                    hit.name,
                    score,
                    url,
                    hit.width,
                    hit.height,
                    hit.content_type,
                    hit.byte_size,
                    hit.distance,
                    thumbnail_url=thumb,
                )
            )
        next_cursor = None
        if len(found.hits) > options.k and hits and math.isfinite(hits[-1].distance):
            next_cursor = encode_cursor(After(hits[-1].distance, hits[-1].id), query_fingerprint)
        query = {
            "type": kind,
            **echo,
            "k": options.k,
            "filters": options.filters.to_json(),
            "cursor": options.cursor,
            "model": model.model_id,
        }
        return Results(query, results, next_cursor, found.strategy)


def _checked(model: Model, vector: Vector) -> Vector:
    """The provider's vector, if it can be searched with under ``model``."""
    array = np.asarray(vector, dtype=np.float32)
    if array.shape == (model.dimension,):
        # One product tells the usual case, finite and not all zero (a NaN or infinity makes it NaN or
        # infinite, all zeros make it 0): three NumPy calls took 60-70 us of a 1.5 ms search, 100,000
        # vectors on 2 cores, this one a fifth of that. Only a sum too large for float32 (numbers
        # near 1e19) goes on to the exact checks below.
        square = float(np.dot(array, array))
        if math.isfinite(square) and square > 0.0:
            return array
    if array.shape != (model.dimension,) or not np.isfinite(array).all() or not np.any(array):
        raise ProviderResponseError(
            f"the embedding service answered a vector of shape {array.shape} that cannot be searched with "
            f"(expected {model.dimension} finite numbers, not all zero)"
        )
    return array
