"""The search page in a real headless Chromium, against the app served on localhost over real
PostgreSQL, Azurite and the fake Vision server. Screenshots go to tests/screenshots/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright
import pytest

from shared.ingest import reconcile
from shared.runtime import Runtime
from tests.appfns import registered
from tests.fake_vision import FakeVision
from tests.http_adapter import FunctionsHost
from tests.imagegen import image_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# On a developer's machine without Chromium these tests are skipped; in CI (.ci/run installs it) a
# missing browser is a failure, so the page is never left untested by accident.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed (.ci/run installs it)"
)

KEY = "ui-function-key"
SHOTS = Path(__file__).parent / "screenshots"
# Flags for a closed network and a root user (see the machine notes): no sandbox, no background traffic.
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def picture(colour: str, seed: int) -> bytes:
    """A small scene in one dominant colour (the fake Vision server keys on it): sky, ground, a sun."""
    import io

    from PIL import Image, ImageDraw

    from tests.imagegen import COLOURS

    r, g, b = COLOURS[colour]
    img = Image.new("RGB", (400, 300))
    draw = ImageDraw.Draw(img)
    for y in range(300):
        shade = 1.0 + 0.1 * y / 300
        draw.line(
            [(0, y), (400, y)], fill=(min(255, int(r * shade)), min(255, int(g * shade)), min(255, int(b * shade)))
        )
    x = 60 + (seed * 37) % 260
    draw.ellipse([x, 40, x + 36, 76], fill=(min(255, r + 25), min(255, g + 25), min(255, b + 25)))
    draw.polygon([(0, 300), (120 + seed % 90, 230), (260, 300)], fill=(int(r * 0.95), int(g * 0.95), int(b * 0.95)))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


@pytest.fixture
def site(runtime: Runtime) -> Iterator[str]:
    """30 images uploaded and indexed through the real pipeline (thumbnails included), served over HTTP."""
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    for i in range(30):
        colour = colours[i % len(colours)]
        folder = "paintings" if i % 2 else "photos"
        runtime.blobs.upload(f"{folder}/{colour}-{i:02d}.jpg", picture(colour, i), "image/jpeg")
    assert reconcile(runtime).indexed == 30
    with FunctionsHost(registered(), key=KEY) as host:
        yield host.base_url


@pytest.fixture
def page(site: str) -> Iterator[object]:
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM or "chromium", args=ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{site}/ui?code={KEY}")
        page.errors = errors  # type: ignore[attr-defined]
        yield page
        assert errors == [], errors  # no script errors, no CSP violations, no failed image loads
        browser.close()


def result_names(page: object) -> list[str]:
    return page.locator("ul#results .name").all_inner_texts()  # type: ignore[attr-defined, no-any-return]


def wait_for_results(page: object, at_least: int = 1) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "n => document.querySelectorAll('ul#results li').length >= n && !document.getElementById('go').disabled",
        arg=at_least,
    )


def all_images_loaded(page: object) -> bool:
    return bool(
        page.evaluate(  # type: ignore[attr-defined]
            "() => [...document.querySelectorAll('ul#results img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )


def test_text_search_shows_thumbnails_with_scores_and_pages(page: object, tmp_path: Path) -> None:
    assert "code=" not in page.url  # type: ignore[attr-defined]  # the key left the address bar
    page.fill("#q", "a red painting")  # type: ignore[attr-defined]
    page.press("#q", "Enter")  # type: ignore[attr-defined]
    wait_for_results(page, 24)
    names = result_names(page)
    assert len(names) == 24 and all(n.split("/")[1].startswith("red") for n in names[:5])
    scores = page.locator("ul#results .score").all_inner_texts()  # type: ignore[attr-defined]
    values = [float(s.split()[-1]) for s in scores]
    assert values == sorted(values, reverse=True)
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => [...document.querySelectorAll('ul#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    srcs = page.locator("ul#results img").evaluate_all("els => els.map(e => e.src)")  # type: ignore[attr-defined]
    assert all("-thumbs/" in s for s in srcs)  # thumbnails, not originals
    assert "status" in (page.get_attribute("#status", "role") or "")  # type: ignore[attr-defined]
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "search-text.png"), full_page=False)  # type: ignore[attr-defined]

    page.click("#more")  # type: ignore[attr-defined]
    wait_for_results(page, 30)
    names = result_names(page)
    assert len(names) == 30 and len(set(names)) == 30
    assert page.locator("#more").is_hidden()  # type: ignore[attr-defined]


def test_filters_narrow_the_results(page: object) -> None:
    page.click("#filters summary")  # type: ignore[attr-defined]
    page.fill("#prefix", "paintings/")  # type: ignore[attr-defined]
    page.fill("#q", "blue")  # type: ignore[attr-defined]
    page.press("#q", "Enter")  # type: ignore[attr-defined]
    wait_for_results(page)
    names = result_names(page)
    assert len(names) == 15 and all(n.startswith("paintings/") for n in names)


def test_image_upload_then_click_for_more_like_this(page: object, tmp_path: Path, fake_vision: FakeVision) -> None:
    example = tmp_path / "my-green-photo.png"
    example.write_bytes(image_bytes("green", (200, 150), "PNG", seed=500))
    page.set_input_files("#file", str(example))  # type: ignore[attr-defined]
    wait_for_results(page)
    assert result_names(page)[0].split("/")[1].startswith("green")
    assert "your image" in page.inner_text("#status")  # type: ignore[attr-defined]
    assert len(fake_vision.calls("image")) == 31  # 30 indexed + the query image

    first = result_names(page)[0]
    page.locator("ul#results button.result").first.click()  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "name => document.getElementById('status').textContent.includes('images like ' + name)", arg=first
    )
    names = result_names(page)
    assert first not in names and names[0].split("/")[1].startswith("green")
    assert len(fake_vision.calls("image")) == 31  # "more like this" uses the stored vector


def test_throttled_provider_shows_a_readable_message(page: object, fake_vision: FakeVision) -> None:
    fake_vision.fail_next(status=429, retry_after="30", times=20)
    page.fill("#q", "something yellow")  # type: ignore[attr-defined]
    page.press("#q", "Enter")  # type: ignore[attr-defined]
    page.wait_for_function("() => document.getElementById('status').className === 'warn'")  # type: ignore[attr-defined]
    text = page.inner_text("#status")  # type: ignore[attr-defined]
    assert "busy" in text and "30 s" in text
    # The browser logs the 503 itself; that one is expected here.
    expected = "Failed to load resource: the server responded with a status of 503 (Service Unavailable)"
    page.errors.remove(expected)  # type: ignore[attr-defined]
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "search-throttled.png"))  # type: ignore[attr-defined]


def test_a_phone_sized_screen_and_keyboard_only_use(site: str) -> None:
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM or "chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, device_scale_factor=2)
        page.goto(f"{site}/ui?code={KEY}")
        assert page.evaluate("() => document.activeElement.id") == "q"
        page.keyboard.type("white")
        page.keyboard.press("Enter")
        wait_for_results(page)
        columns = page.evaluate(
            "() => getComputedStyle(document.getElementById('results')).gridTemplateColumns.split(' ').length"
        )
        assert columns == 2
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        # Every result is a button with a label a screen reader can read, and its image has alt text.
        labels = page.locator("ul#results button.result").evaluate_all(
            "els => els.map(e => e.getAttribute('aria-label'))"
        )
        assert all(label and "score" in label for label in labels)
        alts = page.locator("ul#results img").evaluate_all("els => els.map(e => e.alt)")
        assert all(alts)
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "search-phone.png"))
        browser.close()


def test_the_page_needs_the_function_key(site: str) -> None:
    import requests

    assert requests.get(f"{site}/ui", timeout=10).status_code == 401
    ok = requests.get(f"{site}/ui", params={"code": KEY}, timeout=10)
    assert ok.status_code == 200 and "script-src 'nonce-" in ok.headers["Content-Security-Policy"]
    assert "https://" not in ok.text.split("<script")[0].replace("https://learn", "")  # no CDN
