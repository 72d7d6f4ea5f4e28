"""The search pipeline against real PostgreSQL + pgvector and the fake Vision server over HTTP.

What it promises: text, image and "more like this" queries rank by cosine similarity; the HNSW index
agrees with an exact ranking; a filtered query returns k rows whenever k rows match, under every
strategy and pgvector version; paging visits each row exactly once, ties included; a repeated
query costs no second embedding call.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import psycopg
import pytest
from pgvector import Vector as PgVector
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

import shared.blobs
import shared.search
from shared.catalogue import ImageRecord, image_id
from shared.db import SearchConnection, make_pool, search_cursor
from shared.errors import InvalidImage, InvalidInput, ProviderUnavailable
from shared.registry import Model
from shared.runtime import Runtime
from shared.schema import IndexSpec
from shared.search import (
    MAX_IMAGE_ID,
    EmbeddingCache,
    Filters,
    FixedModel,
    ImageNotFound,
    ImageNotSearchable,
    InvalidParameter,
    Options,
    Searcher,
    decode_cursor,
    encode_cursor,
    fingerprint,
    normalize_text,
    parse_options,
)
from shared.store import Store
from shared.vectorsearch import (
    AUTO_EF_SEARCH,
    EF_PER_ROW,
    EXACT_SCAN_MAX_ROWS,
    EXACT_SCAN_MIN_ROWS,
    After,
    Hit,
    ImageStatistics,
    SearchFilters,
    _filter_params,
    _image_conditions,
    _named_conditions,
    _search_conditions,
    _session,
    auto_ef_search,
    exact_scan_threshold,
)
from tests.conftest import Catalogue, make_settings
from tests.fake_vision import FakeVision
from tests.imagegen import image_bytes

DIM = 1024


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def searcher(runtime: Runtime) -> Searcher:
    return Searcher.from_runtime(runtime)


# --- the three kinds of query ----------------------------------------------------------------------


def test_text_query_ranks_by_cosine_similarity_and_links_each_image(
    runtime: Runtime, catalogue: Catalogue, searcher: Searcher
) -> None:
    for i in range(4):
        catalogue.add(f"red/{i}.png", "red", seed=i)
        catalogue.add(f"blue/{i}.png", "blue", seed=i)
        catalogue.add(f"green/{i}.png", "green", seed=i)

    page = searcher.text("a red   car", Options(k=6))

    assert page.query["type"] == "text" and page.query["text"] == "a red car" and page.query["k"] == 6
    names = [r.name for r in page.results]
    assert all(n.startswith("red/") for n in names[:4]), names
    scores = [r.score for r in page.results]
    assert scores == sorted(scores, reverse=True)
    # score = 1 - cosine distance, against the vector the service gives the text
    q = unit(FakeVision.vector_for_text("a red car").astype(np.float64))
    for r in page.results:
        v = unit(runtime.store.catalogue.get_vector(r.id, runtime.model.model_id).astype(np.float64))  # type: ignore[union-attr]
        assert r.score == pytest.approx(float(v @ q), abs=1e-5)
    first = page.results[0]
    assert first.url is not None and f"/{runtime.settings.images_container}/{first.name}?" in first.url
    assert "sig=" in first.url and "sp=r" in first.url
    assert (first.width, first.height, first.content_type) == (32, 24, "image/png")


def test_every_link_of_one_answer_expires_at_the_same_moment(
    catalogue: Catalogue, searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        catalogue.add(f"red/{i}.png", "red", seed=i)
    # Two seconds before a link window closes (links are reused within a fifth of their lifetime), so
    # links signed at different readings of this clock would fall in two windows, with two expiries.
    window = timedelta(minutes=searcher.read_link_minutes / 5)
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + window - timedelta(seconds=2)
    ticks = itertools.count()

    class Ticking(datetime):  # a clock a second further on at every reading
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return start + timedelta(seconds=next(ticks))

    monkeypatch.setattr(shared.search, "datetime", Ticking)
    monkeypatch.setattr(shared.blobs, "datetime", Ticking)
    page = searcher.text("a red car", Options(k=4))
    links = [r.url for r in page.results] + [r.thumbnail_url for r in page.results if r.thumbnail_url]
    expiries = {parse_qs(urlsplit(str(link)).query)["se"][0] for link in links}
    assert len(links) >= 4 and len(expiries) == 1, expiries


def test_answers_within_a_window_give_the_same_links_and_a_later_one_new_links(
    catalogue: Catalogue, searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser keeps an image it showed when the next answer names it again: links are reused for a
    fifth of their lifetime (3 minutes of 15), and never outlive it."""
    for i in range(3):
        catalogue.add(f"red/{i}.png", "red", seed=i)
    minutes = searcher.read_link_minutes
    window = timedelta(minutes=minutes / 5)  # 3 minutes of 15
    opened = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # a window opens here (a multiple of any window's length)
    clock = [opened + window / 6]

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return clock[0]

    monkeypatch.setattr(shared.search, "datetime", Clock)

    def links() -> dict[str, str]:
        page = searcher.text("a red car", Options(k=3))
        return {r.name: str(r.url) for r in page.results}

    def expiry(url: str) -> datetime:
        return datetime.fromisoformat(parse_qs(urlsplit(url).query)["se"][0].replace("Z", "+00:00"))

    first = links()
    clock[0] = opened + window * 5 / 6  # later in the same window
    assert links() == first
    clock[0] = opened + window * 7 / 6  # in the next one
    later = links()
    assert later.keys() == first.keys() and all(later[n] != first[n] for n in first)
    assert {expiry(u) for u in first.values()} == {opened + timedelta(minutes=minutes)}
    assert {expiry(u) for u in later.values()} == {opened + window + timedelta(minutes=minutes)}
    # Handed out late in its window, a link is valid for four fifths of its lifetime at least, never longer.
    for url in later.values():
        assert timedelta(minutes=minutes * 4 / 5) < expiry(url) - clock[0] <= timedelta(minutes=minutes)


def test_image_query_finds_images_that_look_alike(catalogue: Catalogue, searcher: Searcher) -> None:
    for i in range(3):
        catalogue.add(f"green/{i}.png", "green", seed=i)
        catalogue.add(f"yellow/{i}.png", "yellow", seed=i)
    query = image_bytes("green", (40, 30), "JPEG", seed=99)

    page = searcher.image(query, Options(k=3))

    assert [r.name.split("/")[0] for r in page.results] == ["green"] * 3
    echo = page.query["image"]
    assert echo["sha256"] == hashlib.sha256(query).hexdigest() and echo["format"] == "JPEG"
    assert (echo["width"], echo["height"], echo["byte_size"]) == (40, 30, len(query))


def test_similar_uses_the_stored_vector_and_never_returns_the_image_itself(
    catalogue: Catalogue, searcher: Searcher, fake_vision: FakeVision
) -> None:
    me = catalogue.add("blue/me.png", "blue", seed=1)
    for i in range(3):
        catalogue.add(f"blue/{i}.png", "blue", seed=10 + i)
        catalogue.add(f"red/{i}.png", "red", seed=10 + i)

    page = searcher.similar(me, Options(k=10))

    assert me not in [r.id for r in page.results] and len(page.results) == 6
    assert [r.name.split("/")[0] for r in page.results[:3]] == ["blue"] * 3
    assert page.query["id"] == str(me)
    assert fake_vision.requests == []  # no embedding call


