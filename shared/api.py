"""The search API's HTTP handlers: parse and check the request, run the search pipeline, answer JSON.

- ``GET /api/search?q=<text>`` and ``POST /api/search`` (the query image as the body, or a JSON body
  ``{"text": ...}``), ``GET /api/images/{id}/similar``, ``GET /api/images/{id}`` (a read link) and
  ``GET /api/openapi.json`` (the contract: shared/openapi.json).
- Options (``k``, ``prefix``, ``content_type``, ``uploaded_after``, ``uploaded_before``, ``min_score``,
  ``cursor``) go in the query string, or in the JSON body. An unknown parameter is refused (400), so a
  misspelt filter never silently widens a search; ``code`` (the function key) is always allowed.
- Every failure is the JSON error shape with the status that tells the client what to do next;
  only a bug in this code gives a 500, logged with a correlation id.

Each handler takes an optional ``runtime`` (tests inject one); by default the worker's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Final

import azure.functions as func
from azure.core.exceptions import AzureError

from .embeddings import EmbeddingProvider
from .errors import (
    AppError,
    DatabaseUnavailable,
    InvalidImage,
    InvalidInput,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderResponseError,
    ProviderUnavailable,
    ServiceRefused,
    SettingError,
    TransientError,
)
from .http import error_response, json_response, retry_after_header, unexpected
from .runtime import Runtime, get_runtime
from .schema import SchemaOutdated
from .search import (
    MAX_IMAGE_BYTES,
    OPTION_NAMES,
    ImageNotFound,
    ImageNotSearchable,
    InvalidParameter,
    Searcher,
    normalize_text,
    parse_image_id,
    parse_options,
    show,
)

log = logging.getLogger(__name__)

# Someone is waiting for the answer: give up on a throttled or failing Vision service after this many
# seconds (or VISION_MAX_RETRY_SECONDS, if smaller) and answer 503 with Retry-After.
SEARCH_RETRY_SECONDS: Final = 5.0
MAX_JSON_BODY_BYTES: Final = 64 * 1024
OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
FUNCTION_KEY_PARAM: Final = "code"  # the function key, when a client sends it in the query string
IMAGE_TYPES: Final = ("application/octet-stream",)  # besides image/*
_DIGITS: Final = re.compile(r"[0-9]{1,20}")


class HttpError(Exception):
    """A request the handler refuses before any search: status, code and message for the client."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> func.HttpResponse:
        return error_response(self.status, self.code, self.message, headers=self.headers)


# --- the handlers --------------------------------------------------------------------------------
def search(req: func.HttpRequest, runtime: Runtime | None = None) -> func.HttpResponse:
    """``GET /api/search?q=`` (text) and ``POST /api/search`` (image body, or JSON ``{"text": ...}``)."""
    return _answer("search", req, runtime, _search)


def similar(req: func.HttpRequest, runtime: Runtime | None = None) -> func.HttpResponse:
    """``GET /api/images/{id}/similar``: images like an indexed one, never the image itself."""
    return _answer("similar", req, runtime, _similar)


def image(req: func.HttpRequest, runtime: Runtime | None = None) -> func.HttpResponse:
    """``GET /api/images/{id}``: 302 to a time-limited read link, or (``?format=json``) the link as JSON."""
    return _answer("image", req, runtime, _image)


def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """``GET /api/openapi.json``: the API's OpenAPI 3.0 document."""
    try:
        return json_response(openapi_document(), headers={"Cache-Control": "public, max-age=3600"})
    except Exception as exc:
        return unexpected(exc, "openapi")


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document served at /api/openapi.json (shared/openapi.json)."""
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    return document


# --- one searcher per runtime --------------------------------------------------------------------
_lock = threading.Lock()
_current: tuple[Runtime, Searcher] | None = None


def searcher_for(runtime: Runtime) -> Searcher:
    """The searcher over ``runtime``, built once (it holds the query-embedding cache)."""
    global _current
    with _lock:
        if _current is None or _current[0] is not runtime:
            budget = min(SEARCH_RETRY_SECONDS, float(runtime.settings.vision_max_retry_seconds))
            _current = (runtime, Searcher.from_runtime(runtime, adapt_provider=ShortRetryBudget(budget)))
        return _current[1]


class ShortRetryBudget:
    """The runtime's providers with the short retry budget of a request someone waits for.

    A provider with a ``max_retry_seconds`` budget (Azure AI Vision) is copied once with the shorter
    budget; the copy shares its HTTP session and credentials, so it costs no connection or token.
    Providers without a budget are used as they are.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._copies: dict[int, tuple[EmbeddingProvider, EmbeddingProvider]] = {}
        self._lock = threading.Lock()

    def __call__(self, provider: EmbeddingProvider) -> EmbeddingProvider:
        current = getattr(provider, "max_retry_seconds", None)
        shorten = getattr(provider, "with_retry_budget", None)
        if not isinstance(current, int | float) or current <= self.seconds or not callable(shorten):
            return provider
        with self._lock:
            known = self._copies.get(id(provider))
            if known is None or known[0] is not provider:
                known = self._copies[id(provider)] = (provider, shorten(self.seconds))
            return known[1]


