"""`Idempotency-Key` over HTTP (the IETF httpapi draft, as Stripe runs it).

- The first successful response to a key is kept for 24 h (`Resources.idempotency`, shared
  by replicas with `--redis`) and replayed to every later request with the same key, marked
  `Idempotent-Replayed: true`. A replay costs no model call.
- The same key with a different body is a client bug: 422, never the old answer.
- A duplicate that arrives while the first is still running **waits for it and gets the same
  response** (no 409): a client that timed out and retried gets its answer instead of an
  error to retry again. Its wait is bounded by the pipeline's deadline, as the first run is.
- Only successes are kept. A failed run (502, 504) or a refused request (400, 429, 503) is
  not: retrying with the same key runs again, which is what a retry after a failure is for.

Keys are scoped by API key and route: two tenants can use the same key string.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.providers.idempotency import IdempotencyStore
from engine.serve.openai import ApiError

__all__ = ["HEADER", "Idempotency", "Outcome"]

HEADER = "Idempotency-Key"
_MAX_KEY = 255


@dataclass(slots=True)
class Outcome:
    """A response body, and whether it was replayed (this request ran nothing)."""

    body: dict[str, Any]
    replayed: bool = False


def fingerprint(payload: Any) -> str:
    """The request body's identity: canonical JSON, so key order and spacing do not count."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Idempotency:
    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    async def run(self, key: str | None, scope: str, payload: Any,
                  factory: Callable[[], Awaitable[dict[str, Any]]]) -> Outcome:
        """`factory()`'s body, run once per (scope, key); see the module docstring."""
        if key is None:
            return Outcome(await factory())
        if not 1 <= len(key) <= _MAX_KEY or not key.isprintable():
            raise ApiError(400, f"{HEADER} must be 1 to {_MAX_KEY} printable characters",
                           param=HEADER)
        digest = fingerprint(payload)
        ran = False

        async def first() -> dict[str, Any]:
            nonlocal ran
            ran = True
            return {"hash": digest, "body": await factory()}

        entry = await self.store.run(f"serve:{scope}:{key}", first)
        if entry["hash"] != digest:
            raise ApiError(422, f"this {HEADER} was used with a different request body; use "
                           "a new key for a new request", code="idempotency_key_reused",
                           param=HEADER)
        return Outcome(entry["body"], replayed=not ran)
