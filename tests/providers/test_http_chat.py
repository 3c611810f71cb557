"""The direct transport's HTTP client (`http_chat`) over real HTTP on 127.0.0.1.

Each failure is provoked twice, through `ChatEndpoint` and through the `openai` SDK it
replaced, and `classify` must say the same of both: the chaos stub supplies the faults
(429, 5xx, hangs, malformed JSON, cut bodies and streams), a small canned server the error
bodies the stub does not send (401 ... 422, context window, content filter)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import web

from engine.providers.client import ModelClient, StreamInterrupted
from engine.providers.errors import classify
from engine.providers.http_chat import ChatEndpoint, ChatStatusError
from engine.providers.stub import StubProvider
from engine.providers.stub_config import FaultProfile, StubConfig
from engine.spec.models import ModelTier

HI: list[Any] = [{"role": "user", "content": "hi there stub"}]
LONG: list[Any] = [{"role": "user", "content": "one two three four five six"}]
Verdict = tuple[str, bool, bool, int | None, float | None]


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


@pytest.fixture
async def models() -> AsyncIterator[ModelClient]:
    client = ModelClient()
    yield client
    await client.aclose()


async def clients(base_url: str) -> tuple[ChatEndpoint, openai.AsyncOpenAI]:
    return (ChatEndpoint(base_url, "sk-test"),
            openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0))


def tier(base_url: str, **fields: Any) -> ModelTier:
    return ModelTier(model="openai/m", api_base=base_url, transport="direct",
                     price={"input": 1.0, "output": 1.0}, **fields)


async def verdict(call: Callable[[], Awaitable[object]]) -> Verdict:
    """What `classify` says of the call's exception (the call must fail)."""
    try:
        await call()
    except Exception as exc:
        failure = classify(exc)
        return (failure.kind, failure.retryable, failure.next_tier, failure.status,
                failure.retry_after)
    raise AssertionError("the call did not fail")


async def both(base_url: str, model: str, stream: bool, timeout: float = 2.0
               ) -> tuple[Verdict, Verdict]:
    """The verdicts on one failing request sent through ours and through the SDK."""
    endpoint, sdk = await clients(base_url)
    body = {"model": model, "messages": HI}

    async def ours() -> object:
        if stream:
            return [piece async for piece in endpoint.stream(body, timeout=timeout, headers={})]
        return await endpoint.complete(body, timeout=timeout, headers={})

    async def theirs() -> object:
        reply = await sdk.chat.completions.create(model=model, messages=HI, stream=stream,
                                                  timeout=timeout)
        return [chunk async for chunk in reply] if stream else reply

    try:
        return await verdict(ours), await verdict(theirs)
    finally:
        await endpoint.aclose()
        await sdk.close()


# -- the same verdicts as the SDK ----------------------------------------------------------

@pytest.mark.parametrize(("fault", "stream", "kind"), [
    ("429", False, "rate_limit"), ("429", True, "rate_limit"),
    ("500", False, "server"), ("500", True, "server"),
    ("503", False, "server"), ("503", True, "server"),
    ("malformed", False, "malformed"), ("malformed", True, "malformed"),
    ("cut", False, "connection"),  # the body stops half-way
    ("cut_before_first_token", False, "connection"),
    ("cut_before_first_token", True, "connection"),
    ("hang", False, "timeout"), ("hang", True, "timeout"),
])
async def test_stub_faults_classify_as_through_the_sdk(stub: StubProvider, fault: str,
                                                       stream: bool, kind: str) -> None:
    stub.plan("m", [fault, fault])
    started = time.monotonic()
    ours, theirs = await both(stub.base_url, "m", stream, timeout=0.3)
    assert ours == theirs
    assert ours[0] == kind
    if fault == "429":
        assert ours[4] == 1.0  # the stub's default Retry-After
    if fault == "hang":
        assert time.monotonic() - started < 2.0  # two calls, 0.3 s each