def test_similar_refuses_unknown_failed_and_unembedded_images(
    runtime: Runtime, catalogue: Catalogue, searcher: Searcher
) -> None:
    with pytest.raises(ImageNotFound):
        searcher.similar(12345)
    failed = catalogue.fail("broken.png", "the file is truncated")
    with pytest.raises(ImageNotSearchable, match="truncated"):
        searcher.similar(failed)
    bare = catalogue.add("bare.png")
    with runtime.store.pool.connection() as conn:
        conn.execute("DELETE FROM image_vectors WHERE image_id = %s", (bare,))
    with pytest.raises(ImageNotSearchable, match="no vector"):
        searcher.similar(bare)


def test_images_of_another_container_are_not_part_of_the_collection(
    runtime: Runtime, catalogue: Catalogue, searcher: Searcher
) -> None:
    mine = catalogue.add("mine.png", "red")
    other = ImageRecord("elsewhere", "theirs.png", b"x" * 32, "image/png", 32, 24, 10)
    theirs = runtime.store.catalogue.save_indexed(other, {runtime.model.model_id: FakeVision.vector_for_text("red")})
    assert theirs is not None
    assert [r.id for r in searcher.text("red").results] == [mine]
    with pytest.raises(ImageNotFound):
        searcher.get_image(theirs)
    with pytest.raises(ImageNotFound):
        searcher.similar(theirs)


def test_refused_query_images_never_reach_the_service(searcher: Searcher, fake_vision: FakeVision) -> None:
    with pytest.raises(InvalidImage) as tiny:
        searcher.image(image_bytes("red", (8, 8), "PNG"))
    assert tiny.value.code == "BadDimensions"
    with pytest.raises(InvalidImage) as svg:
        searcher.image(b'<svg xmlns="http://www.w3.org/2000/svg"/>')
    assert svg.value.code == "NotAnImage"
    assert fake_vision.requests == []


def test_a_query_the_service_rejects_is_the_clients_fault(searcher: Searcher, fake_vision: FakeVision) -> None:
    fake_vision.fail_next(400, code="InvalidRequest", inner_code="InvalidImageFormat", message="bad image")
    with pytest.raises(InvalidImage) as image:
        searcher.image(image_bytes("red", (32, 32), "PNG"))
    assert image.value.code == "ImageRejected"
    fake_vision.fail_next(400, code="InvalidRequest", inner_code="BadArgument", message="bad text")
    with pytest.raises(InvalidInput) as text:
        searcher.text("something odd")
    assert text.value.code == "TextRejected"


def test_a_throttled_service_gives_up_within_the_budget(runtime: Runtime, fake_vision: FakeVision) -> None:
    import copy

    def quick(provider: object) -> object:
        clone = copy.copy(provider)
        clone.max_retry_seconds = 0.2  # type: ignore[attr-defined]
        return clone

    searcher = Searcher.from_runtime(runtime, adapt_provider=quick)  # type: ignore[arg-type]
    fake_vision.fail_next(429, retry_after=30)
    with pytest.raises(ProviderUnavailable) as exc:
        searcher.text("red")
    assert exc.value.retry_after == 30
    assert len(fake_vision.calls("text")) == 1


# --- the query-embedding cache ---------------------------------------------------------------------


def test_the_same_text_within_the_ttl_costs_one_embedding_call(
    catalogue: Catalogue, searcher: Searcher, fake_vision: FakeVision
) -> None:
    catalogue.add("red.png", "red")
    first = searcher.text("a red car")
    again = searcher.text("  a   red car ")  # the same text once normalized
    assert len(fake_vision.calls("text")) == 1
    assert [r.id for r in again.results] == [r.id for r in first.results]
    searcher.text("a blue car")
    assert len(fake_vision.calls("text")) == 2
    data = image_bytes("red", (32, 32), "PNG", seed=5)
    searcher.image(data)
    searcher.image(data)
    assert len(fake_vision.calls("image")) == 1


def test_cache_entries_expire_and_the_least_recently_used_go_first() -> None:
    now = [0.0]
    cache = EmbeddingCache(max_entries=3, ttl_seconds=10, clock=lambda: now[0])
    v = np.ones(4, np.float32)
    for key in "abc":
        cache.put(key, v)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", v)
    assert cache.get("b") is None and len(cache) == 3
    now[0] = 10.0
    assert cache.get("a") is None and cache.get("c") is None
    calls = []
    assert cache.get_or_compute("e", lambda: calls.append(1) or v) is not None  # type: ignore[func-returns-value]
    cached = cache.get_or_compute("e", lambda: calls.append(1) or v)  # type: ignore[func-returns-value]
    assert calls == [1] and not cached.flags.writeable


def test_cache_stays_bounded_under_concurrent_use() -> None:
    cache = EmbeddingCache(max_entries=50, ttl_seconds=60)
    v = np.ones(4, np.float32)

    def work(t: int) -> None:
        for i in range(500):
            cache.put((t, i % 80), v)
            cache.get((t, (i * 7) % 80))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50


# --- options, cursors ------------------------------------------------------------------------------


def test_options_are_parsed_from_strings_or_json_values() -> None:
    opts = parse_options(
        {
            "k": "25",
            "prefix": "paintings/",
            "content_type": "image/PNG, image/jpeg",
            "uploaded_after": "2024-05-01",
            "uploaded_before": "2024-06-01T12:00:00+02:00",
            "min_score": "0.25",
            "cursor": "",
        }
    )
    assert opts.k == 25 and opts.cursor is None
    f = opts.filters
    assert f.prefix == "paintings/" and f.content_types == ("image/png", "image/jpeg") and f.min_score == 0.25
    assert f.uploaded_after == datetime(2024, 5, 1, tzinfo=UTC)
    assert f.uploaded_before == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert parse_options({"k": 3, "content_type": ["image/gif"], "min_score": -1}).filters.content_types == (
        "image/gif",
    )
    assert parse_options({"uploaded_after": "2024-05-01T10:00:00"}).filters.uploaded_after == datetime(
        2024, 5, 1, 10, tzinfo=UTC
    )
    assert parse_options({}) == Options()


@pytest.mark.parametrize(
    ("values", "parameter"),
    [
        ({"k": "0"}, "k"),
        ({"k": "101"}, "k"),
        ({"k": "-5"}, "k"),
        ({"k": "1e2"}, "k"),
        ({"k": True}, "k"),
        ({"k": 10.0}, "k"),
        ({"min_score": "nan"}, "min_score"),
        ({"min_score": "1.5"}, "min_score"),
        ({"min_score": "1_0"}, "min_score"),
        ({"uploaded_after": "yesterday"}, "uploaded_after"),
        ({"uploaded_before": "2024-13-01"}, "uploaded_before"),
        ({"uploaded_after": "2024-06-02", "uploaded_before": "2024-06-01"}, "uploaded_after"),
        ({"content_type": "png"}, "content_type"),
        ({"content_type": ["image/png", 3]}, "content_type"),
        ({"prefix": "a\x00b"}, "prefix"),
        ({"prefix": "\udcff"}, "prefix"),
        ({"cursor": 5}, "cursor"),
    ],
)
def test_malformed_options_name_the_parameter(values: dict[str, object], parameter: str) -> None:
    with pytest.raises(InvalidParameter) as exc:
        parse_options(values)
    assert exc.value.parameter == parameter


