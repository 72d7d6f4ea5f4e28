"""Azure AI Vision multimodal embeddings: the ``EmbeddingProvider`` that calls the real service.

Every failure is classified by what the caller should do next (see shared/errors.py):

- 400 → :class:`ProviderRejected` (the input is at fault), unless the service complains about the
  api-version or model-version, which is our configuration → :class:`ProviderMisconfigured`;
- 401/403/404 and redirects → :class:`ProviderMisconfigured` (endpoint, key or role);
- other 4xx → :class:`ProviderRejected`;
- 408, 429, 5xx, timeouts and broken connections are retried here with exponential backoff and full
  jitter, never sooner than the service's ``Retry-After``, within a total time budget; when the
  budget or the attempts run out → :class:`ProviderUnavailable` carrying ``retry_after``;
- a 2xx answer that breaks the contract (not JSON, wrong length, other model) →
  :class:`ProviderResponseError` at once: the same call would most likely answer the same way, and
  every call is billed, so it is left to the caller's (the host's) retries.
"""

from __future__ import annotations

import copy
import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from .auth import COGNITIVE_SERVICES_SCOPE, AccessTokenLike, CachedToken, TokenCredentialLike
from .embeddings import Vector
from .errors import (
    InvalidImage,
    InvalidInput,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderResponseError,
    ProviderUnavailable,
)
from .ratelimit import RateLimiter, RateLimitTimeout, shared_limiter
from .settings import Settings

log = logging.getLogger(__name__)

DIMENSION: Final = 1024
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024  # the service's limit: 20,971,520 bytes
MAX_TEXT_WORDS: Final = 70
IMAGE_PATH: Final = "computervision/retrieval:vectorizeImage"
TEXT_PATH: Final = "computervision/retrieval:vectorizeText"

DEFAULT_API_VERSION: Final = "2024-02-01"
DEFAULT_MODEL_VERSION: Final = "2023-04-15"
DEFAULT_POOL_MAXSIZE: Final = 16
DEFAULT_MAX_ATTEMPTS: Final = 10
BACKOFF_BASE_SECONDS: Final = 0.5
BACKOFF_CAP_SECONDS: Final = 20.0
# A retry is only worth starting if it has at least this long (or the whole timeout, if shorter).
MIN_ATTEMPT_SECONDS: Final = 1.0

# Azure's throttling headers, in the order the Azure SDKs read them; the *-ms ones are milliseconds.
_RETRY_AFTER_MS_HEADERS: Final = ("retry-after-ms", "x-ms-retry-after-ms")
_CONFIG_ERROR_CODES: Final = frozenset(
    {"invalidmodel", "invalidmodelversion", "unsupportedmodelversion", "unsupportedapiversion", "invalidapiversion"}
)
_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
_CONFIG_ERROR_WORDS: Final = ("api-version", "api version", "model-version", "model version")

_MISCONFIGURED_HINT: Final = (
    "check VISION_ENDPOINT and VISION_KEY; without VISION_KEY the app's identity needs the Cognitive Services "
    "User role on the Vision resource, and Microsoft Entra authentication only works with the resource's "
    "custom-subdomain endpoint https://<name>.cognitiveservices.azure.com/"
)


@dataclass(frozen=True)
class _ServiceError:
    """The service's ``{"error": {"code", "message", "innererror": {"code", "message"}}}``, as far as given."""

    code: str | None = None
    message: str | None = None
    inner_code: str | None = None
    inner_message: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> _ServiceError:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            return cls(message=_clip(body.decode("utf-8", "replace")) or None)
        if not isinstance(error, dict):
            return cls()
        inner = error.get("innererror")
        inner = inner if isinstance(inner, dict) else {}
        return cls(
            _text(error.get("code")), _text(error.get("message")), _text(inner.get("code")), _text(inner.get("message"))
        )

    def describe(self, status: int, reason: str) -> str:
        codes = "/".join(c for c in (self.code, self.inner_code) if c and c != str(status))
        head = f"{status} {codes}" if codes else f"{status} {reason}".rstrip()
        detail = (self.inner_message or self.message or "").rstrip(". ")
        return f"{head}: {detail}" if detail else head


