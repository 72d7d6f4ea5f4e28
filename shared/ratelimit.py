"""A client-side rate limiter: spaces calls to a rate-limited service so they are never refused.

Azure AI Vision S1 takes about 20 calls per second per resource and answers 429 beyond that. Retrying
after a 429 wastes capacity (the refused call took a round trip, and ``Retry-After`` is given in whole
seconds), so a worker that knows its share of the limit should space its calls instead: one limiter
per service endpoint, shared by every thread (and every provider object) of the worker process.

The limiter is a token bucket written as GCRA (generic cell rate algorithm): it keeps the time at
which the next call may start; each call reserves the slot after it under a lock and sleeps outside
the lock, so waiting threads go in the order they arrived and none can starve.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

_registry: dict[str, RateLimiter] = {}
_registry_lock = threading.Lock()


class RateLimitTimeout(Exception):
    """No slot within the time the caller was willing to wait."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the next free slot is {wait:.2f} s away")
        self.wait = wait


class RateLimiter:
    """At most ``rate`` calls per second on average, at most ``burst`` at once after a quiet spell."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError("rate must be a positive number of calls per second and burst at least 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._interval = 1.0 / self.rate
        # How far ahead of schedule a call may start: burst - 1 intervals.
        self._tolerance = (self.burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._next = clock()  # the theoretical start of the next call
        self._lock = threading.Lock()

    def reserve(self, timeout: float | None = None) -> float:
        """Reserve the next slot; returns how long to wait before using it.

        Raises :class:`RateLimitTimeout` (reserving nothing) when that wait would exceed ``timeout``.
        """
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            wait = max(0.0, start - self._tolerance - now)
            if timeout is not None and wait > timeout:
                raise RateLimitTimeout(wait)
            self._next = start + self._interval
        return wait

    def acquire(self, timeout: float | None = None) -> float:
        """Wait for a slot (at most ``timeout`` seconds, else :class:`RateLimitTimeout`); returns the wait."""
        wait = self.reserve(timeout)
        if wait > 0:
            self._sleep(wait)
        return wait


def shared_limiter(key: str, rate: float, *, burst: int = 1) -> RateLimiter:
    """The process-wide limiter for ``key`` (e.g. a service endpoint), created on first use.

    Every provider object that calls the same endpoint gets the same limiter, so the worker as a whole
    keeps to the rate. Asking again with another rate replaces the limiter (settings changed).
    """
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None or limiter.rate != float(rate) or limiter.burst != burst:
            limiter = _registry[key] = RateLimiter(rate, burst=burst)
        return limiter
