"""Whatever a client sends, the search API answers with a documented status and body, never a 500.

Hypothesis throws arbitrary query strings, parameters (huge or negative k, SQL metacharacters, path
traversal, lone surrogates from undecodable bytes, very long strings), headers and bodies at the
registered functions; each answer is validated against the OpenAPI document the API serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.runtime import Runtime
from shared.search import OPTION_NAMES
from tests.appfns import handler
from tests.conftest import Catalogue
from tests.imagegen import image_bytes
from tests.test_api import ROUTES, check_contract

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any code point, lone surrogates included: what undecodable bytes in a URL become.
anything = st.text(alphabet=st.characters(exclude_categories=[]), max_size=40)
nasty = st.sampled_from(
    [
        "'; DROP TABLE images; --",
        "%",
        "_",
        "\\",
        "%%_\\%",
        "../../etc/passwd",
        "..%2F..%2Fetc",
        "\x00",
        "\udcff\udcfe",
        "NaN",
        "Infinity",
        "-1",
        "0",
        "1e308",
        "9" * 400,
        "-9223372036854775809",
        "x" * 10_000,
        "red " * 80,
        "2024-02-30",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "image/png,image/jpeg",
        "eyJkIjowLjUsImkiOjEsInEiOiJ4In0",
        "",
        " ",
    ]
)
value = st.one_of(anything, nasty, st.integers(-(2**70), 2**70).map(str), st.floats().map(str))
known = st.sampled_from([*OPTION_NAMES, "q", "format", "code"])
# Mostly names the endpoints know, so that values get past the unknown-parameter check.
params = st.one_of(
    st.dictionaries(known, value, max_size=6),
    st.dictionaries(known, value, max_size=3).map(lambda d: {"q": "a red car", **d}),
    st.dictionaries(st.one_of(known, anything), value, max_size=6),
)
image_id = st.one_of(
    st.integers(-(2**70), 2**70).map(str), anything, nasty, st.sampled_from(["1", "00001", " 7 ", "1/similar"])
)

_IMAGES = [
    image_bytes("red", (32, 32), "PNG"),
    image_bytes("blue", (40, 20), "JPEG"),
    image_bytes("green", (16, 16), "GIF"),
    image_bytes("white", (8, 8), "PNG"),
]
image_body = st.one_of(
    st.sampled_from(_IMAGES),
    st.binary(max_size=300),
    st.tuples(st.sampled_from(_IMAGES), st.integers(1, 200)).map(lambda t: t[0][: t[1]]),  # truncated
)
json_body = st.one_of(
    st.dictionaries(
        st.sampled_from(["text", *OPTION_NAMES]), st.one_of(value, st.integers(), st.floats(), st.none())
    ).map(lambda d: json.dumps(d).encode()),
    st.recursive(
        st.none() | st.booleans() | st.integers() | anything, lambda c: st.lists(c) | st.dictionaries(anything, c)
    ).map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
)
content_type = st.one_of(
    st.sampled_from(
        ["image/png", "image/jpeg", "application/octet-stream", "application/json", "text/plain", "", "image/*"]
    ),
    anything,
)
headers = st.fixed_dictionaries(
    {"Content-Type": content_type},
    optional={"Content-Length": st.one_of(st.integers(-5, 2**40).map(str), anything), "Accept": anything},
)


@pytest.fixture
def some_images(runtime: Runtime, catalogue: Catalogue) -> Iterator[list[int]]:
    ids = [catalogue.add(f"p/{i}.png", colour, seed=i) for i, colour in enumerate(["red", "blue", "green"] * 2)]
    ids.append(catalogue.fail("p/broken.png"))
    yield ids


def _call(name: str, req: func.HttpRequest, method: str) -> None:
    resp = handler(name)(req)
    event(f"{name} {resp.status_code}")  # the spread of answers: pytest --hypothesis-show-statistics
    assert resp.status_code != 500, resp.get_body()
    check_contract(resp, ROUTES[name], method)


def _request(method: str, path: str, *, params: dict[str, str], hdrs: Any = None, body: bytes = b"", **kw: Any) -> Any:
    return func.HttpRequest(method, f"http://localhost/api{path}", headers=hdrs or {}, params=params, body=body, **kw)


@SETTINGS
@given(params=params)
def test_text_search_with_any_query_string(some_images: list[int], params: dict[str, str]) -> None:
    _call("search", _request("GET", "/search", params=params), "GET")


@SETTINGS
@given(params=params, hdrs=headers, body=st.one_of(image_body, json_body))
def test_post_search_with_any_headers_and_body(
    some_images: list[int], params: dict[str, str], hdrs: dict[str, str], body: bytes
) -> None:
    _call("search", _request("POST", "/search", params=params, hdrs=hdrs, body=body), "POST")


@SETTINGS
@given(params=params, body=st.one_of(image_body, json_body), ctype=st.sampled_from(["image/png", "application/json"]))
def test_post_search_with_a_plausible_content_type(
    some_images: list[int], params: dict[str, str], body: bytes, ctype: str
) -> None:
    _call("search", _request("POST", "/search", params=params, hdrs={"Content-Type": ctype}, body=body), "POST")


@SETTINGS
@given(iid=st.one_of(image_id, st.none()), params=params, known=st.integers(0, 6))
def test_similar_and_image_with_any_id_and_parameters(
    some_images: list[int], iid: str | None, params: dict[str, str], known: int
) -> None:
    target = iid if iid is not None else str(some_images[known])
    for name in ("similar", "image"):
        path = ROUTES[name].replace("{id}", "x")
        _call(name, _request("GET", path, params=params, route_params={"id": target}), "GET")


@SETTINGS
@given(
    k=st.integers(1, 100),
    prefix=st.sampled_from(["", "p/", "p/1", "%", "_"]),
    min_score=st.floats(-1, 1),
    after=st.sampled_from(["", "2020-01-01", "2100-01-01T00:00:00Z"]),
)
def test_valid_queries_always_answer_200_sorted_and_within_the_filters(
    some_images: list[int], k: int, prefix: str, min_score: float, after: str
) -> None:
    query = {"q": "a red thing", "k": str(k), "prefix": prefix, "min_score": repr(min_score), "uploaded_after": after}
    resp = handler("search")(_request("GET", "/search", params=query))
    body = check_contract(resp, "/search", "GET")
    assert resp.status_code == 200
    results = body["results"]
    assert len(results) <= k
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(r["name"].startswith(prefix) and r["score"] >= min_score - 1e-6 for r in results)
