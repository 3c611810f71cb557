"""When to try a model call again: exponential backoff with jitter, a retry budget, and the
loop that combines them with `classify`.

Backoff alone is not enough under a real outage: if every request retries twice, an
overloaded provider sees three times its normal load exactly when it can least take it. The
`RetryBudget` (Finagle's RetryBudget, gRPC's retry throttling) caps retries at a fraction of
recent traffic, so a failing provider sees at most ~`ratio` extra load, and the fallback tier
takes over instead of a retry storm.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from engine.spec.models import Retry

__all__ = ["Backoff", "Jitter", "RetryBudget"]

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `n` (1 = the first retry): the ceiling `base·2^(n-1)`, capped
    at `cap` (1, 2, 4, 8, 8 … s with the defaults), then jittered so that clients that failed
    together do not come back together. `full`: uniform(0, ceiling), the AWS recommendation
    and our default; `equal`: ceiling/2 + uniform(0, ceiling/2), which keeps a minimum pause;
    `none`: the ceiling itself (tests, or a single client). The RNG is injected so schedules
    are reproducible."""

    base: float = 1.0
    cap: float = 8.0
    jitter: Jitter = "full"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_spec(cls, spec: Retry, rng: random.Random | None = None) -> Backoff:
        return cls(spec.backoff, spec.max_backoff, spec.jitter, rng or random.Random())

    def ceiling(self, retry: int) -> float:
        """The un-jittered delay before retry number `retry` (≥ 1)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        return min(self.cap, self.base * 2.0 ** min(retry - 1, 64))

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The jittered delay. A server's `Retry-After` is a floor (we never come back sooner
        than asked) and is not capped: whether waiting that long fits is the caller's call."""
        top = self.ceiling(retry)
        if self.jitter == "full":
            wait = self.rng.uniform(0.0, top)
        elif self.jitter == "equal":
            wait = top / 2 + self.rng.uniform(0.0, top / 2)
        else:
            wait = top
        return wait if retry_after is None else max(wait, retry_after)


class RetryBudget:
    """Retries allowed in a rolling `window` of seconds: `ratio` * the requests recorded in it,
    plus a floor of `min_retries_per_second` * `window` so that a lone request can still retry.

    `record_request()` once per original request (not per retry); `try_acquire()` before each
    retry: it returns False, and records nothing, when the budget is spent. Counts are kept in
    `slots` buckets per window, so memory is bounded whatever the traffic. One event loop, no
    locking. One budget per model (or per provider) is the intended scope."""

    def __init__(self, ratio: float = 0.2, min_retries_per_second: float = 1.0,
                 window: float = 10.0, *, slots: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ratio < 0 or min_retries_per_second < 0 or window <= 0 or slots < 1:
            raise ValueError("ratio and min_retries_per_second must be ≥ 0, window > 0")
        self.ratio = ratio
        self.floor = min_retries_per_second * window
        self._width = window / slots
        self._slots = slots
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [slot number, requests, retries]

    def record_request(self) -> None:
        self._bucket()[1] += 1

    def try_acquire(self) -> bool:
        bucket = self._bucket()
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        if retries + 1 > self.ratio * requests + self.floor:
            return False
        bucket[2] += 1
        return True

    def _bucket(self) -> list[int]:
        slot = int(self._clock() // self._width)
        while self._buckets and self._buckets[0][0] <= slot - self._slots:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != slot:
            self._buckets.append([slot, 0, 0])
        return self._buckets[-1]
