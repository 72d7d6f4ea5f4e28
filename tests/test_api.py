"""The search API as the Functions host calls it: the registered functions, in process.

Every answer is checked against the OpenAPI document the API serves (shared/openapi.json): the
status must be documented for the operation, and the JSON body must match its schema.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import azure.functions as func
import pytest
from jsonschema import Draft202012Validator

from shared import api
from shared.runtime import Runtime
from shared.search import Searcher
from tests.appfns import bindings, handler
from tests.conftest import Catalogue
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes

# --- calling the functions, checking the contract --------------------------------------------------

ROUTES = {"search": "/search", "similar": "/images/{id}/similar", "image": "/images/{id}", "openapi": "/openapi.json"}


def call(
    name: str,
    method: str = "GET",
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    route_params: dict[str, str] | None = None,
) -> func.HttpResponse:
    """Call a registered HTTP function as the host would, and check its answer against the OpenAPI document."""
    path = ROUTES[name].replace("{id}", (route_params or {}).get("id", ""))
    req = func.HttpRequest(
        method,
        f"http://localhost:7071/api{path}",
        headers=headers or {},
        params=params or {},
        route_params=route_params or {},
        body=body,
    )
    resp = handler(name)(req)
    check_contract(resp, ROUTES[name], method)
    return resp


def body_of(resp: func.HttpResponse) -> Any:
    return json.loads(resp.get_body())


def error_of(resp: func.HttpResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_body()
    error = body_of(resp)["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def _jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema: ``nullable: true`` becomes a null type."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _jsonschema(v) for k, v in node.items() if k not in ("nullable", "example")}
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def _components() -> dict[str, Any]:
    return dict(_jsonschema(api.openapi_document()["components"]))


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    kind, name = ref.split("/")[-2:]
    return dict(api.openapi_document()["components"][kind][name])


def check_contract(resp: func.HttpResponse, path: str, method: str) -> Any:
    """The status is documented for the operation and the body matches its schema; returns the body."""
    operation = api.openapi_document()["paths"][path][method.lower()]
    documented = operation["responses"].get(str(resp.status_code))
    assert documented is not None, f"{method} {path} answered undocumented {resp.status_code}: {resp.get_body()!r}"
    documented = _resolve(documented)
    assert resp.mimetype == "application/json", resp.mimetype
    body = json.loads(resp.get_body().decode("utf-8"))
    schema = documented["content"]["application/json"]["schema"]
    Draft202012Validator({**_jsonschema(schema), "components": _components()}).validate(body)
    if resp.status_code == 503:
        assert int(resp.headers["Retry-After"]) >= 1
    if resp.status_code == 302:
        assert resp.headers["Location"].startswith("http")
    return body


# --- bindings --------------------------------------------------------------------------------------


def test_search_functions_need_the_function_key_and_health_is_anonymous() -> None:
    expected = {
        "search": ("search", ["GET", "POST"], "FUNCTION"),
        "similar": ("images/{id}/similar", ["GET"], "FUNCTION"),
        "image": ("images/{id}", ["GET"], "FUNCTION"),
        "openapi": ("openapi.json", ["GET"], "FUNCTION"),
        "health": ("health", ["GET"], "ANONYMOUS"),
    }
    for name, (route, methods, auth) in expected.items():
        (trigger,) = [b for b in bindings(name) if b["type"] == "httpTrigger"]
        assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == (route, methods, auth), name


def test_the_openapi_document_is_valid_openapi_3() -> None:
    from openapi_spec_validator import validate

    validate(copy.deepcopy(api.openapi_document()))


def test_the_openapi_document_is_served_and_describes_every_route() -> None:
    resp = call("openapi")
    doc = body_of(resp)
    assert resp.status_code == 200 and doc["openapi"].startswith("3.0")
    assert set(doc["paths"]) == {"/search", "/images/{id}/similar", "/images/{id}", "/openapi.json", "/health"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["functionKeyQuery"] == {**schemes["functionKeyQuery"], "in": "query", "name": "code"}
    assert schemes["functionKeyHeader"] == {**schemes["functionKeyHeader"], "in": "header", "name": "x-functions-key"}
    assert doc["paths"]["/health"]["get"]["security"] == []


# --- answers ---------------------------------------------------------------------------------------


@pytest.fixture
def colours(catalogue: Catalogue) -> dict[str, int]:
    ids = {}
    for colour in ("red", "blue", "green"):
        for i in range(3):
            ids[f"{colour}/{i}.png"] = catalogue.add(f"{colour}/{i}.png", colour, seed=i)
    return ids


def test_text_search_answers_results_sorted_by_score(runtime: Runtime, colours: dict[str, int]) -> None:
    resp = call("search", params={"q": "a red   house", "k": "4", "code": "the-function-key"})
    assert resp.status_code == 200
    body = body_of(resp)
    assert body["query"] == {
        "type": "text",
        "text": "a red house",
        "k": 4,
        "filters": {},
        "cursor": None,
        "model": runtime.model.model_id,
    }
    results = body["results"]
    assert len(results) == 4 and [r["name"].split("/")[0] for r in results[:3]] == ["red"] * 3
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert results[0]["id"] == str(colours[results[0]["name"]])
    assert body["next_cursor"]
    assert resp.headers["Cache-Control"] == "no-store"


def test_text_search_by_json_body_with_filters_and_paging(colours: dict[str, int]) -> None:
    first = call(
        "search",
        "POST",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"text": "blue", "k": 2, "prefix": "blue/"}).encode(),
    )
    page1 = body_of(first)
    assert [r["name"][:5] for r in page1["results"]] == ["blue/", "blue/"]
    assert page1["query"]["filters"] == {"prefix": "blue/"}
    second = call(
        "search",
        "POST",
        params={"cursor": page1["next_cursor"]},
        headers={"Content-Type": "application/json; charset=utf-8"},
        body=json.dumps({"text": "blue", "k": 2, "prefix": "blue/"}).encode(),
    )
    page2 = body_of(second)
    assert len(page2["results"]) == 1 and page2["next_cursor"] is None
    names = {r["name"] for r in page1["results"] + page2["results"]}
    assert names == {"blue/0.png", "blue/1.png", "blue/2.png"}


def test_image_search_takes_the_image_as_the_body(colours: dict[str, int]) -> None:
    data = image_bytes("green", (50, 40), "WEBP", seed=7)
    resp = call("search", "POST", params={"k": "3"}, headers={"Content-Type": "image/webp"}, body=data)
    body = body_of(resp)
    assert resp.status_code == 200 and body["query"]["type"] == "image"
    assert body["query"]["image"]["format"] == "WEBP" and body["query"]["image"]["width"] == 50
    assert [r["name"][:6] for r in body["results"]] == ["green/"] * 3
    octet = call("search", "POST", headers={"Content-Type": "application/octet-stream"}, body=data)
    assert octet.status_code == 200


def test_similar_and_image_links(runtime: Runtime, colours: dict[str, int], fake_vision: FakeVision) -> None:
    me = colours["red/0.png"]
    resp = call("similar", route_params={"id": str(me)}, params={"k": "2"})
    body = body_of(resp)
    assert resp.status_code == 200 and body["query"]["id"] == str(me)
    assert [r["name"] for r in body["results"]] and str(me) not in [r["id"] for r in body["results"]]
    assert all(r["name"].startswith("red/") for r in body["results"])
    assert fake_vision.requests == []

    redirect = call("image", route_params={"id": str(me)})
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert f"/{runtime.settings.images_container}/red/0.png?" in location and "sp=r" in location
    link = body_of(call("image", route_params={"id": str(me)}, params={"format": "json"}))
    assert link["name"] == "red/0.png" and link["url"].startswith("http") and link["status"] == "indexed"


# --- errors: 400 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "code", "parameter"),
    [
        ({}, "MissingParameter", "q"),
        ({"q": ""}, "MissingParameter", "q"),
        ({"q": "   "}, "MissingParameter", "q"),
        ({"q": " ".join(["word"] * 71)}, "InvalidParameter", "q"),
        ({"q": "red", "k": "0"}, "InvalidParameter", "k"),
        ({"q": "red", "k": "101"}, "InvalidParameter", "k"),
        ({"q": "red", "k": "-1"}, "InvalidParameter", "k"),
        ({"q": "red", "k": "ten"}, "InvalidParameter", "k"),
        ({"q": "red", "k": "99999999999999999999999"}, "InvalidParameter", "k"),
        ({"q": "red", "cursor": "not-a-cursor"}, "InvalidCursor", "cursor"),
        ({"q": "red", "uploaded_after": "last tuesday"}, "InvalidParameter", "uploaded_after"),
        ({"q": "red", "uploaded_before": "2024-02-30"}, "InvalidParameter", "uploaded_before"),
        ({"q": "red", "min_score": "2"}, "InvalidParameter", "min_score"),
        ({"q": "red", "content_type": "image"}, "InvalidParameter", "content_type"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    runtime: Runtime, params: dict[str, str], code: str, parameter: str
) -> None:
    error = error_of(call("search", params=params), 400, code)
    assert error["parameter"] == parameter


def test_unknown_parameters_are_refused_but_the_function_key_is_not(runtime: Runtime) -> None:
    error = error_of(call("search", params={"q": "red", "contenttype": "image/png"}), 400, "UnknownParameter")
    assert "contenttype" in error["message"] and "content_type" in error["message"]
    assert call("search", params={"q": "red", "code": "key"}).status_code == 200
    error_of(call("similar", route_params={"id": "1"}, params={"q": "red"}), 400, "UnknownParameter")


def test_a_cursor_of_another_query_is_400(runtime: Runtime, catalogue: Catalogue) -> None:
    for i in range(3):
        catalogue.add(f"{i}.png", seed=i)
    cursor = body_of(call("search", params={"q": "red", "k": "1"}))["next_cursor"]
    error_of(call("search", params={"q": "blue", "k": "1", "cursor": cursor}), 400, "InvalidCursor")
    assert call("search", params={"q": "red", "k": "2", "cursor": cursor}).status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "InvalidJson"),
        (b"\xff\xfe{}", "InvalidJson"),
        (b"[1, 2]", "InvalidJson"),
        (b"[" * 50_000, "InvalidJson"),
        (b"{}", "MissingParameter"),
        (b'{"text": 42}', "InvalidParameter"),
        (b'{"text": "red", "k": 5.5}', "InvalidParameter"),
        (b'{"text": "red", "k": 1e400}', "InvalidParameter"),
        (b'{"text": "red", "min_score": NaN}', "InvalidParameter"),
        (b'{"text": "red", "colour": "red"}', "UnknownParameter"),
        (b'{"text": "red", "content_type": {"a": 1}}', "InvalidParameter"),
    ],
)
def test_bad_json_bodies_are_400(runtime: Runtime, body: bytes, code: str) -> None:
    error_of(call("search", "POST", headers={"Content-Type": "application/json"}, body=body), 400, code)


def test_an_option_in_both_the_query_string_and_the_json_body_is_400(runtime: Runtime) -> None:
    resp = call(
        "search", "POST", params={"k": "3"}, headers={"Content-Type": "application/json"}, body=b'{"text":"a","k":3}'
    )
    error_of(resp, 400, "DuplicateParameter")


def test_an_empty_image_body_is_400(runtime: Runtime) -> None:
    error_of(call("search", "POST", headers={"Content-Type": "image/png"}), 400, "MissingBody")


def test_a_text_the_service_rejects_is_400(runtime: Runtime, fake_vision: FakeVision) -> None:
    fake_vision.fail_next(400, code="InvalidRequest", inner_code="BadArgument", message="The text is not valid.")
    error_of(call("search", params={"q": "red"}), 400, "TextRejected")


# --- errors: 404, 409 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_id", ["123", "0", "-5", "abc", "1.5", "9223372036854775808", "99999999999999999999", "..%2F..", "%00", ""]
)
def test_ids_that_name_no_image_are_404(runtime: Runtime, image_id: str) -> None:
    error_of(call("similar", route_params={"id": image_id}), 404, "ImageNotFound")
    error_of(call("image", route_params={"id": image_id}), 404, "ImageNotFound")


def test_an_image_that_failed_to_index_has_no_similar_images(runtime: Runtime, catalogue: Catalogue) -> None:
    failed = catalogue.fail("broken.jpg", "the JPEG file is truncated")
    error = error_of(call("similar", route_params={"id": str(failed)}), 409, "ImageNotIndexed")
    assert "truncated" in error["message"]
    assert body_of(call("image", route_params={"id": str(failed)}, params={"format": "json"}))["status"] == "failed"


def test_a_bad_link_format_is_400(runtime: Runtime, catalogue: Catalogue) -> None:
    iid = catalogue.add("a.png")
    error_of(call("image", route_params={"id": str(iid)}, params={"format": "xml"}), 400, "InvalidParameter")


# --- errors: 413, 415 ------------------------------------------------------------------------------


def test_an_image_over_20_mb_is_413_before_its_bytes_are_read(runtime: Runtime) -> None:
    class Unread(func.HttpRequest):
        def get_body(self) -> bytes:
            raise AssertionError("the body must not be read")

    req = Unread(
        "POST",
        "http://localhost/api/search",
        headers={"Content-Type": "image/jpeg", "Content-Length": str(20 * 1024 * 1024 + 1)},
        params={},
        body=b"",
    )
    resp = handler("search")(req)
    check_contract(resp, "/search", "POST")
    error_of(resp, 413, "PayloadTooLarge")


@pytest.mark.parametrize("length", ["¹", "٣", "1e3", "-5", " "])
def test_a_content_length_that_is_not_ascii_digits_is_ignored_not_a_500(
    runtime: Runtime, fake_vision: FakeVision, length: str
) -> None:
    """Found by the property test: "¹".isdigit() is true, int("¹") raises. The header is then no use,
    and the body itself (a real image here) is what counts."""
    resp = call("search", "POST", headers={"Content-Type": "image/jpeg", "Content-Length": length}, body=image_bytes())
    assert resp.status_code == 200


def test_an_image_over_20_mb_without_content_length_is_413(runtime: Runtime, fake_vision: FakeVision) -> None:
    big = image_bytes("red", (64, 64), "PNG") + b"\0" * (20 * 1024 * 1024)
    error_of(call("search", "POST", headers={"Content-Type": "image/png"}, body=big), 413, "PayloadTooLarge")
    exactly = b"\0" * (20 * 1024 * 1024)  # at the limit: not too large, just not an image
    error_of(call("search", "POST", headers={"Content-Type": "image/png"}, body=exactly), 415, "UnsupportedImage")
    assert fake_vision.requests == []


@pytest.mark.parametrize(
    ("content_type", "body", "code", "reason"),
    [
        ("text/plain", b"a red car", "UnsupportedMediaType", None),
        ("", b"\x89PNG....", "UnsupportedMediaType", None),
        ("multipart/form-data; boundary=x", b"--x--", "UnsupportedMediaType", None),
        ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "UnsupportedImage", "NotAnImage"),
        ("image/png", b"GIF89a not really", "UnsupportedImage", "NotAnImage"),
        ("image/png", image_bytes("red", (10, 64), "PNG"), "UnsupportedImage", "BadDimensions"),
        ("image/x-portable-pixmap", b"P6\n20 20\n255\n" + b"\0" * 1200, "UnsupportedImage", "UnsupportedFormat"),
        ("image/heic", b"\0\0\0\x18ftypheic" + b"\0" * 64, "UnsupportedImage", "NotAnImage"),
    ],
)
def test_what_the_service_cannot_take_is_415(
    runtime: Runtime, fake_vision: FakeVision, content_type: str, body: bytes, code: str, reason: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    error = error_of(call("search", "POST", headers=headers, body=body), 415, code)
    assert error.get("reason") == reason
    assert fake_vision.requests == []


def test_an_image_the_service_rejects_is_415(runtime: Runtime, fake_vision: FakeVision) -> None:
    fake_vision.fail_next(400, code="InvalidRequest", inner_code="InvalidImageFormat", message="Bad image.")
    data = image_bytes("red", (32, 32), "PNG")
    error = error_of(call("search", "POST", headers={"Content-Type": "image/png"}, body=data), 415, "UnsupportedImage")
    assert error["reason"] == "ImageRejected"


# --- errors: 502, 503 ------------------------------------------------------------------------------


def test_throttling_is_503_with_the_services_retry_after(runtime: Runtime, fake_vision: FakeVision) -> None:
    fake_vision.fail_next(429, retry_after=30)  # longer than a search waits
    resp = call("search", params={"q": "red"})
    error_of(resp, 503, "ProviderUnavailable")
    assert resp.headers["Retry-After"] == "30"
    assert len(fake_vision.calls("text")) == 1


def test_an_outage_is_503_within_a_short_retry_budget(
    runtime: Runtime, fake_vision: FakeVision, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "SEARCH_RETRY_SECONDS", 0.3)
    fake_vision.fail_next(503, times=20)
    resp = call("search", params={"q": "green"})
    error_of(resp, 503, "ProviderUnavailable")
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(fake_vision.calls("text")) < 5
    assert runtime.provider.max_retry_seconds == 3  # type: ignore[attr-defined] # ingestion's budget is untouched


def test_the_search_retry_budget_is_short_and_shares_the_session(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "SEARCH_RETRY_SECONDS", 1.5)  # shorter than this runtime's 3 s
    searcher = api.searcher_for(runtime)
    quick = searcher.provider(runtime.model)
    assert quick is not runtime.provider and quick.max_retry_seconds == 1.5  # type: ignore[attr-defined]
    assert quick._session is runtime.provider._session  # type: ignore[attr-defined]
    assert searcher.provider(runtime.model) is quick
    assert api.searcher_for(runtime) is searcher


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (lambda fake: fake.fail_next(401), "ProviderMisconfigured"),
        (lambda fake: fake.malformed_next(), "ProviderResponseError"),
        (lambda fake: fake.wrong_vector_next(512), "ProviderResponseError"),
    ],
)
def test_other_upstream_failures_are_502(runtime: Runtime, fake_vision: FakeVision, fault: Any, code: str) -> None:
    fault(fake_vision)
    error = error_of(call("search", params={"q": "red"}), 502, code)
    assert "key" not in error["message"].lower()  # details go to the log, not to the client


def test_an_unreachable_database_is_503(runtime: Runtime) -> None:
    runtime.store.close()  # both pools: the database is gone for everyone
    resp = call("similar", route_params={"id": "42"})
    error_of(resp, 503, "DatabaseUnavailable")
    assert int(resp.headers["Retry-After"]) >= 1


def test_a_bad_request_is_answered_even_when_the_database_is_down(runtime: Runtime) -> None:
    runtime.store.close()
    error_of(call("search", params={"q": "red", "k": "0"}), 400, "InvalidParameter")


# --- 500 is for bugs only --------------------------------------------------------------------------


def test_a_bug_is_a_logged_500_with_a_correlation_id(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Searcher, *args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Searcher, "text", broken)
    error = error_of(call("search", params={"q": "red"}), 500, "InternalError")
    assert error["correlation_id"] in error["message"] and "boom" not in error["message"]
    assert error["correlation_id"] in caplog.text


def test_another_method_is_405(runtime: Runtime) -> None:
    req = func.HttpRequest("DELETE", "http://localhost/api/search", headers={}, params={}, body=b"")
    resp = handler("search")(req)
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, POST"


def test_injected_runtime_is_used_instead_of_the_workers(runtime: Runtime, catalogue: Catalogue) -> None:
    catalogue.add("only.png")
    from shared.runtime import set_runtime

    set_runtime(None)  # no worker runtime: get_runtime() would build one from the environment
    try:
        req = func.HttpRequest("GET", "http://localhost/api/search", params={"q": "red"}, body=b"")
        resp = api.search(req, runtime)
    finally:
        set_runtime(runtime)
    assert [r["name"] for r in body_of(resp)["results"]] == ["only.png"]
