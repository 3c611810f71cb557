"""The chaos stub provider: an OpenAI-compatible HTTP server on 127.0.0.1.

Tests (and users chaos-testing their pipelines) point litellm at `stub.base_url`:

    async with StubProvider(StubConfig(rules=[...])) as stub:
        stub.plan("smart", ["429", "ok"])          # next outcomes for model "smart"
        await litellm.acompletion(model="openai/smart", api_base=stub.base_url, ...)
        assert [r.outcome for r in stub.requests_for("smart")] == ["429", "ok"]

Replies come from `StubConfig.rules`, otherwise an echo of the last user message. Faults
(see `stub_config`) are drawn per requested model with a seeded RNG after any planned
outcomes are used up. A hung request never answers until the client gives up or the stub
stops; stopping is prompt either way. Sync code (a CLI under test) can use
`with StubProvider(...) as stub:`, which serves from a background thread.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from aiohttp import web

from engine.providers.stub_config import (
    OUTCOMES,
    LatencyRange,
    RecordedRequest,
    StubConfig,
    content_text,
    words,
)

__all__ = ["RecordedRequest", "StubProvider"]

_ERRORS: dict[str, tuple[int, str, str, str]] = {  # outcome → status, type, code, message
    "429": (429, "rate_limit_error", "rate_limit_exceeded", "Rate limit reached (stub)."),
    "500": (500, "server_error", "internal_error", "The server had an error (stub)."),
    "503": (503, "service_unavailable", "overloaded", "The engine is overloaded (stub)."),
}
_PIECES = re.compile(r"\s*\S+\s*|\s+")


class StubProvider:
    """An OpenAI-compatible server with scripted answers and injected faults."""

    def __init__(
        self,
        config: StubConfig | None = None,
        *,
        port: int = 0,
        on_request: Callable[[RecordedRequest], None] | None = None,
    ) -> None:
        self.config = config or StubConfig()
        self.port = port
        self.on_request = on_request
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        """The most chat requests it was answering at once: what a client's concurrency limit
        let through, seen from the provider's side."""
        self._plans: dict[str, deque[str]] = {}
        self._rngs: dict[str, random.Random] = {}
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counter = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the stub provider is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._counted)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._health)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop promptly: hung requests and pending sleeps are released first."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> StubProvider:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> StubProvider:
        """Serve from a background thread (its own event loop), for synchronous callers."""
        started = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="stub-provider", daemon=True)
        self._thread.start()
        started.wait()
        if errors:
            raise errors[0]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = self._loop = None

    # -- test control ----------------------------------------------------------------------

    def plan(self, model: str, outcomes: Iterable[str]) -> None:
        """Queue the next outcomes for `model` ("*": any model without its own plan).

        Outcomes are "ok" or a fault kind; they are used in order, before random faults."""
        outcomes = list(outcomes)
        unknown = [outcome for outcome in outcomes if outcome not in OUTCOMES]
        if unknown:
            raise ValueError(f"unknown outcomes {unknown}; expected some of {OUTCOMES}")
        self._plans.setdefault(model, deque()).extend(outcomes)

    def planned(self, model: str) -> list[str]:
        """The outcomes still queued for `model`."""
        return list(self._plans.get(model, ()))

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.model == model]

    def reset(self) -> None:
        """Forget recorded requests and plans; restart the random draws from the seed."""
        self.requests.clear()
        self._plans.clear()
        self._rngs.clear()

    async def wait_for_requests(
        self, count: int, model: str | None = None, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until `count` requests (for `model`, if given) have been received."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests if model is None else self.requests_for(model)
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(seen)} of {count} requests after {timeout}s")
            await asyncio.sleep(0.005)

    # -- behaviour -------------------------------------------------------------------------

    def _rng(self, model: str) -> random.Random:
        """One RNG per model, so a model's draws do not depend on other models' traffic."""
        if model not in self._rngs:
            seed = self.config.seed
            self._rngs[model] = random.Random(None if seed is None else f"{seed}:{model}")
        return self._rngs[model]

    def _choose(self, model: str) -> str:
        queue = self._plans.get(model) or self._plans.get("*")
        if queue:
            return queue.popleft()
        profile = self.config.profile_for(model)
        rng = self._rng(model)
        draw = rng.random()
        if draw < profile.failure_rate and any(profile.faults.values()):
            kinds, weights = zip(*profile.faults.items(), strict=True)
            return str(rng.choices(kinds, weights)[0])
        return "ok"

    def _latency(self, model: str) -> float:
        latency = self.config.profile_for(model).latency
        if isinstance(latency, LatencyRange):
            return self._rng(model).uniform(latency.min, latency.max)
        return latency

    def reply_for(self, model: str, messages: list[dict[str, Any]]) -> str:
        """The scripted reply: the first matching rule, otherwise an echo."""
        users = [m for m in messages if m.get("role") == "user"]
        last_user = content_text(users[-1]) if users else ""
        texts = [content_text(m) for m in messages]
        for rule in self.config.rules:
            if rule.model is not None and rule.model != model:
                continue
            searched = [last_user] if rule.on == "last_user" else texts
            if any(re.search(rule.match, text) for text in searched):
                return rule.reply.replace("{model}", model).replace("{message}", last_user)
        return self.config.echo_prefix + last_user

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the stub is stopping; False when it is."""
        if seconds <= 0:
            return not self._closing.is_set()
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    # -- handlers --------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        names = sorted({*self.config.models, *(r.model for r in self.requests if r.model)})
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "stub"} for n in names]
        return web.json_response({"object": "list", "data": data})

    async def _counted(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._chat(request)
        finally:
            self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            body = await request.json()
            model, messages = body["model"], body["messages"]
            if not isinstance(model, str) or not isinstance(messages, list):
                raise TypeError("model must be a string and messages a list")
        except (ValueError, KeyError, TypeError) as exc:
            self._record(RecordedRequest(time.time(), "", [], False, headers, "invalid"))
            return _error(400, "invalid_request_error", "invalid_request",
                          f"Invalid request body: {exc}")
        stream = bool(body.get("stream"))
        outcome = self._choose(model)
        self._record(RecordedRequest(time.time(), model, messages, stream, headers, outcome,
                                     body))
        if outcome == "hang":
            return await self._hang(request)
        if not await self._sleep(self._latency(model)):
            return _drop(request)
        if outcome in _ERRORS:
            status, kind, code, message = _ERRORS[outcome]
            extra = {"Retry-After": f"{self.config.profile_for(model).retry_after:g}"}
            return _error(status, kind, code, message, extra if outcome == "429" else None)
        if outcome == "malformed":
            if stream:
                return await self._malformed_stream(request)
            return web.Response(status=200, text='{"id": "chatcmpl-stub", "choices": [{"ind',
                                content_type="application/json")
        return await self._answer(request, body, model, messages, outcome)

    async def _answer(self, request: web.Request, body: dict[str, Any], model: str,
                      messages: list[dict[str, Any]], outcome: str) -> web.StreamResponse:
        """The scripted reply, whole or streamed; `cut*` outcomes break it on the way."""
        reply = self.reply_for(model, messages)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and words(reply) > limit:
            reply, finish = " ".join(reply.split()[:limit]), "length"
        usage = {"prompt_tokens": sum(words(content_text(m)) for m in messages),
                 "completion_tokens": words(reply)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._counter += 1
        ident = f"chatcmpl-stub-{self._counter}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, model, ident, reply, finish,
                                      usage if include_usage else None, outcome)
        if outcome == "cut_before_first_token":
            return _drop(request)
        payload = json.dumps({
            "id": ident, "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None, "usage": usage,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": reply}}],
        }).encode()
        if outcome == "cut":  # headers promise the whole body; half of it arrives
            response = web.StreamResponse(status=200, headers={"Content-Type":
                                                                "application/json"})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            return _drop(request, response)
        return web.Response(body=payload, content_type="application/json")

    def _record(self, recorded: RecordedRequest) -> None:
        self.requests.append(recorded)
        if self.on_request is not None:
            self.on_request(recorded)

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer: the handler is cancelled when the client disconnects, and released
        (dropping the connection) when the stub stops."""
        await self._closing.wait()
        return _drop(request)

    async def _stream(
        self, request: web.Request, model: str, ident: str, reply: str, finish: str,
        usage: dict[str, int] | None, outcome: str,
    ) -> web.StreamResponse:
        response = await _sse_response(request)
        created = int(time.time())
        delay = self.config.profile_for(model).chunk_delay

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason,
                                 "logprobs": None}]}

        if outcome == "cut_before_first_token":  # 200 and SSE headers, then nothing
            return _drop(request, response)
        await _send(response, chunk({"role": "assistant", "content": ""}))
        cut_after = self.config.profile_for(model).cut_after
        for index, piece in enumerate(_PIECES.findall(reply)):
            if outcome == "cut" and index >= cut_after:
                return _drop(request, response)
            if index and not await self._sleep(delay):
                return _drop(request, response)
            await _send(response, chunk({"content": piece}))
        if outcome == "cut":  # the reply was shorter than cut_after: cut before finishing
            return _drop(request, response)
        await _send(response, chunk({}, finish))
        if usage is not None:
            await _send(response, {**chunk({}), "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _malformed_stream(self, request: web.Request) -> web.StreamResponse:
        response = await _sse_response(request)
        await response.write(b'data: {"id": "chatcmpl-stub", "choices": [{"delta": {"con\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _error(
    status: int, kind: str, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


async def _sse_response(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection abruptly; aiohttp then fails to finish the response quietly."""
    if request.transport is not None:
        request.transport.abort()
    return response if response is not None else web.Response()
