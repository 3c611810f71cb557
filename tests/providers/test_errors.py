"""`classify`: every openai / litellm / transport exception a model call can raise, as a table
of (exception, kind, retryable, next_tier, status), plus Retry-After parsing and redaction."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import openai
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import
import litellm.exceptions as lx

from engine.providers.errors import Failure, MalformedResponseError, classify, redact

REQUEST = httpx.Request("POST", "http://x")


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


def status_error(cls: type[openai.APIStatusError], status: int,
                 message: str = "boom") -> openai.APIStatusError:
    return cls(message, response=response(status), body=None)


L = {"model": "m", "llm_provider": "p"}

CASES: list[tuple[str, BaseException, str, bool, bool, int | None]] = [
    # id, exception, kind, retryable, next_tier, status
    ("oa-timeout", openai.APITimeoutError(request=REQUEST), "timeout", True, True, None),
    ("oa-connection", openai.APIConnectionError(request=REQUEST), "connection", True, True, None),
    ("oa-429", status_error(openai.RateLimitError, 429), "rate_limit", True, True, 429),
    ("oa-500", status_error(openai.InternalServerError, 500), "server", True, True, 500),
    ("oa-503", status_error(openai.APIStatusError, 503), "server", True, True, 503),
    ("oa-401", status_error(openai.AuthenticationError, 401), "auth", False, True, 401),
    ("oa-403", status_error(openai.PermissionDeniedError, 403), "auth", False, True, 403),
    ("oa-404", status_error(openai.NotFoundError, 404), "not_found", False, True, 404),
    ("oa-400", status_error(openai.BadRequestError, 400), "bad_request", False, True, 400),
    ("oa-422", status_error(openai.UnprocessableEntityError, 422), "unprocessable", False, True,
     422),
    ("oa-408", status_error(openai.APIStatusError, 408), "timeout", True, True, 408),
    ("oa-400-context", status_error(openai.BadRequestError, 400,
                                    "This model's maximum context length is 8192 tokens"),
     "context_window", False, True, 400),
    ("oa-validation", openai.APIResponseValidationError(response(200), body=None),
     "malformed", True, True, 200),
    ("lx-timeout", lx.Timeout("slow", **L), "timeout", True, True, 408),
    ("lx-connection", lx.APIConnectionError("refused", **L), "connection", True, True, None),
    ("lx-429", lx.RateLimitError("slow down", **L), "rate_limit", True, True, 429),
    ("lx-500", lx.InternalServerError("oops", **L), "server", True, True, 500),
    ("lx-502", lx.BadGatewayError("bad gw", **L), "server", True, True, 502),
    ("lx-503", lx.ServiceUnavailableError("down", **L), "server", True, True, 503),
    ("lx-401", lx.AuthenticationError("bad key", **L), "auth", False, True, 401),
    ("lx-403", lx.PermissionDeniedError("no", response=response(403), **L), "auth", False,
     True, 403),
    ("lx-404", lx.NotFoundError("no model", **L), "not_found", False, True, 404),
    ("lx-400", lx.BadRequestError("bad param", **L), "bad_request", False, True, 400),
    ("lx-422", lx.UnprocessableEntityError("bad", response=response(422), **L),
     "unprocessable", False, True, 422),
    ("lx-context", lx.ContextWindowExceededError("too long", **L), "context_window", False, True,
     400),
    ("lx-content", lx.ContentPolicyViolationError("unsafe", **L), "content_filter", False, True,
     400),
    ("lx-schema", lx.JSONSchemaValidationError("m", "p", "{", "{}"), "malformed", True, True,
     500),
    ("builtin-timeout", TimeoutError("deadline"), "timeout", True, True, None),
    ("httpx-read-timeout", httpx.ReadTimeout("slow", request=REQUEST), "timeout", True, True,
     None),
    ("httpx-connect", httpx.ConnectError("refused", request=REQUEST), "connection", True, True,
     None),
    ("httpx-broken-stream", httpx.RemoteProtocolError("peer closed", request=REQUEST),
     "connection", True, True, None),
    ("reset", ConnectionResetError("reset"), "connection", True, True, None),
    ("json", json.JSONDecodeError("Expecting value", "{", 1), "malformed", True, True, None),
    ("adapter-malformed", MalformedResponseError("no choices"), "malformed", True, True, None),
    ("bug", KeyError("choices"), "other", False, False, None),
]


@pytest.mark.parametrize(("exc", "kind", "retryable", "next_tier", "status"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_classify_table(exc: BaseException, kind: str, retryable: bool, next_tier: bool,
                        status: int | None) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.retryable, failure.next_tier, failure.status) == (
        kind, retryable, next_tier, status)
    assert failure.message.startswith(type(exc).__name__)


def test_breaker_counts_provider_health_not_bad_requests() -> None:
    tripping = {c[0] for c in CASES if classify(c[1]).trips_breaker}
    assert {"oa-timeout", "oa-429", "oa-500", "lx-connection", "oa-401", "json"} <= tripping
    assert not tripping & {"oa-400", "oa-422", "lx-context", "lx-content", "bug"}


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "7"}, 7.0),
    ({"Retry-After": "1.5"}, 1.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "-3"}, None),
    ({}, None),
])
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    exc = openai.RateLimitError("slow", response=response(429, **headers), body=None)
    assert classify(exc).retry_after == expected


def test_retry_after_http_date_uses_the_injected_wall_clock() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    exc = openai.RateLimitError("slow", response=response(429, **{"retry-after": later}),
                                body=None)
    assert classify(exc, now=now.timestamp).retry_after == 30.0
    past = classify(exc, now=lambda: now.timestamp() + 100)
    assert past.retry_after == 0.0


def test_retry_after_from_litellm_headers_and_response() -> None:
    attached = lx.RateLimitError("slow", headers={"Retry-After": "4"}, **L)
    assert classify(attached).retry_after == 4.0
    upstream = lx.RateLimitError("slow", response=response(429, **{"retry-after": "6"}), **L)
    assert classify(upstream).retry_after == 6.0
    server = lx.InternalServerError("busy", response=response(503, **{"retry-after": "2"}), **L)
    assert classify(server).retry_after == 2.0


def test_message_hides_keys_and_stays_short() -> None:
    exc = lx.AuthenticationError(
        "Incorrect API key provided: sk-proj-abcDEF1234567890abcdef. Authorization: Bearer "
        "eyJhbGciOiJIUzI1NiJ9.payload.sig api_key=hunter2secret " + "x" * 1000, **L)
    failure = classify(exc)
    for secret in ("sk-proj-abcDEF", "eyJhbGci", "hunter2secret", "x" * 40):
        assert secret not in failure.message
    assert "[redacted]" in failure.message
    assert len(failure.message) <= 300


def test_redact_keeps_ordinary_text() -> None:
    assert redact("Rate limit  reached\nfor gpt-4o-mini") == "Rate limit reached for gpt-4o-mini"
    assert redact("key=AIzaSyA1234567890abcdefghijkl") == "key=[redacted]"
    assert redact("AIzaSyA1234567890abcdefghijkl here") == "[redacted] here"


def test_failure_is_frozen_plain_data() -> None:
    failure = classify(TimeoutError())
    assert failure == Failure("timeout", True, True, None, None, "TimeoutError")
    with pytest.raises(AttributeError):
        failure.kind = "other"  # type: ignore[misc]


async def test_asyncio_deadline_is_a_timeout() -> None:
    with pytest.raises(TimeoutError) as caught:
        await asyncio.wait_for(asyncio.Event().wait(), 0)
    assert classify(caught.value).kind == "timeout"