@pytest.mark.parametrize("text", ["", "   ", " ".join(["word"] * 71), "x" * 3000, "bad\x00text", "\ud800"])
def test_text_must_be_1_to_70_words_of_printable_unicode(text: str) -> None:
    with pytest.raises(InvalidParameter):
        normalize_text(text)


def test_text_is_normalized_before_embedding() -> None:
    assert normalize_text(" cafe\u0301\tby\nthe  sea ") == "caf\u00e9 by the sea"
    assert normalize_text(" ".join(["w"] * 70)).count("w") == 70


def test_a_cursor_only_fits_the_query_it_came_from() -> None:
    fp = fingerprint("m:1", "text", "a red car", Filters())
    cursor = encode_cursor(After(0.125, 42), fp)
    assert decode_cursor(cursor, fp) == After(0.125, 42)
    other = fingerprint("m:1", "text", "a red car", Filters(prefix="x/"))
    with pytest.raises(InvalidParameter, match="another query") as exc:
        decode_cursor(cursor, other)
    assert exc.value.code == "InvalidCursor"
    nan = base64.urlsafe_b64encode(f'{{"d":NaN,"i":1,"q":"{fp}"}}'.encode()).rstrip(b"=").decode()
    for bad in ["", "!!", "x" * 600, "eyJkIjoxfQ", nan, cursor[:-3]]:
        with pytest.raises(InvalidParameter):
            decode_cursor(bad, fp)
    # The cursor is written by hand, not by json.dumps: it must read back whatever the distance and id.
    for distance in (0.0, 5e-324, 1e-7, 0.30000000000000004, 1.9999999999999998, 2.0):
        for iid in (1, 4_611_686_018_427_387_904, MAX_IMAGE_ID):
            assert decode_cursor(encode_cursor(After(distance, iid), fp), fp) == After(distance, iid)
    for after, query in (
        (After(float("nan"), 1), fp),
        (After(float("inf"), 1), fp),
        (After(0.5, 1), 'x"}'),
        (After(0.5, 1), fp.upper()),
        (After(0.5, 1), fp[:-1]),
    ):
        with pytest.raises(ValueError):
            encode_cursor(after, query)


def test_a_cursor_is_bound_to_every_part_of_its_query() -> None:
    day = datetime(2024, 5, 1, tzinfo=UTC)
    base = ("m:1", "text", "a red car", Filters())
    others = [
        ("m:2", "text", "a red car", Filters()),
        ("m:1", "image", "a red car", Filters()),
        ("m:1", "text", "a red cat", Filters()),
        ("m:1", "text", "a red car", Filters(prefix="")),
        ("m:1", "text", "a red car", Filters(prefix="a/")),
        ("m:1", "text", "a red car", Filters(content_types=("image/png",))),
        ("m:1", "text", "a red car", Filters(content_types=("image/png", "image/gif"))),
        ("m:1", "text", "a red car", Filters(uploaded_after=day)),
        ("m:1", "text", "a red car", Filters(uploaded_before=day)),
        ("m:1", "text", "a red car", Filters(uploaded_after=day + timedelta(seconds=1))),
        ("m:1", "text", "a red car", Filters(min_score=0.5)),
        ("m:1", "text", "a red car", Filters(min_score=0.25)),
        # Texts that join into the same string when the parts are not kept apart.
        ("m:1", "text a", "red car", Filters()),
        ("m:1", "text", "a red car", Filters(prefix="a", content_types=("b",))),
        ("m:1", "text", "a red car", Filters(prefix="a', ('b',")),
    ]
    prints = [fingerprint(*query) for query in [base, *others]]
    assert len(set(prints)) == len(prints), "two queries share a fingerprint"
    assert all(len(fp) == 16 and set(fp) <= set("0123456789abcdef") for fp in prints)
    # Equal queries, equal fingerprints: the next page's cursor fits.
    assert fingerprint("m:1", "text", "a red car", Filters(min_score=0.5)) == prints[11]
    cursor = encode_cursor(After(0.25, 7), prints[0])
    for other in prints[1:]:
        with pytest.raises(InvalidParameter, match="another query"):
            decode_cursor(cursor, other)


# --- filters and paging through the pipeline -------------------------------------------------------


def test_filters_by_prefix_content_type_upload_time_and_score(
    runtime: Runtime, catalogue: Catalogue, searcher: Searcher
) -> None:
    day = datetime(2024, 5, 1, tzinfo=UTC)
    catalogue.add("a%_/1.png", "red", seed=1, last_modified=day)
    catalogue.add("a%_/2.jpg", "red", seed=2, fmt="JPEG", last_modified=day + timedelta(days=2))
    catalogue.add("ab/3.png", "red", seed=3, last_modified=day + timedelta(days=5))
    catalogue.add("ab/4.gif", "blue", seed=4, fmt="GIF")  # no Last-Modified: its creation time counts

    def names(**values: object) -> list[str]:
        return sorted(r.name for r in searcher.text("red", parse_options(values)).results)

    assert names(prefix="a%_/") == ["a%_/1.png", "a%_/2.jpg"]  # LIKE wildcards are taken literally
    assert names(prefix="ab/") == ["ab/3.png", "ab/4.gif"]
    assert names(content_type="image/jpeg,image/gif") == ["a%_/2.jpg", "ab/4.gif"]
    assert names(uploaded_after="2024-05-03", uploaded_before="2024-05-07") == ["a%_/2.jpg", "ab/3.png"]
    assert names(uploaded_before="2024-05-03T00:00:01Z") == ["a%_/1.png", "a%_/2.jpg"]
    assert names(uploaded_after=(datetime.now(UTC) - timedelta(hours=1)).isoformat()) == ["ab/4.gif"]
    high = searcher.text("red", parse_options({"min_score": "0.5"}))
    assert {r.name for r in high.results} == {"a%_/1.png", "a%_/2.jpg", "ab/3.png"}
    assert all(r.score >= 0.5 for r in high.results) and high.next_cursor is None


@pytest.mark.parametrize("strategy", ["auto", "index"])
def test_paging_visits_every_image_once_even_when_scores_tie(
    runtime: Runtime, catalogue: Catalogue, searcher: Searcher, strategy: str
) -> None:
    searcher.strategy = strategy  # index: a run of equal distances at a page edge sends it to the exact scan
    rng = np.random.default_rng(3)
    same = unit(rng.standard_normal(DIM)).astype(np.float32)
    ids = [catalogue.add(f"same/{i:02d}.png", seed=i, vector=same) for i in range(30)]
    ids += [catalogue.add(f"other/{i:02d}.png", seed=100 + i, vector=unit(rng.standard_normal(DIM))) for i in range(17)]

    seen: list[int] = []
    scores: list[float] = []
    cursor = None
    for k in [7, 5, 11, 7, 7, 7, 7, 7, 7]:  # the page size may change between pages
        page = searcher.text("a red car", Options(k=k, cursor=cursor))
        seen += [r.id for r in page.results]
        scores += [r.score for r in page.results]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert scores == sorted(scores, reverse=True)
    tied = [i for i in seen if i in ids[:30]]
    assert tied == sorted(tied)  # equal scores come in id order


