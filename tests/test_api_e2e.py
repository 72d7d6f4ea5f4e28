"""End to end over real HTTP: a client searches the Function App and follows the read links it gets
to the real bytes in Azurite. The images are indexed as ingestion would (rows and vectors in
PostgreSQL, bytes in the container), the query text is embedded by the fake Vision server.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from shared.runtime import Runtime
from tests.appfns import registered
from tests.conftest import Catalogue
from tests.http_adapter import FunctionsHost
from tests.imagegen import image_bytes

KEY = "e2e-function-key"


@pytest.fixture
def host(runtime: Runtime) -> Iterator[FunctionsHost]:
    with FunctionsHost(registered(), key=KEY) as h:
        yield h


@pytest.fixture
def gallery(catalogue: Catalogue) -> dict[str, bytes]:
    """Images uploaded to Azurite and indexed; one name with a space and a non-ASCII letter."""
    images = {
        "museum/red sunset café.png": image_bytes("red", (48, 32), "PNG", seed=1),
        "museum/red-boat.jpg": image_bytes("red", (64, 48), "JPEG", seed=2),
        "museum/blue-sea.png": image_bytes("blue", (48, 32), "PNG", seed=3),
        "shop/green-shirt.gif": image_bytes("green", (30, 30), "GIF", seed=4),
    }
    for name, data in images.items():
        catalogue.add(name, data=data, upload=True)
    return images


def test_search_then_follow_each_read_link_to_the_stored_bytes(
    host: FunctionsHost, gallery: dict[str, bytes], runtime: Runtime
) -> None:
    resp = requests.get(f"{host.base_url}/search", params={"q": "something red", "k": 3, "code": KEY}, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    results = resp.json()["results"]
    assert {r["name"] for r in results[:2]} == {"museum/red sunset café.png", "museum/red-boat.jpg"}
    for result in results:
        link = urlsplit(result["url"])
        expires = datetime.fromisoformat(parse_qs(link.query)["se"][0].replace("Z", "+00:00"))
        assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(minutes=runtime.settings.read_link_minutes)
        blob = requests.get(result["url"], timeout=10)
        assert blob.status_code == 200
        assert blob.content == gallery[result["name"]]
        assert blob.headers["Content-Type"] == result["content_type"]


def test_a_read_link_only_reads(host: FunctionsHost, gallery: dict[str, bytes]) -> None:
    url = requests.get(f"{host.base_url}/search", params={"q": "blue", "k": 1, "code": KEY}, timeout=10).json()[
        "results"
    ][0]["url"]
    assert (
        requests.put(url, data=b"overwritten", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10).status_code == 403
    )
    assert requests.delete(url, timeout=10).status_code == 403


def test_image_search_by_upload_and_the_image_endpoint_redirects_to_the_bytes(
    host: FunctionsHost, gallery: dict[str, bytes]
) -> None:
    query = image_bytes("green", (40, 40), "PNG", seed=99)
    resp = requests.post(
        f"{host.base_url}/search?k=1",
        data=query,
        headers={"Content-Type": "image/png", "x-functions-key": KEY},
        timeout=10,
    )
    assert resp.status_code == 200
    (best,) = resp.json()["results"]
    assert best["name"] == "shop/green-shirt.gif"

    followed = requests.get(f"{host.base_url}/images/{best['id']}", params={"code": KEY}, timeout=10)
    assert followed.status_code == 200 and followed.content == gallery["shop/green-shirt.gif"]
    assert followed.history[0].status_code == 302

    similar = requests.get(
        f"{host.base_url}/images/{best['id']}/similar", params={"k": 10, "code": KEY}, timeout=10
    ).json()
    assert best["id"] not in [r["id"] for r in similar["results"]] and len(similar["results"]) == 3


def test_paging_over_http(host: FunctionsHost, gallery: dict[str, bytes]) -> None:
    seen: list[str] = []
    params: dict[str, str | int] = {"q": "red", "k": 1, "code": KEY}
    for _ in range(10):
        body = requests.get(f"{host.base_url}/search", params=params, timeout=10).json()
        seen += [r["name"] for r in body["results"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert sorted(seen) == sorted(gallery)


def test_the_function_key_is_required_except_for_health(host: FunctionsHost, gallery: dict[str, bytes]) -> None:
    assert requests.get(f"{host.base_url}/search", params={"q": "red"}, timeout=10).status_code == 401
    assert requests.get(f"{host.base_url}/search", params={"q": "red", "code": "wrong"}, timeout=10).status_code == 401
    assert requests.get(f"{host.base_url}/openapi.json", timeout=10).status_code == 401
    assert requests.get(f"{host.base_url}/health", timeout=10).status_code in (200, 503)  # anonymous
    doc = requests.get(f"{host.base_url}/openapi.json", headers={"x-functions-key": KEY}, timeout=10).json()
    assert "/search" in doc["paths"]


def test_errors_over_http_keep_their_shape(host: FunctionsHost, gallery: dict[str, bytes]) -> None:
    resp = requests.get(
        f"{host.base_url}/images/{quote('../../etc/passwd', safe='')}", params={"code": KEY}, timeout=10
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "ImageNotFound"
    resp = requests.post(
        f"{host.base_url}/search",
        data=b"hello",
        headers={"Content-Type": "text/plain", "x-functions-key": KEY},
        timeout=10,
    )
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "UnsupportedMediaType"
