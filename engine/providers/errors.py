"""What went wrong with a model call, as plain data: `classify(exc) -> Failure`.

The `generate` stage asks three questions of every failure, and `Failure` answers each one:

- `retryable`: could the *same* call to the *same* model succeed if repeated? Yes for timeouts,
  connection errors (including broken streams), 429, 5xx and malformed responses (a model's
  output varies between calls); no for auth, 4xx and context-window errors, which repeat.
- `next_tier`: could a *different* tier (another model, often another provider) succeed? Yes
  for every provider failure, including the non-retryable ones: a context-window error is the
  textbook case (a larger model takes the prompt); a 400/422 usually means *this* provider
  rejects a parameter or format another accepts; 401/403 is this tier's key, not the request's
  fault, and a fallback keeps the request alive while the trace reports the broken key; 404 is
  this tier's model name; a content filter is this provider's policy. Only `other` (an
  exception that is not a provider failure at all, i.e. a bug in our code) says no: it would
  fail on every tier, and burning through them would only hide it.
- `trips_breaker`: does it say the *model* is unhealthy? Timeouts, connection errors, 429, 5xx,
  malformed output, auth and not-found do; errors caused by the request itself (400, 422,
  context window, content filter) and bugs do not, so bad inputs cannot open a breaker.

Exception classes are recognised by name along the MRO, not by `isinstance`: openai, litellm
and httpx are not core dependencies (and `engine validate` must not import them), and openai
raises through `httpx2` while litellm may use `httpx`; the names are the same in all.
litellm's classes subclass openai's, so their MRO carries openai's names too; the direct
transport's (`http_chat`) subclass the builtin `TimeoutError` / `ConnectionError` or carry
`status_code`, `headers`, `code` and `body` as openai's status errors do.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

__all__ = ["Failure", "FailureKind", "MalformedResponseError", "classify", "redact"]

FailureKind = Literal[
    "timeout", "connection", "rate_limit", "server", "auth", "bad_request", "not_found",
    "unprocessable", "context_window", "content_filter", "malformed", "other",
]

_RETRYABLE: frozenset[FailureKind] = frozenset(
    {"timeout", "connection", "rate_limit", "server", "malformed"})
_TRIPS_BREAKER: frozenset[FailureKind] = _RETRYABLE | {"auth", "not_found"}

# Checked in this order: the first class name found anywhere in the MRO decides the kind.
_BY_NAME: tuple[tuple[FailureKind, frozenset[str]], ...] = (
    ("malformed", frozenset({"MalformedResponseError", "APIResponseValidationError",
                             "JSONDecodeError", "LengthFinishReasonError"})),
    ("content_filter", frozenset({"ContentPolicyViolationError",
                                  "ContentFilterFinishReasonError"})),
    ("context_window", frozenset({"ContextWindowExceededError"})),
    ("timeout", frozenset({"APITimeoutError", "TimeoutException", "TimeoutError"})),
    ("connection", frozenset({"APIConnectionError", "TransportError", "ConnectionError"})),
)
_BY_STATUS: dict[int, FailureKind] = {
    400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout",
    413: "context_window", 422: "unprocessable", 429: "rate_limit",
}
_CONTEXT_HINTS = re.compile(
    r"context_length_exceeded|maximum context length|context window|prompt is too long"
    r"|too many tokens", re.IGNORECASE)
_FILTER_HINTS = re.compile(r"content_filter|content_policy|content management policy",
                           re.IGNORECASE)
_SECRETS = (
    re.compile(r"(?i)\bbearer\s+[\w.~+/=-]+"),
    re.compile(r"(?i)\b((?:api[-_]?key|x-api-key|key|token|secret|password|authorization)"
               r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',&;]+"),
    re.compile(r"\b(?:sk|pk|rk)-[\w-]{8,}"),
    re.compile(r"\bAIza[\w-]{20,}"),
    re.compile(r"\b[\w-]{32,}"),
)
_MAX_MESSAGE = 300


class MalformedResponseError(Exception):
    """Raised by an adapter when a provider answered 2xx with something unusable
    (no choices, bad JSON, a stream cut short without an error)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One classified failure. Plain data: it goes into traces, metrics and audit logs as is,
    so `message` is short and has anything that looks like a credential removed."""

    kind: FailureKind
    retryable: bool
    next_tier: bool
    status: int | None = None
    retry_after: float | None = None
    message: str = ""

    @property
    def trips_breaker(self) -> bool:
        """True when the failure says the model is unhealthy, not that the request was bad."""
        return self.kind in _TRIPS_BREAKER


def classify(exc: BaseException, *, now: Callable[[], float] = time.time) -> Failure:
    """Classify any exception raised by a model call. `now` (wall-clock seconds) is only used
    to turn an HTTP-date `Retry-After` into a delay."""
    status = _status(exc)
    kind = _kind(exc, status)
    return Failure(
        kind=kind,
        retryable=kind in _RETRYABLE,
        next_tier=kind != "other",
        status=None if kind == "connection" else status,  # litellm fakes 500 on these
        retry_after=_retry_after(exc, now()),
        message=redact(f"{type(exc).__name__}: {exc}".removesuffix(": ")),
    )


def redact(text: str) -> str:
    """Collapse whitespace, blank out credential-looking tokens, and cut to a short line."""
    text = " ".join(text.split())
    for pattern in _SECRETS:
        text = pattern.sub(_blank, text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _blank(match: re.Match[str]) -> str:
    prefix = match.group(1) if match.re.groups else ""
    return f"{prefix}[redacted]"


def _kind(exc: BaseException, status: int | None) -> FailureKind:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, json.JSONDecodeError):
        return "malformed"
    for kind, candidates in _BY_NAME:
        if names & candidates:
            return kind
    if status is None:
        return "other"
    if status >= 500:
        return "server"
    kind = _BY_STATUS.get(status, "bad_request" if status >= 400 else "other")
    if kind in ("bad_request", "unprocessable", "not_found"):
        text = f"{exc} {getattr(exc, 'code', '') or ''} {getattr(exc, 'body', '') or ''}"
        if _CONTEXT_HINTS.search(text):
            return "context_window"
        if _FILTER_HINTS.search(text):
            return "content_filter"
    return kind


def _status(exc: BaseException) -> int | None:
    for value in (getattr(exc, "status_code", None),
                  getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _headers(exc: BaseException) -> dict[str, str]:
    """litellm's attached headers, overridden by the real response's where both exist."""
    found: dict[str, str] = {}
    sources = (getattr(exc, "litellm_response_headers", None), getattr(exc, "headers", None),
               getattr(getattr(exc, "response", None), "headers", None))
    for source in sources:
        items = source.items() if isinstance(source, Mapping) else _items(source)
        found.update({str(k).lower(): str(v) for k, v in items})
    return found


def _items(source: object) -> list[tuple[object, object]]:
    items = getattr(source, "items", None)  # httpx.Headers is not a Mapping subclass
    return list(items()) if callable(items) else []


def _retry_after(exc: BaseException, now: float) -> float | None:
    headers = _headers(exc)
    if (millis := _seconds(headers.get("retry-after-ms"))) is not None:
        return millis / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    if (seconds := _seconds(raw)) is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now) if when.tzinfo is not None else None


def _seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 and value == value and value != float("inf") else None