def test_a_cursor_cannot_be_replayed_on_another_query(catalogue: Catalogue, searcher: Searcher) -> None:
    for i in range(3):
        catalogue.add(f"{i}.png", seed=i)
    page = searcher.text("red", Options(k=1))
    assert page.next_cursor is not None
    with pytest.raises(InvalidParameter) as exc:
        searcher.text("blue", Options(k=1, cursor=page.next_cursor))
    assert exc.value.code == "InvalidCursor"
    with pytest.raises(InvalidParameter):
        searcher.text("red", Options(k=1, cursor=page.next_cursor, filters=Filters(prefix="1")))


def test_auto_ef_search_grows_with_the_collection() -> None:
    assert auto_ef_search(None) == auto_ef_search(3_000) == auto_ef_search(100_000) == AUTO_EF_SEARCH
    sizes = [100_000, 300_000, 1_000_000, 10_000_000, 10**9]
    efs = [auto_ef_search(n) for n in sizes]
    assert efs == sorted(efs) and efs[1] > AUTO_EF_SEARCH and efs[-1] == 1000


def test_a_prefix_share_is_read_from_the_names_histogram() -> None:
    """ANALYZE's histogram of names: 101 bounds splitting 90 % of the rows (5 % are null, 5 % one common
    name) into 100 equal shares. A prefix that 11 bounds start with spans at least 10 shares."""
    bounds = tuple(f"{'a' if i <= 10 else 'b'}/{i:03d}.jpg" for i in range(101))
    stats = ImageStatistics(1000.0, {"name": {"a/common.jpg": 0.05}}, name_bounds=bounds, name_histogram_share=0.9)
    assert stats.prefix_share("a/") == pytest.approx(0.9 * 10 / 100 + 0.05)
    assert stats.prefix_share("b/") == pytest.approx(0.9 * 89 / 100)
    assert stats.prefix_share("a/010") == 0.0  # one bound: it may hold no more than a share's edge
    assert stats.prefix_share("c/") == 0.0
    assert ImageStatistics(1000.0, {}).prefix_share("a/") is None  # never analysed: nothing known
    found = [
        (3000.0, "name", 0.05, ["a/common.jpg"], [0.05], list(bounds)),
        (3000.0, "content_type", 0.0, ["image/png", "image/gif"], [0.9, 0.1], None),
    ]
    read = ImageStatistics.from_rows(found)
    assert read.rows == 3000.0 and read.name_bounds == bounds
    assert read.name_histogram_share == pytest.approx(0.9)
    assert read.common["content_type"] == {"image/png": 0.9, "image/gif": 0.1}


@pytest.mark.parametrize("container", [None, "images"])
@pytest.mark.parametrize("prefix", [None, "a/", "\U0010ffff"])  # the last has no prefix_end
@pytest.mark.parametrize("types", [(), ("image/png",)])
@pytest.mark.parametrize("dated", [False, True])
@pytest.mark.parametrize("exclude_id", [None, 7])
def test_every_placeholder_of_the_search_conditions_has_its_parameter(
    container: str | None, prefix: str | None, types: tuple[str, ...], dated: bool, exclude_id: int | None
) -> None:
    """The conditions' SQL (composed once per shape) and their parameters (computed for every search)
    are written apart: each placeholder any of them names must be among the parameters."""
    day = datetime(2024, 5, 1, tzinfo=UTC)
    filters = SearchFilters(container, prefix, types, day if dated else None, day if dated else None, exclude_id)
    params = _filter_params(filters)
    texts = [
        _search_conditions(MODEL, filters).as_string(None),
        _image_conditions(filters).as_string(None),
        _image_conditions(filters, bound=True).as_string(None),
    ]
    named = _named_conditions(filters)
    if named is not None:
        texts.append(named.as_string(None))
    for text in texts:
        assert set(re.findall(r"%\((\w+)\)s", text)) <= set(params), text
    assert params.get("prefix") == prefix and params.get("container") == container  # and none invented


# --- the index under load: recall, filtered search, strategies -------------------------------------

N = 3000
# As the registry hands it out: with a halfvec index (HNSW_PRECISION's default), and its name.
MODEL = Model("synthetic:1", DIM, "active", precision="halfvec", index_name=IndexSpec().name("synthetic:1", DIM))


class Corpus:
    def __init__(self, store: Store, ids: np.ndarray, data: np.ndarray, types: np.ndarray, queries: np.ndarray):
        self.store, self.ids, self.data, self.types, self.queries = store, ids, data, types, queries

    def exact(self, q: np.ndarray, mask: np.ndarray | None = None, k: int = 10) -> list[int]:
        d = 1.0 - self.data @ unit(q)
        order = np.lexsort((self.ids, d))
        if mask is not None:
            order = order[mask[order]]
        return self.ids[order[:k]].tolist()

    def distance(self, iid: int, q: np.ndarray) -> float:
        return float(1.0 - self.data[np.flatnonzero(self.ids == iid)[0]] @ unit(q))

    def recall(self, q: np.ndarray, found: list[int], mask: np.ndarray | None = None, k: int = 10) -> float:
        """Share of ``found`` that belongs to the exact top k. pgvector sums in single precision, so
        a row within 1e-5 of the k-th exact distance counts (this corpus has many near-ties)."""
        d = 1.0 - self.data @ unit(q)
        kth = np.sort(d if mask is None else d[mask])[k - 1]
        return sum(1 for iid in found if self.distance(iid, q) <= kth + 1e-5) / k