CANNED: dict[str, tuple[int, Any, dict[str, str]]] = {  # model → status, body, headers
    "401": (401, {"error": {"message": "Incorrect API key provided: sk-abc12345678",
                            "type": "invalid_request_error", "code": "invalid_api_key"}}, {}),
    "403": (403, {"error": {"message": "Country not supported", "code": None}}, {}),
    "404": (404, {"error": {"message": "The model `m` does not exist",
                            "code": "model_not_found"}}, {}),
    "413": (413, {"error": {"message": "Request too large"}}, {}),
    "422": (422, {"detail": [{"loc": ["body", "n"], "msg": "bad"}]}, {}),
    "400": (400, {"error": {"message": "Unsupported parameter: 'seed'"}}, {}),
    "context": (400, {"error": {"message": "Bad request",
                                "code": "context_length_exceeded"}}, {}),
    "filter": (400, {"error": {"message": "Refused", "code": "content_filter"}}, {}),
    "429-ms": (429, {"error": {"message": "slow down"}}, {"retry-after-ms": "250"}),
    "502-html": (502, "<html>Bad gateway</html>", {"Content-Type": "text/html"}),
}


@pytest.fixture
async def canned() -> AsyncIterator[str]:
    """A server answering each model's canned error (or, for "no-choices" and "stream-error",
    a 2xx that is not a usable completion)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        if model == "no-choices":
            return web.json_response({"id": "x", "choices": []})
        if model == "stream-error":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"error": {"message": "overloaded"}}\n\n')
            return response
        status, body, headers = CANNED[model]
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


@pytest.mark.parametrize(("model", "kind", "status"), [
    ("401", "auth", 401), ("403", "auth", 403), ("404", "not_found", 404),
    ("413", "context_window", 413), ("422", "unprocessable", 422),
    ("400", "bad_request", 400), ("context", "context_window", 400),
    ("filter", "content_filter", 400), ("429-ms", "rate_limit", 429),
    ("502-html", "server", 502),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_error_statuses_classify_as_through_the_sdk(canned: str, model: str, kind: str,
                                                          status: int, stream: bool) -> None:
    ours, theirs = await both(canned, model, stream)
    assert ours == theirs
    assert (ours[0], ours[3]) == (kind, status)
    if model == "429-ms":
        assert ours[4] == 0.25


async def test_answers_that_are_not_completions_are_malformed_or_a_server_error(
        canned: str) -> None:
    """Where the SDK raised errors `classify` calls bugs of ours ("other": no fallback)."""
    endpoint, _ = await clients(canned)
    try:
        assert (await verdict(lambda: endpoint.complete(
            {"model": "no-choices", "messages": HI}, timeout=2, headers={})))[0] == "malformed"

        async def streamed() -> object:
            body = {"model": "stream-error", "messages": HI}
            return [piece async for piece in endpoint.stream(body, timeout=2, headers={})]

        assert (await verdict(streamed))[:4] == ("server", True, True, 500)
    finally:
        await endpoint.aclose()


# -- what is sent and what comes back ------------------------------------------------------

async def test_a_call_sends_the_body_key_and_headers_and_reads_text_and_usage(
        stub: StubProvider, models: ModelClient) -> None:
    limited = tier(stub.base_url, api_key="sk-tier", params={"temperature": 0.2})
    headers = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "Idempotency-Key": "k1"}
    done = await models.complete(limited, LONG, timeout=2, headers=headers,
                                 params={"max_tokens": 3})
    assert (done.text, done.input_tokens, done.output_tokens) == ("echo: one two", 6, 3)
    assert done.ttft is None
    [seen] = stub.requests_for("m")
    assert seen.body == {"model": "m", "messages": LONG, "temperature": 0.2, "max_tokens": 3}
    assert seen.headers["authorization"] == "Bearer sk-tier"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["traceparent"] == headers["traceparent"]
    assert seen.idempotency_key == "k1"


async def test_a_stream_hands_over_its_tokens_usage_and_time_to_first_token(
        stub: StubProvider, models: ModelClient) -> None:
    pieces: list[str] = []
    started = time.perf_counter()
    done = await models.complete(tier(stub.base_url, api_key="k"), LONG, timeout=2,
                                 stream=True, on_token=pieces.append)
    assert pieces == ["echo: ", "one ", "two ", "three ", "four ", "five ", "six"]
    assert done.text == "echo: one two three four five six"
    assert (done.input_tokens, done.output_tokens) == (6, 7)
    assert done.ttft is not None and 0 < done.ttft < time.perf_counter() - started
    [seen] = stub.requests_for("m")
    assert seen.body["stream"] is True
    assert seen.body["stream_options"] == {"include_usage": True}


async def test_a_stream_cut_after_the_first_token_is_interrupted_not_retryable(
        stub: StubProvider, models: ModelClient) -> None:
    stub.plan("m", ["cut"])
    pieces: list[str] = []
    with pytest.raises(StreamInterrupted, match="after 10 characters: ChatConnectionError"):
        await models.complete(tier(stub.base_url, api_key="k"), LONG, timeout=2, stream=True,
                              on_token=pieces.append)
    assert pieces == ["echo: ", "one "]  # cut_after=2 content chunks


async def test_a_stream_slower_than_its_timeout_is_cut_by_it() -> None:
    """The timeout is the whole call's, not each read's: a steady trickle does not outlive it."""
    config = StubConfig(seed=1, models={"m": FaultProfile(chunk_delay=0.15)})
    async with StubProvider(config) as stub:
        models = ModelClient()
        try:
            started = time.monotonic()
            with pytest.raises(StreamInterrupted, match="ChatTimeoutError"):
                await models.complete(tier(stub.base_url, api_key="k"), LONG, timeout=0.4,
                                      stream=True)
            assert time.monotonic() - started < 0.85  # the whole stream takes ≥ 0.9 s
        finally:
            await models.aclose()


@pytest.mark.parametrize(("env_key", "sent"), [("sk-env", "Bearer sk-env"), (None, None)])
async def test_a_tier_without_a_key_uses_openai_api_key_if_set(
        stub: StubProvider, models: ModelClient, monkeypatch: pytest.MonkeyPatch,
        env_key: str | None, sent: str | None) -> None:
    if env_key is None:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", env_key)
    await models.complete(tier(stub.base_url), HI, timeout=2)
    assert stub.requests_for("m")[0].headers.get("authorization") == sent


async def test_a_proxy_from_the_environment_is_used(stub: StubProvider, models: ModelClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{stub.port}")
    done = await models.complete(tier("http://model.invalid/v1", api_key="k"), HI, timeout=2)
    assert done.text == "echo: hi there stub"  # the stub, as the proxy, got the request


async def test_one_pool_per_endpoint_and_key_all_closed_by_aclose(stub: StubProvider) -> None:
    models = ModelClient()
    for key in ("a", "b", "a"):
        await models.complete(tier(stub.base_url, api_key=key), HI, timeout=2)
    endpoints = list(models._direct.values())
    sessions = [endpoint._session for endpoint in endpoints]
    assert len(endpoints) == 2 and all(s is not None and not s.closed for s in sessions)
    await models.aclose()
    assert all(s is not None and s.closed for s in sessions)
    assert models._direct == {}


def test_a_status_error_says_the_status_and_the_error_message() -> None:
    exc = ChatStatusError(400, {"x-request-id": "r"}, CANNED["context"][1])
    assert (exc.status_code, exc.code, str(exc)) == (400, "context_length_exceeded",
                                                     "HTTP 400: Bad request")
    assert str(ChatStatusError(502, {}, "<html>Bad gateway</html>")) == (
        "HTTP 502: <html>Bad gateway</html>")
