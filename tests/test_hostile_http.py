"""Hostile HTTP input over real HTTP: no input a client sends produces a 500 or an undocumented answer.

tests/test_api_properties.py throws Hypothesis-made requests at the registered functions in process.
Here the requests cross a real socket to the test HTTP front (tests/http_adapter.py), as a client's
would: schemathesis derives them from the OpenAPI document the API serves (shared/openapi.json), valid
and invalid, and checks every answer against it (status documented, content type, body schema, no
server error); then explicit cases that generators reach rarely: SQL metacharacters, path traversal
in ids, huge and negative k, bodies over 20 MB, wrong content types, invalid UTF-8, very long query
strings. After them the collection is intact and the worker still answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance, unsupported_method

from shared.api import openapi_document
from shared.runtime import Runtime
from shared.settings import get_settings
from tests.appfns import registered
from tests.badfiles import Tally
from tests.conftest import Catalogue
from tests.http_adapter import FunctionsHost
from tests.imagegen import image_bytes

KEY = "hostile-http-function-key"
tally = Tally("test_hostile_http")


@pytest.fixture(scope="module", autouse=True)
def _save_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tally.save(request.config)


@pytest.fixture
def host(runtime: Runtime, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionsHost]:
    """The HTTP front over a small collection: indexed images (bytes in Azurite) and one failed row;
    the process environment the health check reads is the runtime's."""
    for key in ("DATABASE_URL", "VISION_ENDPOINT", "VISION_KEY", "ImagesStorage", "IMAGES_CONTAINER"):
        monkeypatch.setenv(key, runtime.settings.raw(key) or "")
    get_settings.cache_clear()
    for i, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        catalogue.add(f"gallery/{colour}-{i}.png", colour, seed=i, upload=True)
    catalogue.fail("gallery/broken.png")
    with FunctionsHost(registered(), key=KEY) as h:
        yield h
    tally.add("http_requests_sent", len(h.calls))
    tally.add("http_500_answers", sum(1 for _, _, status in h.calls if status >= 500 and status != 503))
    get_settings.cache_clear()


def image_ids(runtime: Runtime) -> list[str]:
    with runtime.store.pool.connection() as conn:
        return [str(r[0]) for r in conn.execute("SELECT id FROM images ORDER BY name").fetchall()]


def collection(runtime: Runtime) -> list[tuple[Any, ...]]:
    with runtime.store.pool.connection() as conn:
        return conn.execute(
            "SELECT i.id, i.name, i.status, i.sha256, count(v.image_id) FROM images i "
            "LEFT JOIN image_vectors v ON v.image_id = i.id GROUP BY i.id ORDER BY i.id"
        ).fetchall()


# --- generated from the OpenAPI document ----------------------------------------------------------

# Valid and invalid requests. Methods a route does not declare are the Functions host's to refuse (it
# answers 404 before any function runs), not the app's, so none are sent.
# The function key is given as the document's security scheme, so schemathesis also sends requests
# without it or with a wrong one, and checks that they are refused.
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all"},
        "phases": {"coverage": {"unexpected-methods": []}},
        "auth": {"openapi": {"functionKeyHeader": {"api_key": KEY}}},
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_generated_requests_get_documented_answers(case: schemathesis.Case, host: FunctionsHost) -> None:
    response = case.call(base_url=host.base_url, timeout=30)
    tally.add("generated_requests")
    content_type = " ".join(response.headers.get("content-type", []))  # schemathesis: lower-case names, lists
    if response.status_code == 414 and content_type.startswith("text/html"):
        # A URL beyond the HTTP front's request-line limit (64 kB here; the Functions host has its own)
        # never reaches a function: the front refuses it, so there is nothing of the app's to check.
        tally.add("generated_requests_refused_by_the_front")
        return
    assert response.status_code != 500, response.text[:500]
    # Schema-valid is not always valid: an opaque cursor or a date range can still be refused (400).
    excluded = [positive_data_acceptance, unsupported_method]
    if _has_empty_option(response.request):
        tally.add("generated_requests_with_empty_options")  # documented: empty or null means the default
    case.validate_response(response, excluded_checks=excluded)


def _has_empty_option(request: Any) -> bool:
    if any(value == "" for _, value in parse_qsl(urlsplit(str(request.url)).query, keep_blank_values=True)):
        return True
    if "json" not in str(request.headers.get("Content-Type", "")):
        return False
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return False
    return isinstance(body, dict) and any(
        value is None or value == "" for name, value in body.items() if name != "text"
    )


