"""Redis connections for things in the request path (rate limits, caches, breakers,
idempotency keys, provider slots), and how each process lives through a Redis outage.

Redis's client defaults retry ten times with backoff: a caller then waits seconds on a dead
server. Here a client built from a URL gives up fast (`timeout` seconds, one retry, which
also reconnects after a restart), so the caller can take its fail-open path instead.

Giving up fast is not enough when Redis hangs rather than refuses: every call would still
wait its timeout. So each store keeps an `Outage`: after a failure it does not ask Redis
again for `cooldown` seconds (its callers take their local path at once), and it logs the
outage once when it starts and once when it ends, never per call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["COOLDOWN", "Outage", "connect"]

COOLDOWN = 5.0
"""Seconds a store leaves Redis alone after a failure."""
_log = logging.getLogger(__name__)


class Outage:
    """One store's view of its Redis: `available()` is False while cooling down after a
    failure; `failed(exc)` starts (or extends) an outage, `recovered()` ends it."""

    def __init__(self, store: str, meanwhile: str, *, cooldown: float = COOLDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.meanwhile = meanwhile
        """What the store does instead, for the log line: "each process keeps its own"."""
        self.cooldown = cooldown
        self._clock = clock
        self._until = -math.inf  # monotonic clocks may start anywhere, below 0 too
        self.down = False

    def available(self) -> bool:
        return self._clock() >= self._until

    def failed(self, exc: BaseException, during: str = "") -> None:
        """`during`: the operation that failed, for the log line."""
        self._until = self._clock() + self.cooldown
        if not self.down:
            self.down = True
            _log.warning("%s unavailable (%s%s: %s): %s; retrying every %.1f s", self.store,
                         f"{during}: " if during else "", type(exc).__name__, exc,
                         self.meanwhile, self.cooldown)

    def recovered(self) -> None:
        if self.down:
            self.down = False
            _log.warning("%s is back", self.store)


def connect(client: str | Redis, timeout: float) -> tuple[Redis, bool]:
    """A client for `client` (a URL, or a client the caller owns), and whether we own it."""
    if not isinstance(client, str):
        return client, False
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(client, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 1)), True