# --- request handling ----------------------------------------------------------------------------
Handler = Callable[[func.HttpRequest, Callable[[], Searcher]], func.HttpResponse]


def _answer(where: str, req: func.HttpRequest, runtime: Runtime | None, handler: Handler) -> func.HttpResponse:
    """Run a handler; map every classified failure to its status, anything else to a logged 500."""

    def searcher() -> Searcher:
        # Only after the request is checked: a bad request gets its 400 even when the database is down.
        return searcher_for(runtime if runtime is not None else get_runtime())

    try:
        return handler(req, searcher)
    except HttpError as exc:
        return exc.response()
    except AppError as exc:
        return _app_error(exc, where)
    except AzureError as exc:
        # Blob storage refused to sign a link (e.g. the identity lacks Storage Blob Delegator).
        log.warning("storage failed in %s: %s", where, exc)
        return error_response(502, "StorageError", "blob storage refused the request; the operator must check it")
    except Exception as exc:
        return unexpected(exc, where)


def _app_error(exc: AppError, where: str) -> func.HttpResponse:
    if isinstance(exc, InvalidImage):
        if exc.code == "TooLarge":
            return error_response(413, "PayloadTooLarge", exc.message)
        if exc.code == "EmptyFile":
            return error_response(400, "MissingBody", "the request body is empty: send the query image's bytes")
        return error_response(415, "UnsupportedImage", exc.message, reason=exc.code)
    if isinstance(exc, ImageNotFound):
        return error_response(404, exc.code, exc.message)
    if isinstance(exc, ImageNotSearchable):
        return error_response(409, exc.code, exc.message)
    if isinstance(exc, InvalidParameter):
        return error_response(400, exc.code, exc.message, parameter=exc.parameter)
    if isinstance(exc, InvalidInput | ProviderRejected):
        return error_response(400, exc.code, exc.message)
    if isinstance(exc, ProviderUnavailable):
        return error_response(
            503,
            exc.code,
            "the embedding service is busy or unavailable; try again later",
            headers=retry_after_header(exc.retry_after),
        )
    if isinstance(exc, ProviderResponseError | ProviderMisconfigured):
        log.error("embedding service failure in %s: %s", where, exc.message)
        return error_response(502, exc.code, "the embedding service failed to answer this query; the operator is told")
    if isinstance(exc, SchemaOutdated):
        log.error("database not migrated in %s: %s", where, exc.message)
        return error_response(
            503, exc.code, "the service is being upgraded; try again later", headers=retry_after_header(60)
        )
    if isinstance(exc, DatabaseUnavailable):
        log.warning("database unavailable in %s: %s", where, exc.message)
        return error_response(
            503, exc.code, "the database is unavailable; try again later", headers=retry_after_header(exc.retry_after)
        )
    if isinstance(exc, TransientError):
        log.warning("transient failure in %s: %s", where, exc.message)
        return error_response(
            503,
            exc.code,
            "a backing service is unavailable; try again later",
            headers=retry_after_header(exc.retry_after),
        )
    if isinstance(exc, ServiceRefused):
        # Blob storage refused us (e.g. the identity lacks the role to sign read links): not the client's fault.
        log.error("storage refused in %s: %s", where, exc.message)
        return error_response(502, "StorageError", "blob storage refused the request; the operator must check it")
    if isinstance(exc, SettingError):
        log.error("configuration error in %s: %s", where, exc.message)
        return error_response(500, "ServiceMisconfigured", "the service is misconfigured; the operator is told")
    return unexpected(exc, where)


def _search(req: func.HttpRequest, searcher: Callable[[], Searcher]) -> func.HttpResponse:
    if req.method == "GET":
        params = _params(req, allowed=("q", *OPTION_NAMES))
        if not params.get("q"):
            raise InvalidParameter("q", "is missing: give a text of 1 to 70 words", code="MissingParameter")
        text = normalize_text(params["q"])
        options = parse_options(params)
        return json_response(searcher().text(text, options).to_json())
    if req.method != "POST":
        raise _method_not_allowed("GET, POST")
    media_type = _media_type(req)
    if media_type == "application/json" or media_type.endswith("+json"):
        values = _json_body(req)
        text = values.pop("text", None)
        if text is None or text == "":
            raise InvalidParameter("text", "is missing: give a text of 1 to 70 words", code="MissingParameter")
        text = normalize_text(text, "text")
        options = parse_options(values)
        return json_response(searcher().text(text, options).to_json())
    if media_type.startswith("image/") or media_type in IMAGE_TYPES:
        params = _params(req, allowed=OPTION_NAMES)
        options = parse_options(params)
        data = _image_body(req)
        return json_response(searcher().image(data, options).to_json())
    raise HttpError(
        415,
        "UnsupportedMediaType",
        f"Content-Type {show(media_type or '(none)')} is not accepted: send the query image (image/* or "
        'application/octet-stream) or JSON {"text": ...}',
    )


