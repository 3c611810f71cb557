"""Who may go on, and how many at once: the client's address, per-key and per-IP rate limits,
and load shedding.

- The client address is the TCP peer, unless the peer is a trusted proxy (`--trusted-proxy`):
  then `X-Forwarded-For` is read right to left, skipping trusted hops, and the first address
  not trusted is the client. A header from anyone else is ignored — it is free to forge.
- Rate limits draw from the process's (or, with `--redis`, the replicas') buckets through
  `Resources.rate_limiter`, per key and per IP in one all-or-nothing draw. If Redis fails,
  this process's buckets decide instead (fail open to local limits, as the guard stage does).
- Shedding: at most `--max-inflight` pipeline requests run at once; one more gets 503 with
  `Retry-After` at once instead of waiting in a queue that would only grow under overload.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Sequence

from engine.resources import Resources
from engine.resources.limits import Decision, Limit, Rate, RateLimitStoreError
from engine.serve.keys import Identity
from engine.serve.openai import ApiError

__all__ = ["RateLimits", "Shedder", "client_ip"]

_log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address (see the module docstring)."""
    if not trusted or not forwarded_for or not _within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop if _address(hop) else peer  # garbage from the client: use the proxy
    return hops[0] if hops else peer


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _within(text: str, networks: Sequence[Network]) -> bool:
    address = _address(text)
    return address is not None and any(address in net for net in networks)


class RateLimits:
    """`--rate-per-key` (or a key's own `rate`) and `--rate-per-ip`, drawn together."""

    def __init__(self, resources: Resources, per_key: Rate | None, per_ip: Rate | None
                 ) -> None:
        self.resources = resources
        self.per_key = per_key
        self.per_ip = per_ip

    async def check(self, identity: Identity | None, ip: str) -> None:
        """Raise 429 with `Retry-After` when a bucket is empty; `identity` None: IP only."""
        limits = []
        if self.per_ip is not None:
            limits.append(Limit(f"serve:ip:{ip}", self.per_ip, name="per_ip"))
        rate = (identity.rate or self.per_key) if identity is not None else None
        if identity is not None and rate is not None:
            limits.append(Limit(f"serve:key:{identity.key_id}", rate, name="per_key"))
        if not limits:
            return
        decision = await self._acquire(limits)
        if not decision.allowed:
            wait = max(1, math.ceil(decision.retry_after))
            raise ApiError(429, f"rate limit reached ({decision.limit}); retry in {wait} s",
                           "rate_limit_error", "rate_limit_exceeded",
                           headers={"Retry-After": str(wait)})

    async def _acquire(self, limits: list[Limit]) -> Decision:
        try:
            return await self.resources.rate_limiter(self.resources.redis_url).acquire_all(limits)
        except RateLimitStoreError:  # the limiter logged the outage once: local buckets
            return await self.resources.rate_limiter(None).acquire_all(limits)


class Shedder:
    """Counts pipeline requests in flight and refuses the one past `limit` (see above)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.shed = 0

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.limit

    def enter(self) -> None:
        """Take a slot, or raise 503; the caller must `leave()` once its response is sent
        (for a stream, after the last byte: a stream holds its slot while it runs)."""
        if self.saturated:
            self.shed += 1
            raise ApiError(503, "the server is at capacity; retry shortly", "server_error",
                           "overloaded", headers={"Retry-After": "1"})
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