# --- explicit hostile requests -------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One request: ``target`` is the path and query after /api, sent exactly as written (so that
    invalid percent-escapes reach the server); the answer must have ``status`` and error ``code``."""

    id: str
    method: str
    target: str
    status: int
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | Callable[[], bytes] = b""


SQL = [
    "'; DROP TABLE images; --",
    '" OR 1=1 --',
    "%' OR '1'='1",
    "1); SELECT pg_sleep(10); --",
    "x' UNION SELECT id, name FROM images --",
    "$$; DELETE FROM image_vectors; $$",
]
TRAVERSAL = [
    "..%2F..%2Fetc%2Fpasswd",  # a client normalises a literal ../ away before sending
    "..%2F..%2Fimages",
    "%2e%2e%2f%2e%2e%2f",
    "1%2F..%2F2",
    "%00",
    "1%00",
    "..\\..\\boot.ini",
]
BAD_K = [
    "-1",
    "0",
    "101",
    "1" + "0" * 30,
    "-" + "9" * 25,
    "1e3",
    "10.5",
    "0x10",
    "NaN",
    "Infinity",
    "1%00",
    "%EF%BC%91",
]


def _q(text: str) -> str:
    return quote(text, safe="")


def _big(n: int) -> Callable[[], bytes]:
    return lambda: image_bytes("red", (64, 48)) + b"\0" * (n - len(image_bytes("red", (64, 48))))


HOSTILE: tuple[Hostile, ...] = (
    # SQL metacharacters: a text query is just text; filters and ids never reach SQL unparameterised.
    *(Hostile(f"sql-in-q-{i}", "GET", f"/search?q={_q(s)}", 200) for i, s in enumerate(SQL)),
    *(Hostile(f"sql-in-prefix-{i}", "GET", f"/search?q=red&prefix={_q(s)}", 200) for i, s in enumerate(SQL)),
    *(
        Hostile(f"sql-in-content-type-{i}", "GET", f"/search?q=red&content_type={_q(s)}", 400, "InvalidParameter")
        for i, s in enumerate(SQL)
    ),
    *(
        Hostile(f"sql-in-cursor-{i}", "GET", f"/search?q=red&cursor={_q(s)}", 400, "InvalidCursor")
        for i, s in enumerate(SQL)
    ),
    *(Hostile(f"sql-in-id-{i}", "GET", f"/images/{_q(s)}/similar", 404, "ImageNotFound") for i, s in enumerate(SQL)),
    Hostile(
        "sql-in-json-text",
        "POST",
        "/search",
        200,
        headers=(("Content-Type", "application/json"),),
        body=json.dumps({"text": SQL[0]}).encode(),
    ),
    # Path traversal in ids (the route takes one path segment; escapes are decoded before the handler).
    *(
        Hostile(f"traversal-similar-{i}", "GET", f"/images/{t}/similar", 404, "ImageNotFound")
        for i, t in enumerate(TRAVERSAL)
    ),
    *(Hostile(f"traversal-image-{i}", "GET", f"/images/{t}", 404, "ImageNotFound") for i, t in enumerate(TRAVERSAL)),
    # k out of range or not a whole number.
    *(Hostile(f"k-{i}", "GET", f"/search?q=red&k={k}", 400, "InvalidParameter") for i, k in enumerate(BAD_K)),
    Hostile("k-100-is-fine", "GET", "/search?q=red&k=100", 200),
    Hostile(
        "k-json-huge",
        "POST",
        "/search",
        400,
        "InvalidParameter",
        (("Content-Type", "application/json"),),
        b'{"text": "red", "k": 1e999}',
    ),
    Hostile(
        "k-json-negative",
        "POST",
        "/search",
        400,
        "InvalidParameter",
        (("Content-Type", "application/json"),),
        b'{"text": "red", "k": -5}',
    ),
    Hostile(
        "k-json-bool",
        "POST",
        "/search",
        400,
        "InvalidParameter",
        (("Content-Type", "application/json"),),
        b'{"text": "red", "k": true}',
    ),
    # Enormous bodies.
    Hostile(
        "image-25MB",
        "POST",
        "/search",
        413,
        "PayloadTooLarge",
        (("Content-Type", "image/jpeg"),),
        _big(25 * 1024 * 1024),
    ),
    Hostile(
        "image-20MB-plus-1",
        "POST",
        "/search",
        413,
        "PayloadTooLarge",
        (("Content-Type", "image/jpeg"),),
        _big(20 * 1024 * 1024 + 1),
    ),
    Hostile(
        "json-1MB",
        "POST",
        "/search",
        413,
        "PayloadTooLarge",
        (("Content-Type", "application/json"),),
        b'{"text": "' + b"a " * 500_000 + b'"}',
    ),
    # Wrong content types.
    Hostile(
        "text-plain", "POST", "/search", 415, "UnsupportedMediaType", (("Content-Type", "text/plain"),), b"a red car"
    ),
    Hostile(
        "form-urlencoded",
        "POST",
        "/search",
        415,
        "UnsupportedMediaType",
        (("Content-Type", "application/x-www-form-urlencoded"),),
        b"text=red",
    ),
    Hostile(
        "multipart",
        "POST",
        "/search",
        415,
        "UnsupportedMediaType",
        (("Content-Type", "multipart/form-data; boundary=x"),),
        b"--x\r\n\r\nred\r\n--x--",
    ),
    Hostile(
        "xml",
        "POST",
        "/search",
        415,
        "UnsupportedMediaType",
        (("Content-Type", "application/xml"),),
        b"<text>red</text>",
    ),
    Hostile("no-content-type", "POST", "/search", 415, "UnsupportedMediaType", (), image_bytes("red")),
    Hostile(
        "svg-as-image",
        "POST",
        "/search",
        415,
        "UnsupportedImage",
        (("Content-Type", "image/svg+xml"),),
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ),
    Hostile(
        "html-as-png",
        "POST",
        "/search",
        415,
        "UnsupportedImage",
        (("Content-Type", "image/png"),),
        b"<html><script>alert(1)</script></html>",
    ),
    Hostile("jpeg-labelled-png", "POST", "/search", 200, None, (("Content-Type", "image/png"),), image_bytes("red")),
    Hostile(
        "bomb-as-image",
        "POST",
        "/search",
        415,
        "UnsupportedImage",
        (("Content-Type", "image/png"),),
        lambda: badfile("decompression-bomb-header-15000"),
    ),
    Hostile(
        "json-utf16",
        "POST",
        "/search",
        400,
        "InvalidJson",
        (("Content-Type", "application/json; charset=utf-16"),),
        '{"text": "red"}'.encode("utf-16"),
    ),
    Hostile(
        "json-deeply-nested",
        "POST",
        "/search",
        400,
        "InvalidJson",
        (("Content-Type", "application/json"),),
        b"[" * 30_000 + b"]" * 30_000,
    ),
    Hostile(
        "json-not-an-object", "POST", "/search", 400, "InvalidJson", (("Content-Type", "application/json"),), b'"red"'
    ),
    # Invalid UTF-8: the HTTP front decodes it to U+FFFD (the Functions host may pass it on differently;
    # test_api_properties.py sends lone surrogates too); either way it is then text, searched or refused.
    Hostile("utf8-invalid-q", "GET", "/search?q=%FF%FE%FD", 200),
    Hostile("utf8-overlong-q", "GET", "/search?q=%C0%AF", 200),
    Hostile("utf8-surrogate-q", "GET", "/search?q=%ED%A0%80", 200),
    Hostile("utf8-invalid-prefix", "GET", "/search?q=red&prefix=%FF", 200),
    Hostile("k-whitespace-is-trimmed", "GET", "/search?q=red&k=%20%2010", 200),
    Hostile("utf8-invalid-id", "GET", "/images/%FF%FE/similar", 404, "ImageNotFound"),
    Hostile(
        "utf8-invalid-json",
        "POST",
        "/search",
        400,
        "InvalidJson",
        (("Content-Type", "application/json"),),
        b'{"text": "\xff\xfe red"}',
    ),
    Hostile("nul-in-q", "GET", "/search?q=red%00car", 400, "InvalidParameter"),
    Hostile("bidi-and-zero-width-q", "GET", f"/search?q={_q('re‮d ca​r 🚗')}", 200),
    # Very long query strings.
    Hostile("q-71-words", "GET", f"/search?q={_q('red ' * 71)}", 400, "InvalidParameter"),
    Hostile("q-one-20k-word", "GET", f"/search?q={'r' * 20_000}", 400, "InvalidParameter"),
    Hostile("prefix-5000", "GET", f"/search?q=red&prefix={'p' * 5000}", 400, "InvalidParameter"),
    Hostile("cursor-5000", "GET", f"/search?q=red&cursor={'A' * 5000}", 400, "InvalidCursor"),
    Hostile(
        "many-parameters", "GET", "/search?q=red&" + "&".join(f"p{i}=x" for i in range(2000)), 400, "UnknownParameter"
    ),
    Hostile("repeated-k", "GET", "/search?q=red" + "&k=5" * 2000, 200),
    Hostile("id-2-to-the-64", "GET", f"/images/{2**64}/similar", 404, "ImageNotFound"),
    Hostile("id-negative", "GET", "/images/-1/similar", 404, "ImageNotFound"),
)


def badfile(id_: str) -> bytes:
    from tests.badfiles import _bytes

    return _bytes(id_)


@pytest.mark.parametrize("case", HOSTILE, ids=[h.id for h in HOSTILE])
def test_a_hostile_request_gets_its_documented_answer(case: Hostile, host: FunctionsHost, runtime: Runtime) -> None:
    before = collection(runtime)
    body = case.body() if callable(case.body) else case.body
    headers = {"x-functions-key": KEY, **dict(case.headers)}
    started = time.monotonic()
    resp = requests.request(case.method, host.base_url + case.target, headers=headers, data=body, timeout=60)
    tally.add("hostile_inputs")
    assert resp.status_code == case.status, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("application/json")
    payload = resp.json()
    if case.code is not None:
        assert payload["error"]["code"] == case.code, payload
        assert payload["error"]["message"]
    assert time.monotonic() - started < 10, "nothing a client sends makes the server sleep"
    assert collection(runtime) == before, "a request changed the collection"
    # The worker still answers.
    ok = requests.get(f"{host.base_url}/search", params={"q": "red", "code": KEY}, timeout=10)
    assert ok.status_code == 200 and ok.json()["results"]
