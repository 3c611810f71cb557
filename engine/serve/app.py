"""The HTTP routes of `engine serve` (FastAPI), over one `Gateway`.

| route                               | what                                              |
|-------------------------------------|---------------------------------------------------|
| `POST /v1/chat/completions`         | a pipeline as an OpenAI model (`model` = its name) |
| `POST /v1/pipelines/{name}/runs`    | a JSON record in, the run's result out            |
| `GET /v1/pipelines`, `GET /v1/models` | what this key may call                          |
| `POST /v1/feedback`                 | `{"id": response id, "score": -1..1}`             |
| `GET /v1/pipelines/{name}/shadow`   | the shadow candidate compared (`engine.serve.shadow`) |
| `GET /v1/pipelines/{name}/canary`   | the canary's state and windows (`engine.serve.canary`) |
| `GET /metrics`, `/healthz`, `/readyz` | Prometheus text; alive; ready (warm, not shedding) |

Every error is OpenAI's `{"error": {message, type, param, code}}`: 400 a malformed body or a
record that does not match `input.schema` (400, not 422: OpenAI clients treat 400 as "fix
the request"; 422 is kept for an `Idempotency-Key` reused with another body), 401 no or a
wrong key, 403 a key not allowed on the pipeline or a user who opted out, 404 no such
pipeline, 408 body too slow, 413 body too large, 429 rate limited (`Retry-After`), 502 the
run failed, 503 shedding load (`Retry-After`), 504 the pipeline's deadline passed. A bug is
a 500 with a fixed message: no stack trace or exception text ever reaches a response.

A pipeline with a shadow or canary candidate answers with `X-Engine-Variant: baseline |
candidate` (the version chosen for this request); its shadow is offered the request in a
background task of the response, which runs once the response's last byte is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from engine.results import RunResult
from engine.runtime.context import RunHooks
from engine.serve.audit import Request as AuditRequest
from engine.serve.feedback import Feedback, trace_id_of
from engine.serve.gateway import Gateway, Served
from engine.serve.idempotency import HEADER, Outcome
from engine.serve.keys import Identity
from engine.serve.mapping import usage
from engine.serve.middleware import BodyLimit, CountResponses, ShedderMetrics
from engine.serve.openai import ApiError, ChatRequest, completion, error_body
from engine.serve.streaming import LiveText, events

__all__ = ["create_app"]

_log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def create_app(gateway: Gateway) -> Any:
    """The ASGI app serving `gateway` (started and closed by the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="engine serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    _errors(app)
    _routes(app, gateway)
    gateway.metrics.registry.register(ShedderMetrics(gateway.shedder))
    counted = CountResponses(app, gateway.metrics.registry)
    return BodyLimit(counted, gateway.config.max_body, gateway.config.body_timeout)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(message, "invalid_request_error"), exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return JSONResponse(error_body("invalid request", "invalid_request_error"), 400)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> Response:
        _log.error("unexpected error", exc_info=exc)
        return JSONResponse(error_body("internal error; the server log has the details",
                                       "server_error"), 500)


def _new_trace() -> str:
    return os.urandom(16).hex()


async def _parse(request: Request, model: type[M]) -> tuple[M, Any]:
    """The body as `model` (and as plain JSON, for idempotency fingerprints), or 400."""
    payload = await _json(request)
    try:
        return model.model_validate(payload), payload
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ApiError(400, f"{where}: {problem['msg']}" if where else problem["msg"],
                       param=where or None) from None


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _checked(gateway: Gateway, served: Served, audit: AuditRequest, make: Callable[[], Any]
             ) -> Any:
    """The input record `make()` builds, checked against `input.schema`; a 400 is audited."""
    try:
        record = make()
        gateway.check_input(served, record)
    except ApiError as exc:
        gateway.audit(audit, str(exc.status))
        raise
    return record


async def _audited(gateway: Gateway, audit: AuditRequest, work: Awaitable[Outcome]
                   ) -> Outcome:
    """`work`'s outcome, with the request's audit record written however it ends."""
    try:
        outcome = await work
    except ApiError as exc:
        gateway.audit(audit, str(exc.status))
        raise
    gateway.audit(audit, "replayed" if outcome.replayed else
                  audit.result.status if audit.result is not None else "ok")
    return outcome


def _run(gateway: Gateway, served: Served, record: Any, hooks: RunHooks, audit: AuditRequest,
         body: Callable[[RunResult], dict[str, Any]]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The idempotent unit of work: run once, audit, raise for a failed run, build the body."""

    async def produce() -> dict[str, Any]:
        result = await gateway.run(served, record, hooks, audit.tenant)
        audit.result = result
        gateway.check(served, result)
        answer = body(result)
        audit.output_text = json.dumps(result.output, ensure_ascii=False, default=str)
        return answer

    return produce


async def _admit(gateway: Gateway, request: Request) -> tuple[Identity, str]:
    peer = request.client.host if request.client else ""
    return await gateway.admit(request.headers.get("authorization"), peer,
                               request.headers.get("x-forwarded-for"))


async def _once(gateway: Gateway, request: Request, identity: Identity, route: str,
                payload: Any, produce: Callable[[], Awaitable[dict[str, Any]]]) -> Outcome:
    """`produce` within a shedder slot, through the idempotency store."""
    gateway.shedder.enter()
    try:
        return await gateway.idempotency.run(request.headers.get(HEADER),
                                             f"{identity.key_id}:{route}", payload, produce)
    finally:
        gateway.shedder.leave()


def _routes(app: FastAPI, gateway: Gateway) -> None:
    _probes(app, gateway)
    _listings(app, gateway)
    _runs(app, gateway)
    _chat(app, gateway)


def _probes(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if not gateway.ready:
            return JSONResponse({"status": "starting"}, 503)
        if gateway.shedder.saturated:
            return JSONResponse({"status": "saturated"}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)


def _listings(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        identity, _ = await _admit(gateway, request)
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": 0, "owned_by": "engine"}
            for s in gateway.visible(identity)]}

    @app.get("/v1/pipelines")
    async def pipelines(request: Request) -> dict[str, Any]:
        identity, _ = await _admit(gateway, request)
        return {"object": "list", "data": [
            {"id": s.name, "object": "pipeline", "version": s.version,
             "description": s.pipeline.loaded.spec.description, "chat": s.chat.problem is None,
             "input_schema": s.pipeline.loaded.spec.input.schema_}
            for s in gateway.visible(identity)]}

    @app.get("/v1/pipelines/{name}/shadow")
    async def shadow(name: str, request: Request) -> dict[str, Any]:
        identity, _ = await _admit(gateway, request)
        return gateway.status(gateway.pipeline(name, identity), "shadow")

    @app.get("/v1/pipelines/{name}/canary")
    async def canary(name: str, request: Request) -> dict[str, Any]:
        identity, _ = await _admit(gateway, request)
        return gateway.status(gateway.pipeline(name, identity), "canary")

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        identity, _ = await _admit(gateway, request)
        verdict, _ = await _parse(request, Feedback)
        trace_id = trace_id_of(verdict.id)
        if trace_id is None:
            raise ApiError(400, "id: expected a response id (chatcmpl-… or run-…)", param="id")
        if gateway.feedback is None:
            raise ApiError(503, "feedback is not recorded: the server runs with --no-store",
                           "server_error", "feedback_disabled")
        gateway.feedback.write(verdict, trace_id, identity.tenant)
        return {"object": "feedback", "id": verdict.id, "recorded": True}


def _runs(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/pipelines/{name}/runs")
    async def runs(name: str, request: Request) -> Response:
        identity, ip = await _admit(gateway, request)
        payload = await _json(request)
        served = gateway.choose(gateway.pipeline(name, identity), identity, ip)
        trace = _new_trace()
        audit = gateway.audit_request(served, identity, f"run-{trace}")
        record = _checked(gateway, served, audit, lambda: (
            served.chat.with_identity(dict(payload), identity, ip)
            if isinstance(payload, dict) else payload))
        audit.input_text = json.dumps(payload, ensure_ascii=False)
        hooks = RunHooks(trace, cache_control=request.headers.get("cache-control"))

        def body(result: RunResult) -> dict[str, Any]:
            return {"id": f"run-{trace}", "object": "pipeline.run", "pipeline": name,
                    "status": result.status, "output": result.output,
                    "finished_by": result.finished_by, "handed_off": result.handed_off,
                    "degraded": result.degraded, "usage": usage(result),
                    "trace_id": result.trace_id,
                    "duration_ms": round(result.duration * 1000, 3)}

        produce = _run(gateway, served, record, hooks, audit, body)
        outcome = await _audited(gateway, audit, _once(gateway, request, identity,
                                                       f"runs:{name}", payload, produce))
        return _json_response(outcome, served, _answered(gateway, served, record, audit))


def _chat(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        identity, ip = await _admit(gateway, request)
        chat, payload = await _parse(request, ChatRequest)
        served = gateway.choose(gateway.pipeline(chat.model, identity), identity, ip)
        trace = _new_trace()
        response_id = f"chatcmpl-{trace}"
        audit = gateway.audit_request(served, identity, response_id)
        record = _checked(gateway, served, audit,
                          lambda: served.chat.record(chat.messages, identity, ip))
        audit.input_text = str(record.get(served.chat.text or "", "")) or json.dumps(record)
        created = int(time.time())
        cache_control = request.headers.get("cache-control")

        def body(result: RunResult) -> dict[str, Any]:
            return completion(response_id, chat.model, served.chat.answer(result.output),
                              usage(result), created)

        if chat.stream:
            live = LiveText(trace, cache_control)
            produce = _run(gateway, served, record, live.hooks, audit, body)
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            task = _stream(gateway, request, identity, payload, produce, audit, live)
            return StreamingResponse(
                events(task, live, response_id, chat.model, created, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                         **_variant(served)},
                background=_answered(gateway, served, record, audit))
        hooks = RunHooks(trace, cache_control=cache_control)
        produce = _run(gateway, served, record, hooks, audit, body)
        outcome = await _audited(gateway, audit, _once(gateway, request, identity, "chat",
                                                       payload, produce))
        return _json_response(outcome, served, _answered(gateway, served, record, audit))


def _stream(gateway: Gateway, request: Request, identity: Identity, payload: Any,
            produce: Callable[[], Awaitable[dict[str, Any]]], audit: AuditRequest,
            live: LiveText) -> asyncio.Task[Outcome]:
    """Start a streamed request's run as a task. The shedder slot is taken here, before the
    response's first byte (a refusal must still be a 503), and held until the run ends."""
    gateway.shedder.enter()
    work = gateway.idempotency.run(request.headers.get(HEADER), f"{identity.key_id}:chat",
                                   payload, produce)
    task = asyncio.ensure_future(_audited(gateway, audit, work))
    task.add_done_callback(live.end)
    task.add_done_callback(lambda done: _settled(gateway, done))
    return task


def _settled(gateway: Gateway, task: asyncio.Future[Outcome]) -> None:
    """A streamed run is over: free its slot; its failure was sent in the stream, if the
    client was still there (reading it here keeps asyncio from logging it as lost)."""
    gateway.shedder.leave()
    if not task.cancelled():
        task.exception()


def _answered(gateway: Gateway, served: Served, record: Any, audit: AuditRequest
              ) -> BackgroundTask:
    """What runs once the response is sent: the shadow's turn (see `Gateway.answered`)."""
    return BackgroundTask(gateway.answered, served, record, audit)


def _variant(served: Served) -> dict[str, str]:
    return {"X-Engine-Variant": served.variant} if served.variant else {}


def _json_response(outcome: Outcome, served: Served, background: BackgroundTask) -> Response:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return JSONResponse(outcome.body, headers={**headers, **_variant(served)},
                        background=background)
