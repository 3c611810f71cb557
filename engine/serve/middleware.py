"""The ASGI layer under the routes: body limits, the body timeout, and response counting.

Plain ASGI rather than Starlette's `BaseHTTPMiddleware`: that one buffers streamed responses
through an extra task per request, and costs a good share of the gateway's overhead.

- Body limit (`--max-body`): a `Content-Length` over it is refused before a byte is read; a
  chunked body is counted as it arrives and refused when it passes the limit (413).
- Body timeout (`--body-timeout`): the whole body must arrive within it (408), so a client
  trickling bytes cannot hold a slot. The header timeout is the protocol's
  (`engine.serve.protocol`): headers come before any ASGI code runs.
- `engine_http_responses_total{route,code}`: every response by route template (never the
  raw path, which a client controls) and status; `engine_http_inflight`, `engine_http_shed_total`
  from the gateway's shedder, read when scraped.
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.serve.limits import Shedder
from engine.serve.openai import ApiError

__all__ = ["BodyLimit", "CountResponses", "ShedderMetrics"]

async def _reply(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes", code="body_too_large")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int, timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await _reply(send, _too_large(self.max_body))
                return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        received = 0
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message: Message = await receive()
            except TimeoutError:
                raise ApiError(408, f"the request body did not arrive within {self.timeout:g} s",
                               code="body_timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_body:
                    raise _too_large(self.max_body)
            return message

        return limited


class CountResponses:
    """Counts responses by route template and status code."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.counter = Counter("engine_http_responses", "HTTP responses by route and status",
                               ["route", "code"], registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                self.counter.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


class ShedderMetrics(Collector):
    def __init__(self, shedder: Shedder) -> None:
        self.shedder = shedder

    def collect(self) -> list[Metric]:
        inflight = GaugeMetricFamily("engine_http_inflight", "Pipeline requests in flight")
        inflight.add_metric([], self.shedder.inflight)
        shed = CounterMetricFamily("engine_http_shed", "Requests refused with 503 at capacity")
        shed.add_metric([], self.shedder.shed)
        return [inflight, shed]
