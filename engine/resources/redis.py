"""Redis connections for things in the request path (rate limits, caches).

Redis's client defaults retry ten times with backoff: a caller then waits seconds on a dead
server. Here a client built from a URL gives up fast (`timeout` seconds, one retry, which
also reconnects after a restart), so the caller can take its fail-open path instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["connect"]


def connect(client: str | Redis, timeout: float) -> tuple[Redis, bool]:
    """A client for `client` (a URL, or a client the caller owns), and whether we own it."""
    if not isinstance(client, str):
        return client, False
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(client, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 1)), True
