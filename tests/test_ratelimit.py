"""The client-side rate limiter, on a virtual clock, and its use by the Vision client."""

from __future__ import annotations

import itertools
import threading

import pytest

from shared.errors import ProviderUnavailable
from shared.ratelimit import RateLimiter, RateLimitTimeout, shared_limiter
from shared.settings import Settings
from shared.vision import AzureVisionProvider
from tests.fake_vision import FakeVision


class VirtualTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.lock = threading.Lock()

    def clock(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)
            self.now += seconds


def test_calls_are_spaced_to_the_rate() -> None:
    t = VirtualTime()
    limiter = RateLimiter(4, clock=t.clock, sleep=t.sleep)
    starts = []
    for _ in range(9):
        limiter.acquire()
        starts.append(t.now)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps == [0.25] * 8


def test_a_burst_after_a_quiet_spell_then_the_rate() -> None:
    t = VirtualTime()
    limiter = RateLimiter(2, burst=3, clock=t.clock, sleep=t.sleep)
    t.now += 10  # quiet
    waits = [limiter.reserve() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == pytest.approx(0.5) and waits[4] == pytest.approx(1.0)


def test_a_timeout_raises_without_using_up_a_slot() -> None:
    t = VirtualTime()
    limiter = RateLimiter(1, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    with pytest.raises(RateLimitTimeout) as caught:
        limiter.acquire(timeout=0.5)
    assert caught.value.wait == pytest.approx(1.0)
    assert limiter.reserve() == pytest.approx(1.0)  # the refused call did not take the next slot


def test_threads_share_the_rate() -> None:
    limiter = RateLimiter(200)
    done: list[float] = []

    def work() -> None:
        for _ in range(10):
            limiter.acquire()
            done.append(1)

    import time

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(done) == 40 and time.monotonic() - started >= 39 / 200 * 0.95


def test_bad_rates_are_refused_and_the_shared_limiter_is_reused() -> None:
    for rate in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            RateLimiter(rate)
    a = shared_limiter("https://x.example/", 5)
    assert shared_limiter("https://x.example/", 5) is a
    assert shared_limiter("https://x.example/", 6) is not a


@pytest.mark.parametrize(("value", "rate"), [("20", 20.0), ("0.3", 0.3), ("", 0.0), ("0", 0.0)])
def test_the_setting(value: str, rate: float) -> None:
    assert Settings({"VISION_MAX_REQUESTS_PER_SECOND": value}).vision_max_requests_per_second == rate


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_setting_is_named(value: str) -> None:
    from shared.errors import SettingError

    with pytest.raises(SettingError, match="VISION_MAX_REQUESTS_PER_SECOND"):
        _ = Settings({"VISION_MAX_REQUESTS_PER_SECOND": value}).vision_max_requests_per_second


def test_vision_waits_for_a_slot_and_gives_up_within_its_budget(fake_vision: FakeVision) -> None:
    settings = Settings(
        {
            "VISION_ENDPOINT": fake_vision.endpoint,
            "VISION_KEY": fake_vision.key or "",
            "VISION_MAX_REQUESTS_PER_SECOND": "0.2",
            "VISION_MAX_RETRY_SECONDS": "0",
        }
    )
    provider = AzureVisionProvider.from_settings(settings)
    assert provider.rate_limiter is not None and provider.rate_limiter.rate == 0.2
    provider.embed_text("red")  # first slot is free
    with pytest.raises(ProviderUnavailable, match="VISION_MAX_REQUESTS_PER_SECOND"):
        provider.embed_text("blue")  # the next slot is 5 s away, beyond the budget (0, at least 1 s a call)
    assert len(fake_vision.calls("text")) == 1