def _similar(req: func.HttpRequest, searcher: Callable[[], Searcher]) -> func.HttpResponse:
    if req.method != "GET":
        raise _method_not_allowed("GET")
    image_id = parse_image_id(req.route_params.get("id", ""))
    options = parse_options(_params(req, allowed=OPTION_NAMES))
    return json_response(searcher().similar(image_id, options).to_json())


def _image(req: func.HttpRequest, searcher: Callable[[], Searcher]) -> func.HttpResponse:
    if req.method != "GET":
        raise _method_not_allowed("GET")
    image_id = parse_image_id(req.route_params.get("id", ""))
    params = _params(req, allowed=("format",))
    fmt = (params.get("format") or "redirect").strip().lower()
    if fmt not in ("redirect", "json"):
        raise InvalidParameter("format", f"is {show(params.get('format'))}: use json or redirect")
    s = searcher()
    row = s.get_image(image_id)
    url, expires = s.read_link(row.name)
    if url is None or expires is None:
        raise HttpError(503, "StorageUnavailable", "blob storage is not configured", retry_after_header(60))
    body = {
        "id": str(row.id),
        "name": row.name,
        "url": url,
        "expires": expires.isoformat(),
        "status": row.status,
        "content_type": row.content_type,
        "width": row.width,
        "height": row.height,
        "byte_size": row.byte_size,
    }
    if fmt == "json":
        return json_response(body)
    return json_response(body, 302, headers={"Location": url})


# --- request parsing -----------------------------------------------------------------------------
def _params(req: func.HttpRequest, *, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's parameters, refusing names the endpoint does not know."""
    params = {name: value for name, value in req.params.items() if name != FUNCTION_KEY_PARAM}
    unknown = sorted(name for name in params if name not in allowed)
    if unknown:
        names = ", ".join(show(name, 40) for name in unknown[:5])
        raise HttpError(
            400, "UnknownParameter", f"unknown parameter(s) {names}; this endpoint takes {', '.join(allowed)}"
        )
    return {name: value if isinstance(value, str) else str(value) for name, value in params.items()}


def _media_type(req: func.HttpRequest) -> str:
    return (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def _declared_length(req: func.HttpRequest) -> int | None:
    value = (req.headers.get("content-length") or "").strip()
    # ASCII digits only: str.isdigit() also accepts "¹" or "٣", which int() then refuses.
    return int(value) if _DIGITS.fullmatch(value) else None


def _body(req: func.HttpRequest, limit: int, what: str) -> bytes:
    """The body, refusing it by its Content-Length before reading when that already says it is too big."""
    declared = _declared_length(req)
    if declared is not None and declared > limit:
        raise HttpError(413, "PayloadTooLarge", f"{what} is {declared:,} bytes; at most {limit:,} are accepted")
    data = req.get_body() or b""
    if len(data) > limit:
        raise HttpError(413, "PayloadTooLarge", f"{what} is {len(data):,} bytes; at most {limit:,} are accepted")
    return bytes(data)


def _image_body(req: func.HttpRequest) -> bytes:
    data = _body(req, MAX_IMAGE_BYTES, "the query image")
    if not data:
        raise HttpError(400, "MissingBody", "the request body is empty: send the query image's bytes")
    return data


def _json_body(req: func.HttpRequest) -> dict[str, Any]:
    """A JSON object body merged with the query string's options (a name given in both is refused)."""
    data = _body(req, MAX_JSON_BODY_BYTES, "the JSON body")
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, "InvalidJson", "the body is not valid UTF-8 JSON") from None
    if not isinstance(payload, dict):
        raise HttpError(400, "InvalidJson", 'the JSON body must be an object such as {"text": "a red car", "k": 10}')
    allowed = ("text", *OPTION_NAMES)
    unknown = sorted(name for name in payload if name not in allowed)
    if unknown:
        names = ", ".join(show(name, 40) for name in unknown[:5])
        raise HttpError(400, "UnknownParameter", f"unknown field(s) {names}; the JSON body takes {', '.join(allowed)}")
    for name, value in _params(req, allowed=OPTION_NAMES).items():
        if name in payload:
            raise HttpError(400, "DuplicateParameter", f"{name} is given both in the query string and the JSON body")
        payload[name] = value
    return payload


def _method_not_allowed(allow: str) -> HttpError:
    return HttpError(405, "MethodNotAllowed", f"use {allow}", {"Allow": allow})
