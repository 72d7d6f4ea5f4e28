"""A fake Azure AI Vision multimodal-embeddings service over real HTTP on 127.0.0.1.

It serves the contract in the project's platform facts (learn.microsoft.com/azure/ai-services/
computer-vision/how-to/image-retrieval, concept-image-retrieval):

- ``POST /computervision/retrieval:vectorizeImage`` with the image bytes
  (``Content-Type: application/octet-stream``) and ``POST /computervision/retrieval:vectorizeText``
  with ``{"text": "..."}``; both need the ``api-version`` and ``model-version`` query parameters;
- auth by ``Ocp-Apim-Subscription-Key`` or ``Authorization: Bearer <token>``, else 401;
- answers ``{"modelVersion": "...", "vector": [1024 floats]}`` or the service's error body
  ``{"error": {"code", "message", "innererror": {"code", "message"}}}``.

Choices where the documentation is silent (each a guess at the real service, kept plausible):
a wrong ``Content-Type`` answers 400 ``InvalidRequest`` / ``UnsupportedMediaType`` (the facts list
"wrong content type" under 400); a JSON ``{"url": ...}`` answers 400 ``InvalidImageUrl`` because the
fake fetches nothing; a missing or unknown api-version answers 400 ``UnsupportedApiVersion`` and an
unknown model-version 400 ``InvalidModel``; text errors use inner code ``BadArgument``; images whose
pixel count trips Pillow's decompression-bomb guard (more than ~179 MP) answer
``InvalidImageDimension``, although the real limit (sides under 16,000 px) would allow some of them.

Vectors are deterministic and *semantically useful*: an image maps to the direction of its dominant
colour (the palette colour nearest the mean RGB of a thumbnail), a text to the sum of the directions
of the colour words it contains, each plus a little noise seeded by the exact input, so "a red car"
scores high against red images. Directions depend on the model version, as real models' do.

Fault injection (``fail_next``, ``delay_next``, ``close_connection_next``, ``malformed_next``, ...)
queues scripted answers consumed one per request, before normal handling; ``latency`` and
``rate_limit_per_second`` shape every request, for benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from PIL import Image, ImageColor

IMAGE_PATH = "/computervision/retrieval:vectorizeImage"
TEXT_PATH = "/computervision/retrieval:vectorizeText"
API_VERSIONS = ("2024-02-01", "2023-02-01-preview")
MODEL_VERSIONS = ("2023-04-15", "2022-04-11")
DIMENSION = 1024
MAX_IMAGE_BYTES = 20_971_520
MAX_TEXT_WORDS = 70
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "ICO", "TIFF", "MPO"})

PALETTE = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "cyan")
SYNONYMS = {"grey": "gray", "violet": "purple", "scarlet": "red", "crimson": "red", "navy": "blue", "lime": "green"}
_PALETTE_RGB = np.array([ImageColor.getrgb(name)[:3] for name in PALETTE], dtype=np.float64)
NOISE = 0.3  # relative size of the per-input noise next to the colour direction

UNAUTHORIZED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)


# --- vectors -----------------------------------------------------------------------------------
def _seed(*parts: str | bytes) -> int:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return int.from_bytes(digest.digest()[:8], "big")


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIMENSION)
    return v / np.linalg.norm(v)


@lru_cache(maxsize=256)
def _colour_direction(model_version: str, colour: str) -> np.ndarray:
    return _unit(_seed("colour", model_version, colour))


def colour_words(text: str) -> list[str]:
    """The palette colours named in ``text`` (synonyms such as grey → gray resolved), in order."""
    found = []
    for word in re.findall(r"[a-z]+", text.lower()):
        colour = SYNONYMS.get(word, word)
        if colour in PALETTE:
            found.append(colour)
    return found


def dominant_colour(data: bytes) -> str:
    """The palette colour nearest the mean RGB of a small thumbnail of the image."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (32, 32))  # JPEG decodes at reduced size: fast for big photos
        thumb = img.convert("RGB").resize((16, 16))
        mean = np.asarray(thumb, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return PALETTE[int(np.argmin(((_PALETTE_RGB - mean) ** 2).sum(axis=1)))]


def _image_vector(data: bytes, model_version: str) -> np.ndarray:
    v = _colour_direction(model_version, dominant_colour(data)) + NOISE * _unit(_seed("image", model_version, data))
    return v / np.linalg.norm(v)


def _text_vector(text: str, model_version: str) -> np.ndarray:
    noise = _unit(_seed("text", model_version, text))
    colours = colour_words(text)
    if not colours:
        return noise
    v = sum((_colour_direction(model_version, c) for c in colours), np.zeros(DIMENSION)) + NOISE * noise
    return v / np.linalg.norm(v)


# --- scripted answers --------------------------------------------------------------------------
@dataclass
class _Step:
    kind: str  # "respond", "delay" or "close"
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def error_body(code: str, message: str, inner_code: str | None = None, inner_message: str | None = None) -> bytes:
    """The service's error JSON."""
    error: dict[str, Any] = {"code": code, "message": message}
    if inner_code is not None:
        error["innererror"] = {"code": inner_code, "message": inner_message or message}
    return json.dumps({"error": error}).encode()


class _Reject(Exception):
    """An error answer in the service's shape."""

    def __init__(
        self, status: int, code: str, message: str, inner_code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(code, message, inner_code), headers or {}


class FakeVision:
    """The fake service; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        key: str | None = "fake-vision-key",
        tokens: tuple[str, ...] = ("fake-entra-token",),
        latency: float = 0.0,
        rate_limit_per_second: float | None = None,
    ) -> None:
        self.key = key
        self._tokens = set(tokens)
        self._initial = (key, set(tokens))
        self.latency = latency
        self.image_storm_until: float | None = None
        self._lock = threading.Lock()
        self._steps: deque[_Step] = deque()
        self._calls: list[dict[str, Any]] = []
        self._connections: set[socket.socket] = set()
        self._rate: float | None = None
        self._bucket = 0.0
        self._bucket_time = 0.0
        self.rate_limit_per_second = rate_limit_per_second
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeVision:
        handler = type("Handler", (_Handler,), {"fake": self})
        server = _Server(("127.0.0.1", 0), handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (a client then sees the service as down)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeVision:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeVision is not started")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Like ``https://<name>.cognitiveservices.azure.com/``: ends with a slash."""
        return f"http://127.0.0.1:{self.port}/"

    # --- configuration -----------------------------------------------------------------------
    def accept_token(self, token: str) -> None:
        """Accept ``Authorization: Bearer <token>`` from now on."""
        with self._lock:
            self._tokens.add(token)

    @property
    def rate_limit_per_second(self) -> float | None:
        return self._rate

    @rate_limit_per_second.setter
    def rate_limit_per_second(self, rate: float | None) -> None:
        """Token bucket of ``max(1, rate)`` requests; beyond it 429 with ``Retry-After`` in whole seconds."""
        with self._lock:
            self._rate = rate
            self._bucket = max(1.0, rate or 0.0)
            self._bucket_time = time.monotonic()

    def reset(self) -> None:
        """Forget scripted answers and recorded calls; back to no latency, no rate limit, initial auth."""
        with self._lock:
            self._steps.clear()
            self._calls.clear()
            self.key, tokens = self._initial
            self._tokens = set(tokens)
        self.latency = 0.0
        self.rate_limit_per_second = None
        self.image_storm_until = None

    # --- fault injection ---------------------------------------------------------------------
    def _script(self, step: _Step, times: int) -> None:
        with self._lock:
            self._steps.extend(step for _ in range(times))

    def respond_next(
        self,
        status: int = 200,
        *,
        json_body: Any = None,
        body: bytes | str | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests with exactly this, whatever they ask."""
        if body is None:
            raw = json.dumps(json_body).encode() if json_body is not None else b""
        else:
            raw = body.encode() if isinstance(body, str) else body
        self._script(_Step("respond", status, raw, content_type, dict(headers or {})), times)

    def fail_next(
        self,
        status: int = 503,
        *,
        retry_after: str | float | None = None,
        times: int = 1,
        code: str | None = None,
        message: str | None = None,
        inner_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Fail the next ``times`` requests with ``status`` and the service's error body."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        if message is None:
            message = {
                429: "Rate limit is exceeded. Try again later.",
                500: "An unexpected error occurred.",
                503: "The service is temporarily unavailable.",
            }.get(status, f"Fake failure {status}.")
        body = error_body(code or str(status), message, inner_code)
        self.respond_next(status, body=body, headers=extra, times=times)

    def storm_images(self, seconds: float) -> None:
        """Answer every image call 429 (``Retry-After: 1``) for ``seconds`` from now; text calls pass."""
        self.image_storm_until = time.monotonic() + seconds

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Wait ``seconds`` before handling the next ``times`` requests normally."""
        self._script(_Step("delay", seconds=seconds), times)

    def close_connection_next(self, *, times: int = 1) -> None:
        """Read the next request, then reset the connection without answering."""
        self._script(_Step("close"), times)

    def malformed_next(self, body: str | bytes = "not json", *, times: int = 1) -> None:
        """Answer 200 with a body that is not the contract's JSON."""
        self.respond_next(200, body=body, times=times)

    def wrong_vector_next(self, length: int = 512, *, model_version: str = MODEL_VERSIONS[0], times: int = 1) -> None:
        """Answer 200 with a vector of the wrong length."""
        self.respond_next(200, json_body={"modelVersion": model_version, "vector": [0.01] * length}, times=times)

    def wrong_model_version_next(self, model_version: str = "2022-04-11", *, times: int = 1) -> None:
        """Answer 200 with a well-formed vector of another model version."""
        vector = [0.01] * DIMENSION
        self.respond_next(200, json_body={"modelVersion": model_version, "vector": vector}, times=times)

    # --- records ------------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request so far, oldest first: method, path, kind, query, headers (lower-case names),
        body_length, sha256, json (the parsed body when JSON), client_port, timestamp, monotonic, status."""
        with self._lock:
            return [dict(call) for call in self._calls]

    def calls(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests, only those of ``kind`` ("image" or "text") when given."""
        return [c for c in self.requests if kind is None or c["kind"] == kind]

    # --- expected answers ------------------------------------------------------------------------
    @staticmethod
    def vector_for_image(data: bytes, model_version: str = MODEL_VERSIONS[0]) -> np.ndarray:
        """The vector (float32, as a client parses it) this fake answers for these image bytes."""
        return _image_vector(data, model_version).astype(np.float32)

    @staticmethod
    def vector_for_text(text: str, model_version: str = MODEL_VERSIONS[0]) -> np.ndarray:
        """The vector (float32, as a client parses it) this fake answers for this text."""
        return _text_vector(text, model_version).astype(np.float32)

    # --- used by the handler -------------------------------------------------------------------
    def _record(self, call: dict[str, Any]) -> None:
        with self._lock:
            self._calls.append(call)

    def _set_status(self, call: dict[str, Any], status: int | None) -> None:
        with self._lock:
            call["status"] = status

    def _pop_step(self) -> _Step | None:
        with self._lock:
            return self._steps.popleft() if self._steps else None

    def _authorised(self, headers: dict[str, str]) -> bool:
        with self._lock:
            key, tokens = self.key, set(self._tokens)
        if key is not None and headers.get("ocp-apim-subscription-key") == key:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() in tokens

    def _throttle(self) -> float | None:
        """None when the request may pass; else seconds until the bucket holds a token."""
        with self._lock:
            if self._rate is None:
                return None
            now = time.monotonic()
            capacity = max(1.0, self._rate)
            self._bucket = min(capacity, self._bucket + (now - self._bucket_time) * self._rate)
            self._bucket_time = now
            if self._bucket >= 1.0:
                self._bucket -= 1.0
                return None
            return (1.0 - self._bucket) / self._rate

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections (1 s SYN retry) under a burst of clients

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is not news


class _Handler(BaseHTTPRequestHandler):
    fake: FakeVision
    protocol_version = "HTTP/1.1"  # keep-alive, so a client's connection pool is exercised
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for the client's delayed ACK
    timeout = 30  # an idle kept-alive connection is closed after this long

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        self.fake._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the records, not stderr

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def _serve(self) -> None:
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        kind = {IMAGE_PATH: "image", TEXT_PATH: "text"}.get(url.path) if self.command == "POST" else None
        call: dict[str, Any] = {
            "method": self.command,
            "path": url.path,
            "kind": kind,
            "query": dict(parse_qsl(url.query, keep_blank_values=True)),
            "headers": headers,
            "body_length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "json": _json_or_none(body, headers),
            "client_port": self.client_address[1],
            "timestamp": time.time(),
            "monotonic": time.monotonic(),
            "status": None,
        }
        self.fake._record(call)

        step = self.fake._pop_step()
        if self.fake.latency:
            time.sleep(self.fake.latency)
        if step is not None and step.kind == "delay":
            time.sleep(step.seconds)
        elif step is not None and step.kind == "close":
            # SO_LINGER 0: closing sends a TCP reset, like a dropped connection mid-request.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        elif step is not None:
            self._send(call, step.status, step.body, step.content_type, step.headers)
            return

        try:
            status, answer = self._answer(url.path, kind, call["query"], headers, body)
        except _Reject as reject:
            self._send(call, reject.status, reject.body, "application/json", reject.headers)
            return
        self._send(call, status, answer, "application/json", {})

    def _answer(
        self, path: str, kind: str | None, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if not self.fake._authorised(headers):
            raise _Reject(401, "401", UNAUTHORIZED_MESSAGE)
        storm = self.fake.image_storm_until
        if kind == "image" and storm is not None and time.monotonic() < storm:
            message = "Rate limit is exceeded. Try again in 1 seconds."
            raise _Reject(429, "429", message, headers={"Retry-After": "1"})
        wait = self.fake._throttle()
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            message = f"Rate limit is exceeded. Try again in {seconds} seconds."
            raise _Reject(429, "429", message, headers={"Retry-After": str(seconds)})
        if kind is None:
            raise _Reject(404, "404", "Resource not found")
        api_version, model_version = query.get("api-version"), query.get("model-version")
        for name, value, supported, inner in (
            ("api-version", api_version, API_VERSIONS, "UnsupportedApiVersion"),
            ("model-version", model_version, MODEL_VERSIONS, "InvalidModel"),
        ):
            if value not in supported:
                problem = "is missing" if value is None else f"{value!r} is not supported"
                message = f"The {name} query parameter {problem}; supported: {', '.join(supported)}."
                raise _Reject(400, "InvalidRequest", message, inner)
        assert model_version is not None
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "image":
            vector = self._vectorize_image(content_type, body, model_version)
        else:
            vector = self._vectorize_text(content_type, body, model_version)
        return 200, json.dumps({"modelVersion": model_version, "vector": vector.tolist()}).encode()

    @staticmethod
    def _vectorize_image(content_type: str, body: bytes, model_version: str) -> np.ndarray:
        if content_type == "application/json":
            url = (_json_or_none(body, {"content-type": content_type}) or {}).get("url")
            raise _Reject(
                400,
                "InvalidRequest",
                f"Image URL {url!r} is not reachable (the fake Vision server fetches no URLs).",
                "InvalidImageUrl",
            )
        if content_type != "application/octet-stream":
            raise _Reject(
                400,
                "InvalidRequest",
                f"Content-Type {content_type or '(none)'!r} is not supported; send application/octet-stream.",
                "UnsupportedMediaType",
            )
        if not body or len(body) > MAX_IMAGE_BYTES:
            raise _Reject(
                400,
                "InvalidRequest",
                f"Image size is not allowed to be zero or larger than {MAX_IMAGE_BYTES} bytes.",
                "InvalidImageSize",
            )
        try:
            with Image.open(io.BytesIO(body)) as img:
                fmt, (width, height) = img.format, img.size
        except Image.DecompressionBombError:
            raise _Reject(400, "InvalidRequest", "The image has too many pixels.", "InvalidImageDimension") from None
        except Exception:
            raise _Reject(400, "InvalidRequest", "Input data is not a valid image.", "InvalidImageFormat") from None
        if fmt not in IMAGE_FORMATS:
            raise _Reject(
                400, "InvalidRequest", f"Image format {fmt} is not supported.", "InvalidImageFormat"
            ) from None
        if not (10 < width < 16000 and 10 < height < 16000):
            raise _Reject(
                400,
                "InvalidRequest",
                f"Image dimensions {width}x{height} are out of range: each side must be more than 10 and "
                "less than 16000 pixels.",
                "InvalidImageDimension",
            )
        try:
            return _image_vector(body, model_version)
        except Exception:  # truncated or corrupt pixel data
            raise _Reject(400, "InvalidRequest", "Input data is not a valid image.", "InvalidImageFormat") from None

    @staticmethod
    def _vectorize_text(content_type: str, body: bytes, model_version: str) -> np.ndarray:
        if content_type != "application/json":
            raise _Reject(
                400,
                "InvalidRequest",
                f"Content-Type {content_type or '(none)'!r} is not supported; send application/json.",
                "UnsupportedMediaType",
            )
        payload = _json_or_none(body, {"content-type": content_type})
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _Reject(400, "InvalidRequest", "The text parameter is required and must not be empty.", "BadArgument")
        if len(text.split()) > MAX_TEXT_WORDS:
            raise _Reject(400, "InvalidRequest", f"The text must have at most {MAX_TEXT_WORDS} words.", "BadArgument")
        return _text_vector(text, model_version)

    def _send(self, call: dict[str, Any], status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.fake._set_status(call, status)
        try:
            self.send_response(status)
            if body:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("apim-request-id", call["sha256"][:32])
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client gave up (its timeout) before we answered
            self.close_connection = True


def _json_or_none(body: bytes, headers: dict[str, str]) -> Any:
    if "json" not in headers.get("content-type", "") or not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def iter_palette() -> Iterator[tuple[str, tuple[int, int, int]]]:
    """The palette's names and RGB values, e.g. to draw test images of a known dominant colour."""
    for name, rgb in zip(PALETTE, _PALETTE_RGB.astype(int).tolist(), strict=True):
        yield name, (rgb[0], rgb[1], rgb[2])