@pytest.fixture(scope="class")
def corpus(pool: ConnectionPool) -> Iterator[Corpus]:
    """3,000 vectors in 30 clusters, as real embeddings cluster; 1 % are PNG, 10 % GIF, the rest JPEG."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")
    store = Store(pool)
    registered = store.registry.ensure_model(MODEL.model_id, DIM)
    assert (registered.precision, registered.index_name) == (MODEL.precision, MODEL.index_name)
    rng = np.random.default_rng(42)
    centers = unit(rng.standard_normal((30, DIM)))
    data = unit(centers[rng.integers(0, 30, N)] + 0.35 * unit(rng.standard_normal((N, DIM))) * rng.random((N, 1)))
    data = data.astype(np.float32)
    types = np.where(np.arange(N) % 100 == 0, "image/png", np.where(np.arange(N) % 10 == 1, "image/gif", "image/jpeg"))
    records = [
        ImageRecord("images", f"img-{i:05d}.jpg", hashlib.sha256(str(i).encode()).digest(), str(ct), 64, 48, 1000 + i)
        for i, ct in enumerate(types)
    ]
    store.bulk.upsert(records, data, MODEL.model_id)
    ids = [image_id(r.container, r.name) for r in records]
    with pool.connection() as conn:
        conn.execute("ANALYZE images")
        conn.execute("ANALYZE image_vectors")
    queries = unit(centers[rng.integers(0, 30, 20)] + 0.3 * unit(rng.standard_normal((20, DIM)))).astype(np.float32)
    yield Corpus(store, np.array(ids), data.astype(np.float64), types, queries)
    with pool.connection() as conn:
        conn.execute("TRUNCATE image_vectors, images, embedding_models, ingest_claims")


class TestTheIndex:
    @pytest.mark.single_node  # Citus plans a distributed statement itself; the session setting is single node
    def test_the_exact_scan_is_planned_with_the_filters_values_and_reads_only_the_prefixs_rows(
        self, corpus: Corpus, pool: ConnectionPool
    ) -> None:
        """A plan PostgreSQL keeps for a prepared statement is made without the filter's values, and for a
        name range it may read every vector of the model: the exact scan is never prepared, and its plan
        reads the prefix's range through the (container, name) index, with no parallel workers."""
        vectors = corpus.store.vectors
        filters = SearchFilters(container="images", prefix="img-000")
        for q in range(10 * pool.max_size + 5):
            query = corpus.queries[q % len(corpus.queries)]
            found = vectors.search(MODEL, query, 10, filters=filters, strategy="exact")
            assert len(found.hits) == 10 and all(h.name.startswith("img-000") for h in found.hits)
            vectors.forget_counts()
            assert vectors.search(MODEL, query, 10, filters=filters).strategy == "exact"  # 100 rows, decided by a scan
        with contextlib.ExitStack() as held:
            conns = [held.enter_context(pool.connection()) for _ in range(pool.max_size)]
            prepared = [r[0] for c in conns for r in c.execute("SELECT statement FROM pg_prepared_statements")]
            assert not [s for s in prepared if "~>=~" in s], prepared
            # The connections searches ran on: no parallel workers in their sessions.
            searched = [c for c in conns if _session(c)]
            assert searched
            assert {str(c.execute("SHOW max_parallel_workers_per_gather").fetchone()[0]) for c in searched} == {"0"}  # type: ignore[index]
            for cap in (None, 101):
                for by_name in (True, False):
                    text, params = vectors._exact_sql(MODEL, filters, None, None, cap, by_name)
                    params.update(q=PgVector(corpus.queries[0]), limit=10)
                    rows = searched[0].execute("EXPLAIN (COSTS OFF) " + text, params, prepare=False)
                    plan = re.sub(r"'\[[^']*\]'", "'[vector]'", "\n".join(r[0] for r in rows))
                    assert "(container = 'images'::text) AND (name ~>=~ 'img-000'::text)" in plan, plan
                    assert "Seq Scan" not in plan and "Gather" not in plan, plan
                    if by_name:  # the vectors of the range from their own index, and only the kept rows joined
                        assert "Index Scan on image_vectors_name" in plan, plan
                        assert plan.index("Limit") < plan.index("Index Scan using images_pkey"), plan

    def test_top_10_agrees_with_an_exact_ranking(self, corpus: Corpus) -> None:
        recalls = []
        for q in corpus.queries:
            found = corpus.store.vectors.search(MODEL, q, 10)
            assert found.strategy == "index"  # 3,000 rows: past the exact-scan threshold
            distances = [h.distance for h in found.hits]
            assert distances == sorted(distances)
            recalls.append(corpus.recall(q, [h.id for h in found.hits]))
            top = found.hits[0]
            assert top.distance == pytest.approx(corpus.distance(top.id, q), abs=1e-5)
        assert np.mean(recalls) >= 0.95, recalls

    @pytest.mark.parametrize("content_type", ["image/png", "image/gif"])  # 1 % and 10 % of the rows
    @pytest.mark.parametrize("strategy", ["auto", "exact", "index"])
    def test_a_filtered_query_returns_k_rows(self, corpus: Corpus, content_type: str, strategy: str) -> None:
        mask = corpus.types == content_type
        filters = SearchFilters(content_types=(content_type,))
        recalls = []
        for q in corpus.queries[:8]:
            found = corpus.store.vectors.search(MODEL, q, 10, filters=filters, strategy=strategy)
            assert len(found.hits) == 10
            assert {h.content_type for h in found.hits} == {content_type}
            recalls.append(corpus.recall(q, [h.id for h in found.hits], mask))
        assert np.mean(recalls) >= (1.0 if strategy != "index" else 0.8), recalls

    def test_the_index_path_scans_iteratively_under_a_filter(self, corpus: Corpus) -> None:
        filters = SearchFilters(content_types=("image/png",))
        plan = corpus.store.vectors.explain_nearest(MODEL, corpus.queries[0], 10, filters=filters, strategy="index")
        assert "Index Scan using image_vectors_hnsw" in plan, plan
        corpus.store.vectors.exact_scan_max_rows = 10  # as if the collection were large
        try:
            found = corpus.store.vectors.search(MODEL, corpus.queries[0], 10, filters=filters)
        finally:
            del corpus.store.vectors.exact_scan_max_rows
        assert len(found.hits) == 10 and found.strategy in ("index", "index+exact")

    def test_without_iterative_scans_the_exact_scan_keeps_the_promise(self, corpus: Corpus) -> None:
        # pgvector 0.7 (Cosmos DB for PostgreSQL): the index alone returns too few rows under a 1 % filter.
        corpus.store.db._pgvector_version = (0, 7, 0)
        try:
            found = corpus.store.vectors.search(
                MODEL, corpus.queries[0], 10, filters=SearchFilters(content_types=("image/png",)), strategy="index"
            )
        finally:
            del corpus.store.db._pgvector_version
        assert len(found.hits) == 10 and {h.content_type for h in found.hits} == {"image/png"}

    @pytest.mark.single_node
    def test_an_iterative_scan_that_gives_up_falls_back_to_the_exact_scan(self, corpus: Corpus) -> None:
        self.falls_back_when_the_scan_gives_up(corpus, 20)

    @pytest.mark.citus_only
    def test_on_citus_a_scan_limit_never_costs_rows_or_order(self, corpus: Corpus) -> None:
        """On Citus the limit applies per shard (each shard runs its own scan, and a shard of a few hundred
        rows may answer with an exact plan), so whether the scan "gives up" is the shards' affair: the forced
        index path still returns k rows of the filter, and the auto strategy's answer is the exact top k."""
        corpus.store.vectors.max_scan_tuples = 1
        try:
            found = corpus.store.vectors.search(
                MODEL, corpus.queries[1], 10, filters=SearchFilters(content_types=("image/png",)), strategy="index"
            )
        finally:
            del corpus.store.vectors.max_scan_tuples
        mask = corpus.types == "image/png"
        assert found.strategy in ("index", "index+exact") and len(found.hits) == 10
        assert {h.content_type for h in found.hits} == {"image/png"}
        auto = corpus.store.vectors.search(
            MODEL, corpus.queries[1], 10, filters=SearchFilters(content_types=("image/png",))
        )
        assert [h.id for h in auto.hits] == corpus.exact(corpus.queries[1], mask)

    @staticmethod
    def falls_back_when_the_scan_gives_up(corpus: Corpus, max_scan_tuples: int) -> None:
        corpus.store.vectors.max_scan_tuples = max_scan_tuples
        try:
            found = corpus.store.vectors.search(
                MODEL, corpus.queries[1], 10, filters=SearchFilters(content_types=("image/png",)), strategy="index"
            )
        finally:
            del corpus.store.vectors.max_scan_tuples
        assert found.strategy == "index+exact" and len(found.hits) == 10
        mask = corpus.types == "image/png"
        assert [h.id for h in found.hits] == corpus.exact(corpus.queries[1], mask)

    @pytest.mark.parametrize("strategy", ["auto", "index"])
    def test_paging_through_a_filtered_set_visits_each_row_once(self, corpus: Corpus, strategy: str) -> None:
        """300 matching rows: auto scans them exactly, so paging is complete. Forced onto the index,
        paging is as complete as the index's recall, and still never repeats a row or goes backwards."""
        q = corpus.queries[2]
        filters = SearchFilters(content_types=("image/gif",))
        seen: list[int] = []
        after = None
        last = -1.0
        while True:
            found = corpus.store.vectors.search(MODEL, q, 26, filters=filters, after=after, strategy=strategy)
            page = found.hits[:25]
            assert all(h.distance >= last for h in page)
            seen += [h.id for h in page]
            if len(found.hits) <= 25:
                break
            after = After(page[-1].distance, page[-1].id)
            last = page[-1].distance
        expected = corpus.ids[corpus.types == "image/gif"].tolist()
        assert len(seen) == len(set(seen)) and set(seen) <= set(expected)
        if strategy == "auto":
            assert sorted(seen) == sorted(expected)
        else:
            assert len(seen) >= 0.8 * len(expected)

    def test_the_searcher_pages_a_corpus_by_similar_image(self, corpus: Corpus) -> None:
        searcher = Searcher(corpus.store, FixedModel(MODEL, _NoProvider()), container="images")
        start = int(corpus.ids[0])
        seen, cursor = [], None
        for _ in range(40):
            page = searcher.similar(start, Options(k=100, cursor=cursor, filters=Filters(content_types=("image/gif",))))
            seen += [r.id for r in page.results]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert cursor is None and len(seen) == len(set(seen)) == int((corpus.types == "image/gif").sum())

    def test_a_large_k_searches_wider_and_gets_what_the_index_can_give(self, corpus: Corpus) -> None:
        """ef_search is at least EF_PER_ROW candidates per row fetched, so k = 100 (the API's largest)
        finds about as many of the true 100 nearest as the index gives at its widest (ef_search 1000)."""
        assert corpus.store.vectors.effective_ef_search(MODEL, 100) >= EF_PER_ROW * 100
        for q in corpus.queries[:4]:
            found = corpus.store.vectors.search(MODEL, q, 100)
            widest = corpus.store.vectors.search(MODEL, q, 100, ef_search=1000)
            assert found.strategy == widest.strategy == "index" and len(found.hits) == 100
            distances = [h.distance for h in found.hits]
            assert distances == sorted(distances) and len({h.id for h in found.hits}) == 100
            got = corpus.recall(q, [h.id for h in found.hits], k=100)
            best = corpus.recall(q, [h.id for h in widest.hits], k=100)
            assert got >= best - 0.02, (got, best)

    @pytest.mark.single_node
    def test_auto_ef_search_follows_the_size_of_the_models_index(self, corpus: Corpus) -> None:
        """HNSW_EF_SEARCH=auto: the index's row count (as PostgreSQL last counted it) picks ef_search."""
        model = corpus.store.registry.active_model()
        assert model is not None and model.index_name is not None
        assert corpus.store.vectors._indexed_rows(model) == N
        assert corpus.store.vectors.effective_ef_search(model, 10) == auto_ef_search(N) == AUTO_EF_SEARCH

    def test_the_exact_scan_threshold_follows_the_size_of_the_models_index(self, corpus: Corpus) -> None:
        """Under a filter keeping a fraction s of N vectors the index visits about k / s candidates and the
        exact scan reads s * N rows: where their costs cross grows with N (measured at 100,000 and at a
        million), so does the threshold."""
        model = corpus.store.registry.active_model()
        assert model is not None
        known = None if corpus.store.db.is_citus() else N  # Citus's coordinator holds no index to count
        assert corpus.store.vectors.exact_threshold(model) == exact_scan_threshold(known)
        assert exact_scan_threshold(N) == EXACT_SCAN_MIN_ROWS < N  # so this corpus's searches use the index
        assert exact_scan_threshold(None) == exact_scan_threshold(100_000) == EXACT_SCAN_MAX_ROWS
        sizes = [10_000, 30_000, 100_000, 300_000, 1_000_000, 10_000_000]
        thresholds = [exact_scan_threshold(n) for n in sizes]
        assert thresholds == sorted(thresholds) and len(set(thresholds)) == len(thresholds)
        assert 5_000 <= exact_scan_threshold(1_000_000) <= 8_000  # where the two cross at a million
        assert [t / n for t, n in zip(thresholds, sizes, strict=True)] == sorted(
            (t / n for t, n in zip(thresholds, sizes, strict=True)), reverse=True
        )  # a smaller share of a larger collection

    def test_a_filter_is_decided_by_counting_from_its_index_and_a_small_one_answered_in_the_same_statement(
        self, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Reading thousands of matching rows to learn that there are thousands costs more than the
        search: one statement counts the images that may match, from the filter's index and no further
        than the exact-scan threshold, and reads their vectors only when there are no more. Above the
        threshold it returns no rows and the index answers; below, its rows are the answer."""
        vectors = corpus.store.vectors
        monkeypatch.setattr(vectors, "exact_scan_max_rows", 100)  # as if the collection were large
        scans: list[tuple[tuple[str, ...], int | None, int, int | None]] = []
        counted, exact = vectors._counted_scan, vectors._exact_scan

        def recorded(*a: Any) -> tuple[list[Hit], int]:
            hits, count = counted(*a)
            scans.append((a[3].content_types, a[6], len(hits), count))
            return hits, count

        def recorded_exact(*a: Any) -> list[Hit]:
            hits = exact(*a)
            scans.append((a[3].content_types, None, len(hits), None))
            return hits

        monkeypatch.setattr(vectors, "_counted_scan", recorded)
        monkeypatch.setattr(vectors, "_exact_scan", recorded_exact)
        vectors.forget_counts()
        q = corpus.queries[4]
        gif = vectors.search(MODEL, q, 10, filters=SearchFilters(content_types=("image/gif",)))  # 300 rows
        png = vectors.search(MODEL, q, 10, filters=SearchFilters(content_types=("image/png",)))  # 30 rows
        assert (gif.strategy, png.strategy) == ("index", "exact")
        # On a single node ANALYZE's share of GIFs (10 % of 3,000, past twice the threshold) decides
        # with no statement; Citus keeps no statistics on its coordinator, and a count decides.
        counted_gif = [(("image/gif",), 101, 0, 101)] if vectors.db.is_citus() else []
        assert scans == [
            *counted_gif,  # counted past the threshold, read no vector
            (("image/png",), 101, 10, 30),  # 0.3 % by the statistics: counted 30, and its rows were the answer
        ]
        assert len(gif.hits) == 10 and {h.content_type for h in gif.hits} == {"image/gif"}
        mask = corpus.types == "image/png"
        assert corpus.recall(q, [h.id for h in png.hits], mask) == 1.0
        # The same filter again within FILTERED_COUNT_SECONDS: what was learnt decides.
        again = vectors.search(MODEL, q, 10, filters=SearchFilters(content_types=("image/png",)))
        assert again.strategy == "exact" and [h.id for h in again.hits] == [h.id for h in png.hits]
        assert len(scans) == len(counted_gif) + 2 and scans[-1][1] is None
        vectors.forget_counts()

    @pytest.mark.single_node
    @pytest.mark.parametrize(
        ("filters", "decided_by"),
        [
            (SearchFilters(content_types=("image/gif",)), "statistics"),  # 10 %: no statement
            (SearchFilters(container="images", content_types=("image/gif", "image/jpeg")), "statistics"),
            (SearchFilters(container="elsewhere", content_types=("image/gif",)), "count"),  # not a known container
            (SearchFilters(content_types=("image/webp",)), "count"),  # not among the common values
            # Names img-00000.jpg to img-02999.jpg: a prefix by the names' histogram.
            (SearchFilters(container="images", prefix="img-01"), "statistics"),  # a third
            (SearchFilters(content_types=("image/gif",), prefix="img-0"), "statistics"),  # 10 % of all
            (SearchFilters(container="images", prefix="img-0299"), "count"),  # 10 names
            (SearchFilters(content_types=("image/gif",), prefix="img-02"), "count"),  # 10 % of a third: 100
            (SearchFilters(prefix="img-9"), "count"),  # no name
        ],
    )
    def test_a_common_content_type_or_prefix_is_decided_by_the_statistics_and_anything_else_by_a_count(
        self, corpus: Corpus, monkeypatch: pytest.MonkeyPatch, filters: SearchFilters, decided_by: str
    ) -> None:
        vectors = corpus.store.vectors
        monkeypatch.setattr(vectors, "exact_scan_max_rows", 100)
        scans: list[int | None] = []
        scan = vectors._counted_scan
        monkeypatch.setattr(vectors, "_counted_scan", lambda *a: scans.append(a[6]) or scan(*a))
        vectors.forget_counts()
        found = vectors.search(MODEL, corpus.queries[3], 10, filters=filters)
        assert scans == ([] if decided_by == "statistics" else [101])
        typed = np.isin(corpus.types, filters.content_types) if filters.content_types else np.ones(N, dtype=bool)
        mask = typed & np.array(
            [
                filters.container in (None, "images") and f"img-{i:05d}.jpg".startswith(filters.prefix or "")
                for i in range(N)
            ]
        )
        assert len(found.hits) == min(10, int(mask.sum())) and all(mask[corpus.ids == h.id][0] for h in found.hits)
        if mask.any():
            assert corpus.recall(corpus.queries[3], [h.id for h in found.hits], mask) >= 0.9
        vectors.forget_counts()

    @pytest.mark.single_node
    def test_an_unfiltered_search_of_a_large_index_reads_no_rows_to_decide(
        self, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The index holds 3,000 vectors, three times the threshold here: the first search goes to the
        index without scanning (PostgreSQL counted the index's rows when it was analysed)."""
        vectors = corpus.store.vectors
        scans: list[int | None] = []
        scan = vectors._counted_scan
        monkeypatch.setattr(vectors, "_counted_scan", lambda *a: scans.append(a[6]) or scan(*a))
        vectors.forget_counts()
        found = vectors.search(MODEL, corpus.queries[2], 10)
        assert found.strategy == "index" and len(found.hits) == 10 and scans == []
        monkeypatch.setattr(vectors, "exact_scan_max_rows", 2_000)  # 3,000 is no longer twice the threshold
        vectors.forget_counts()
        found = vectors.search(MODEL, corpus.queries[2], 10)
        assert found.strategy == "index" and scans == [2_001]  # a count decided, and stopped past 2,000
        vectors.forget_counts()

    @pytest.mark.single_node
    @pytest.mark.parametrize("content_types", [(), ("image/gif",)])
    def test_the_plan_kept_for_a_prepared_search_reads_the_index(
        self, corpus: Corpus, database_url: str, content_types: tuple[str, ...]
    ) -> None:
        """psycopg prepares a statement once a connection has run it 5 times, and PostgreSQL may then
        keep a generic plan, made without the parameters' values. The model and the LIMIT are in the
        statement's text, so that plan still uses the model's partial index (with them as parameters
        it read every vector)."""
        filters = SearchFilters(container="images", content_types=content_types)
        text, params = corpus.store.vectors._index_sql(MODEL, filters, None, 12)
        with psycopg.connect(database_url, autocommit=True) as conn:
            register_vector(conn)
            conn.execute(text, {**params, "q": corpus.queries[0]}, prepare=True).fetchall()
            row = conn.execute(
                "SELECT statement, parameter_types::text[] FROM pg_prepared_statements WHERE NOT from_sql"
            ).fetchone()
            assert row is not None
            statement, types = row
            conn.execute(f"PREPARE generic ({', '.join(types)}) AS {statement}")
            conn.execute("SET plan_cache_mode = force_generic_plan")
            nulls = ", ".join(["NULL"] * len(types))
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE generic ({nulls})"))
        assert "Index Scan using image_vectors_hnsw" in plan, plan

    @pytest.mark.single_node  # Citus searches set nothing on the session (database defaults, or SET LOCAL)
    def test_a_search_sets_what_it_needs_on_its_connection_and_the_next_sets_it_back(
        self, corpus: Corpus, database_url: str
    ) -> None:
        """The usual settings are set once per pooled connection, so a usual search is one statement; a
        search that needs others (more rows, a larger ef_search) sets them on its connection, and the
        next usual search there sets them back."""
        search = make_pool(make_settings(DATABASE_URL=database_url, DATABASE_POOL_MAX="2"), role="search")
        try:
            store = Store(corpus.store.pool, search_pool=search)  # one search connection: every search uses it

            def session() -> tuple[str, str]:
                return store.db.read(
                    lambda c: c.execute("SELECT current_setting('hnsw.ef_search'), current_setting('enable_sort')")
                ).fetchone()

            q = corpus.queries[3]
            usual = store.vectors.search(MODEL, q, 10)
            assert session() == (str(store.vectors.effective_ef_search(MODEL, 10)), "off")
            store.vectors.search(MODEL, q, 100)
            assert session() == (str(store.vectors.effective_ef_search(MODEL, 100)), "off")
            assert store.vectors.search(MODEL, q, 10) == usual
            assert session() == (str(store.vectors.effective_ef_search(MODEL, 10)), "off")
        finally:
            search.close()

    def test_a_search_connection_runs_its_searches_on_one_cursor_that_an_error_does_not_spoil(
        self, corpus: Corpus, database_url: str
    ) -> None:
        """A search pool's connection keeps one cursor for its searches (a new one per statement cost
        60-110 us of a 1.1-1.3 ms search): the next search runs on the same cursor, a statement that failed on
        it leaves it answering, and the answers are those of a store without a search pool of its own."""
        search = make_pool(make_settings(DATABASE_URL=database_url, DATABASE_POOL_MAX="2"), role="search")
        try:
            store = Store(corpus.store.pool, search_pool=search)  # one search connection: every search uses it

            def last_statement(conn: psycopg.Connection[Any]) -> tuple[psycopg.Cursor[Any], str]:
                """The connection's search cursor and the statement it ran last (psycopg keeps it in
                ``_query`` for debugging)."""
                assert isinstance(conn, SearchConnection)
                cursor = conn.search_cursor()
                return cursor, bytes(cursor._query.query if cursor._query else b"").decode()

            q = corpus.queries[5]
            expected = corpus.store.vectors.search(MODEL, q, 10)  # the ingestion pool's connection, a new cursor
            first = store.vectors.search(MODEL, q, 10)
            assert first == expected and len(first.hits) == 10
            used, statement = store.db.read(last_statement)
            assert "FROM image_vectors" in statement and "i.content_type = ANY(" not in statement
            with pytest.raises(psycopg.errors.DivisionByZero):
                store.db.read(lambda c: search_cursor(c).execute("SELECT 1 / 0"))
            cursor, statement = store.db.read(last_statement)
            assert cursor is used and statement == "SELECT 1 / 0"
            assert store.vectors.search(MODEL, q, 10) == expected
            filtered = SearchFilters(content_types=("image/png",))
            assert store.vectors.search(MODEL, q, 5, filters=filtered) == corpus.store.vectors.search(
                MODEL, q, 5, filters=filtered
            )
            cursor, statement = store.db.read(last_statement)  # the filtered search's, with its placeholder
            assert cursor is used and "FROM image_vectors" in statement and "i.content_type = ANY($" in statement
        finally:
            search.close()


def test_a_run_of_equal_distances_at_a_page_edge_is_read_from_the_index(store: Store) -> None:
    """Twelve copies of one image lie at the same distance from it. The index path asks for one row more
    than it returns; when that row ties with the last one returned it asks the index for more, so paging
    visits every copy once and stays on the index instead of scanning every vector."""
    model = store.registry.ensure_model("copies:1", 8)
    rng = np.random.default_rng(11)
    data = unit(rng.standard_normal((300, 8))).astype(np.float32)
    data[100:112] = data[100]  # the copies
    records = [
        ImageRecord("images", f"c{i:03d}.jpg", hashlib.sha256(b"%d" % i).digest(), "image/jpeg", 8, 8, 1)
        for i in range(len(data))
    ]
    store.bulk.upsert(records, data, model.model_id)
    copies = {image_id("images", f"c{i:03d}.jpg") for i in range(100, 112)}
    seen: list[int] = []
    after = None
    while len(seen) < 15:
        found = store.vectors.search(model, data[100], 6, after=after, strategy="index")
        assert found.strategy == "index"
        page = found.hits[:5]
        seen += [h.id for h in page]
        after = After(page[-1].distance, page[-1].id)
    assert len(seen) == len(set(seen)) and set(seen[:12]) == copies


@pytest.mark.parametrize("strategy", ["auto", "exact", "index"])
@pytest.mark.parametrize("prefix", [None, "in/"])
def test_vectors_written_without_their_images_name_are_judged_by_the_image(
    store: Store, strategy: str, prefix: str | None
) -> None:
    """Code older than migration 4 wrote a vector without its image's container and name (and may, while
    a deployment is under way). A search by container and prefix finds such a vector when its image
    matches and never returns one whose image does not, whichever way it searches."""
    model = store.registry.ensure_model("names:1", 8)
    rng = np.random.default_rng(5)
    data = unit(rng.standard_normal((200, 8))).astype(np.float32)
    names = [f"{'in' if i % 2 else 'out'}/{i:03d}.jpg" for i in range(len(data))]
    records = [
        ImageRecord("images", name, hashlib.sha256(name.encode()).digest(), "image/jpeg", 8, 8, 1) for name in names
    ]
    store.bulk.upsert(records, data, model.model_id)
    query = unit(rng.standard_normal(8)).astype(np.float32)
    legacy = [("images", "in/legacy.jpg"), ("images", "out/legacy.jpg"), ("other", "in/legacy.jpg")]
    with store.pool.connection() as conn:
        register_vector(conn)
        for container, name in legacy:  # the nearest vectors of all, as the old code wrote them
            iid = image_id(container, name)
            digest = hashlib.sha256(f"{container}/{name}".encode()).digest()
            conn.execute(
                "INSERT INTO images (id, container, name, status, sha256) VALUES (%s, %s, %s, 'indexed', %s)",
                (iid, container, name, digest),
            )
            conn.execute(
                "INSERT INTO image_vectors (image_id, model_id, sha256, embedding) VALUES (%s, %s, %s, %s)",
                (iid, model.model_id, digest, query),
            )
    filters = SearchFilters(container="images", prefix=prefix)
    found = store.vectors.search(model, query, 10, filters=filters, strategy=strategy)
    kept = [(n, d) for n, d in zip(names, data, strict=True) if prefix is None or n.startswith(prefix)]
    nearest = sorted(kept, key=lambda nd: float(1 - nd[1] @ query))
    inside = ["in/legacy.jpg"] + (["out/legacy.jpg"] if prefix is None else [])
    assert sorted(h.name for h in found.hits[: len(inside)]) == sorted(inside)
    assert [h.name for h in found.hits[len(inside) :]] == [n for n, _ in nearest[: 10 - len(inside)]]
    assert all(image_id("images", h.name) == h.id for h in found.hits)  # none of the other container


class _NoProvider:
    """A provider for "more like this" only: any embedding call is a test failure."""

    model_id = MODEL.model_id
    dimension = DIM

    def embed_image(self, data: bytes) -> np.ndarray:
        raise AssertionError("similar must not embed")

    def embed_text(self, text: str) -> np.ndarray:
        raise AssertionError("similar must not embed")


# --- the command line ------------------------------------------------------------------------------


def test_cli_search_prints_a_ranked_table(
    runtime: Runtime,
    catalogue: Catalogue,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shared.cli import main as cli_main

    monkeypatch.chdir(tmp_path)  # no local.settings.json: the environment alone
    for key in ("DATABASE_URL", "ImagesStorage", "IMAGES_CONTAINER", "VISION_ENDPOINT", "VISION_KEY"):
        monkeypatch.setenv(key, runtime.settings.raw(key) or "")
    red = catalogue.add("red.png", "red", size=(40, 30))
    catalogue.add("blue.png", "blue")
    query = tmp_path / "query.png"
    query.write_bytes(image_bytes("blue", (20, 20), "PNG", seed=3))

    assert cli_main(["search", "a", "red", "thing", "-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "score", "id", "size", "WxH", "name"]
    assert out[1].split()[0] == "1" and out[1].split()[2] == str(red) and out[1].endswith("40x30  red.png")
    assert out[2].startswith("more: add --cursor ")

    assert cli_main(["search", "--image", str(query), "--links"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].endswith("blue.png") and out[2].strip().startswith("http")

    assert cli_main(["search", "--similar", str(red), "--content-type", "image/png"]) == 0
    assert "blue.png" in capsys.readouterr().out

    assert cli_main(["search", "red", "-k", "0"]) == 1
    assert "k is" in capsys.readouterr().err
    assert cli_main(["search", "--similar", "nope"]) == 1
    assert cli_main(["search"]) == 1