class _Retryable(Exception):
    """One failed attempt that may succeed if tried again."""

    def __init__(self, description: str, *, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


class AzureVisionProvider:
    """Embeds images and text with Azure AI Vision's ``vectorizeImage`` / ``vectorizeText``."""

    def __init__(
        self,
        endpoint: str,
        *,
        api_version: str = DEFAULT_API_VERSION,
        model_version: str = DEFAULT_MODEL_VERSION,
        key: str | None = None,
        token_provider: Callable[[], str] | None = None,
        timeout: float = 30.0,
        connect_timeout: float | None = None,
        max_retry_seconds: float = 60.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        pool_maxsize: int = DEFAULT_POOL_MAXSIZE,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        """Give exactly one of ``key`` (sent as ``Ocp-Apim-Subscription-Key``) or ``token_provider``
        (returns a bearer token; called before every attempt, so it should cache, like CachedToken.get).
        ``rate_limiter``, when given, spaces every attempt (retries too) to the worker's share of the
        service's rate limit.
        """
        if (key is None) == (token_provider is None):
            raise ValueError("give exactly one of key or token_provider")
        if timeout <= 0 or max_retry_seconds < 0 or max_attempts < 1:
            raise ValueError("timeout must be > 0, max_retry_seconds >= 0 and max_attempts >= 1")
        self.endpoint = endpoint.rstrip("/") + "/"
        self.api_version = api_version
        self.model_version = model_version
        self._key = key
        self._token_provider = token_provider
        self._read_timeout = float(timeout)
        self._connect_timeout = float(connect_timeout) if connect_timeout is not None else min(10.0, self._read_timeout)
        self.max_retry_seconds = float(max_retry_seconds)
        self.max_attempts = max_attempts
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.rate_limiter = rate_limiter
        query = urlencode({"api-version": api_version, "model-version": model_version})
        self._urls = {
            "image": f"{self.endpoint}{IMAGE_PATH}?{query}",
            "text": f"{self.endpoint}{TEXT_PATH}?{query}",
        }
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Retries are ours (they honour Retry-After and the budget), so the adapter makes none.
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        credential: object | None = None,
        max_retry_seconds: float | None = None,
    ) -> AzureVisionProvider:
        """Build from ``VISION_*`` settings; without ``VISION_KEY``, authenticate with ``credential``
        (default: a ``DefaultAzureCredential`` created on first use)."""
        key = settings.vision_key
        token_provider: Callable[[], str] | None = None
        if key is None:
            if credential is None:
                credential = _LazyDefaultCredential()
            if not isinstance(credential, TokenCredentialLike):
                raise TypeError(f"credential must have get_token(*scopes), got {type(credential).__name__}")
            token_provider = CachedToken(credential, COGNITIVE_SERVICES_SCOPE).get
        rate = settings.vision_max_requests_per_second
        # One limiter per endpoint and worker: the limit belongs to the Vision resource, not to this object.
        limiter = shared_limiter(settings.vision_endpoint, rate) if rate > 0 else None
        return cls(
            settings.vision_endpoint,
            api_version=settings.vision_api_version,
            model_version=settings.vision_model_version,
            key=key,
            token_provider=token_provider,
            timeout=settings.vision_timeout_seconds,
            max_retry_seconds=settings.vision_max_retry_seconds if max_retry_seconds is None else max_retry_seconds,
            rate_limiter=limiter,
        )

    # --- EmbeddingProvider ---------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return f"azure-vision:{self.model_version}"

    @property
    def dimension(self) -> int:
        return DIMENSION

    def embed_image(self, data: bytes) -> Vector:
        """Embed encoded image bytes (JPEG, PNG, GIF, BMP, WEBP, ICO, TIFF, MPO; under 20 MB)."""
        if not data:
            raise InvalidImage("the image is empty (0 bytes)")
        if len(data) > MAX_IMAGE_BYTES:
            raise InvalidImage(f"the image is {len(data):,} bytes; Azure AI Vision takes at most {MAX_IMAGE_BYTES:,}")
        return self._call("image", bytes(data), "application/octet-stream")

    def embed_text(self, text: str) -> Vector:
        """Embed a text query of 1 to 70 words into the images' space."""
        words = len(text.split())
        if not 1 <= words <= MAX_TEXT_WORDS:
            raise InvalidInput(
                f"the text has {words} words; Azure AI Vision takes 1 to {MAX_TEXT_WORDS} words", code="InvalidText"
            )
        return self._call("text", json.dumps({"text": text}).encode("utf-8"), "application/json")

    def with_retry_budget(self, seconds: float) -> AzureVisionProvider:
        """The same client with a shorter retry budget (for a request someone waits for); it shares the
        session, credentials and rate limiter, and closing it leaves them open."""
        quick = copy.copy(self)
        quick.max_retry_seconds = float(seconds)
        quick._owns_session = False
        return quick

    def close(self) -> None:
        """Close the connection pool (only if this provider created the session)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> AzureVisionProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- one call, with retries ----------------------------------------------------------------
    def _call(self, kind: str, body: bytes, content_type: str) -> Vector:
        start = self._clock()
        deadline = start + self.max_retry_seconds
        first_attempt = True

        def attempt() -> Vector:
            nonlocal first_attempt
            timeout = (self._connect_timeout, self._read_timeout)
            if not first_attempt:
                # A retry never runs past the budget; stop() guaranteed at least MIN_ATTEMPT_SECONDS.
                remaining = max(deadline - self._clock(), 0.001)
                timeout = (min(timeout[0], remaining), min(timeout[1], remaining))
            first_attempt = False
            if self.rate_limiter is not None:
                self._wait_for_slot(kind, deadline)
            return self._attempt(kind, body, content_type, timeout)

        def wait(state: RetryCallState) -> float:
            exc = _retryable(state)
            backoff = self._rng.uniform(0.0, _window(state.attempt_number))
            return max(exc.retry_after or 0.0, backoff)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            shortest = min(MIN_ATTEMPT_SECONDS, self._read_timeout)
            return self._clock() + state.upcoming_sleep + shortest > deadline

        def before_sleep(state: RetryCallState) -> None:
            log.warning(
                "Azure AI Vision %s call failed (%s); retry %d in %.2f s",
                kind,
                _retryable(state).description,
                state.attempt_number,
                state.upcoming_sleep,
            )

        def give_up(state: RetryCallState) -> Vector:
            exc = _retryable(state)
            elapsed = self._clock() - start
            if state.attempt_number >= self.max_attempts:
                why = f"all {self.max_attempts} attempts failed"
            else:
                why = (
                    f"the next wait of {state.upcoming_sleep:.1f} s would overrun the retry budget of "
                    f"{self.max_retry_seconds:g} s"
                )
            retry_after = exc.retry_after if exc.retry_after is not None else max(1.0, _window(state.attempt_number))
            raise ProviderUnavailable(
                f"Azure AI Vision is unavailable: the {kind} call failed {state.attempt_number} time(s) in "
                f"{elapsed:.1f} s, last with {exc.description}; {why}; try again in {math.ceil(retry_after)} s",
                retry_after=retry_after,
            ) from exc

        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            wait=wait,
            stop=stop,
            sleep=self._sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )
        result: Vector = retrying(attempt)
        return result

    def _wait_for_slot(self, kind: str, deadline: float) -> None:
        """Wait for the rate limiter's next slot, unless it lies beyond the retry budget."""
        assert self.rate_limiter is not None
        budget = max(deadline - self._clock(), MIN_ATTEMPT_SECONDS)
        try:
            self.rate_limiter.acquire(timeout=budget)
        except RateLimitTimeout as exc:
            # More calls queue in this worker than the rate lets through within the budget.
            raise ProviderUnavailable(
                f"Azure AI Vision {kind} call not started: this worker's calls are limited to "
                f"{self.rate_limiter.rate:g} per second (VISION_MAX_REQUESTS_PER_SECOND) and the next free slot is "
                f"{exc.wait:.1f} s away, beyond the retry budget; try again in {math.ceil(exc.wait)} s",
                retry_after=exc.wait,
            ) from exc

    def _attempt(self, kind: str, body: bytes, content_type: str, timeout: tuple[float, float]) -> Vector:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self._token_provider is not None:
            headers["Authorization"] = f"Bearer {self._token_provider()}"
        elif self._key is not None:
            headers["Ocp-Apim-Subscription-Key"] = self._key
        try:
            response = self._session.post(
                self._urls[kind], data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise _Retryable(f"no answer within {timeout[1]:.1f} s ({type(exc).__name__})") from exc
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Retryable(f"a broken connection ({_root_cause(exc)})") from exc
        except requests.RequestException as exc:
            raise ProviderMisconfigured(
                f"could not call Azure AI Vision at {self.endpoint} ({type(exc).__name__}); check VISION_ENDPOINT"
            ) from exc
        return self._handle(kind, response)

    def _handle(self, kind: str, response: requests.Response) -> Vector:
        status = response.status_code
        if 200 <= status < 300:
            return self._vector(kind, response.content)
        error = _ServiceError.parse(response.content)
        described = error.describe(status, response.reason or "")
        if status == 408 or status == 429 or status >= 500:
            raise _Retryable(described, retry_after=_retry_after(response.headers))
        auth = "VISION_KEY" if self._key is not None else "a Microsoft Entra token"
        if _is_config_error(error):
            raise ProviderMisconfigured(
                f"Azure AI Vision at {self.endpoint} refused api-version {self.api_version} / model-version "
                f"{self.model_version} ({described}); check VISION_API_VERSION and VISION_MODEL_VERSION"
            )
        if status in (401, 403, 404) or 300 <= status < 400:
            where = f" (redirected to {response.headers.get('Location', '?')})" if 300 <= status < 400 else ""
            raise ProviderMisconfigured(
                f"Azure AI Vision at {self.endpoint} refused the {kind} call{where} with {described} "
                f"(authenticated with {auth}, api-version {self.api_version}); {_MISCONFIGURED_HINT}"
            )
        raise ProviderRejected(
            f"Azure AI Vision rejected the {kind} ({described})",
            code=error.inner_code or error.code or None,
        )

    def _vector(self, kind: str, body: bytes) -> Vector:
        try:
            payload: Any = json.loads(body)
        except ValueError:
            raise ProviderResponseError(
                f"Azure AI Vision answered the {kind} call with something that is not JSON: {_clip(repr(body[:200]))}"
            ) from None
        if not isinstance(payload, dict):
            raise ProviderResponseError(f"Azure AI Vision answered the {kind} call with JSON that is not an object")
        model = payload.get("modelVersion")
        if model != self.model_version:
            raise ProviderResponseError(
                f"Azure AI Vision answered with modelVersion {model!r}, but {self.model_version!r} is pinned; "
                "vectors of different model versions must never be compared"
            )
        vector = payload.get("vector")
        if not isinstance(vector, list) or len(vector) != DIMENSION:
            size = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise ProviderResponseError(
                f"Azure AI Vision answered with a vector of {size}, expected {DIMENSION} numbers"
            )
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
            raise ProviderResponseError("Azure AI Vision answered with a vector holding something other than numbers")
        values = np.asarray(vector, dtype=np.float64)
        if not (np.isfinite(values).all() and np.abs(values).max() <= _FLOAT32_MAX):
            raise ProviderResponseError("Azure AI Vision answered with a vector holding NaN or infinite values")
        return values.astype(np.float32)


class _LazyDefaultCredential:
    """Creates ``DefaultAzureCredential`` on first use: importing azure.identity costs time at cold start."""

    def __init__(self) -> None:
        self._credential: TokenCredentialLike | None = None
        self._lock = threading.Lock()

    def get_token(self, *scopes: str) -> AccessTokenLike:
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
        return self._credential.get_token(*scopes)


def _window(attempt_number: int) -> float:
    """Upper bound of the full-jitter backoff after the given (1-based) failed attempt."""
    return float(min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt_number - 1)))


def _retryable(state: RetryCallState) -> _Retryable:
    exc = state.outcome.exception() if state.outcome is not None else None
    if not isinstance(exc, _Retryable):  # tenacity only retries _Retryable
        raise TypeError(f"unexpected retry outcome {exc!r}")
    return exc


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``Retry-After`` (seconds or date)."""
    for name in _RETRY_AFTER_MS_HEADERS:
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _root_cause(exc: requests.RequestException) -> str:
    # requests wraps urllib3's MaxRetryError ("Max retries exceeded", though we make none); show its reason.
    cause: object = exc.args[0] if exc.args else exc
    cause = getattr(cause, "reason", None) or cause
    return f"{type(exc).__name__}: {_clip(str(cause), 200)}"


def _is_config_error(error: _ServiceError) -> bool:
    # A 400 about the api-version or model-version would fail every input alike: it is our setting.
    codes = {c.lower() for c in (error.code, error.inner_code) if c}
    if codes & _CONFIG_ERROR_CODES:
        return True
    text = f"{error.message or ''} {error.inner_message or ''}".lower()
    return any(word in text for word in _CONFIG_ERROR_WORDS)


def _text(value: object) -> str | None:
    return _clip(str(value)) if value is not None and value != "" else None


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
