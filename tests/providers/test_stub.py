"""The chaos stub provider over real HTTP: through litellm's OpenAI path and the openai SDK.

Every fault kind must surface to the client as the error a real provider failure would
produce; planned outcomes, per-model faults and the request record must be exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import ValidationError

from engine.providers.stub import StubProvider
from engine.providers.stub_config import FaultProfile, LatencyRange, StubConfig

# Two warnings litellm's streaming path raises inside pydantic (litellm matters, not the stub's):
# it builds models with ReadOnly TypedDict items lazily on the first chunk, and it reads
# `model_fields` / `model_computed_fields` on an instance when it handles a usage chunk.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Item '\w+' on TypedDict class '\w+' is using the `ReadOnly`:UserWarning"),
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_(computed_)?fields' attribute on the instance is deprecated"
        ":DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
HI: list[Any] = [{"role": "user", "content": "hi there stub"}]
LONG: list[Any] = [{"role": "user", "content": "one two three four five six"}]

CONFIG = StubConfig(
    seed=7,
    retry_after=2,
    rules=[
        {"match": r"(?i)refund", "reply": "Refunds take five days. ({model})"},
        {"match": r"^SYSTEM-SECRET$", "reply": "saw the system prompt", "on": "any"},
        {"match": r"only-for-b", "reply": "model b rule", "model": "b"},
    ],
)


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(CONFIG) as running:
        yield running


@pytest.fixture
async def client(stub: StubProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="x", max_retries=0,
                                  timeout=5) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banner on every error
    return litellm


async def acomplete(litellm: Any, stub: StubProvider, model: str, messages: list[Any],
                    **kwargs: Any) -> Any:
    kwargs.setdefault("timeout", 5)
    return await litellm.acompletion(model=f"openai/{model}", api_base=stub.base_url,
                                     api_key="x", messages=messages, max_retries=0, **kwargs)


async def collect(stream: Any, pieces: list[str]) -> list[str]:
    """Append each content delta to `pieces` (kept when the stream then fails)."""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            pieces.append(chunk.choices[0].delta.content)
    return pieces


# -- answers -------------------------------------------------------------------------------


async def test_litellm_scripted_reply_echo_and_usage(litellm: Any, stub: StubProvider) -> None:
    scripted = await acomplete(litellm, stub, "smart", [{"role": "user", "content": "A refund?"}])
    assert scripted.choices[0].message.content == "Refunds take five days. (smart)"
    assert scripted.choices[0].finish_reason == "stop"
    assert (scripted.usage.prompt_tokens, scripted.usage.completion_tokens) == (2, 5)
    assert scripted.usage.total_tokens == 7

    echoed = await acomplete(litellm, stub, "cheap", HI)
    assert echoed.choices[0].message.content == "echo: hi there stub"
    assert echoed.usage.prompt_tokens == 3 and echoed.usage.completion_tokens == 4


async def test_it_counts_the_most_requests_answered_at_once(stub: StubProvider,
                                                          client: openai.AsyncOpenAI) -> None:
    stub.config = stub.config.model_copy(update={"latency": 0.1})
    ask = [{"role": "user", "content": "hi"}]
    await asyncio.gather(*(client.chat.completions.create(model="m", messages=ask)
                           for _ in range(3)))
    await client.chat.completions.create(model="m", messages=ask)
    assert (stub.peak_in_flight, stub.in_flight) == (3, 0)


async def test_rules_on_any_message_and_per_model(client: openai.AsyncOpenAI) -> None:
    system = [{"role": "system", "content": "SYSTEM-SECRET"}, *HI]
    reply = await client.chat.completions.create(model="a", messages=system)
    assert reply.choices[0].message.content == "saw the system prompt"
    refund_in_system = [{"role": "system", "content": "refund policy"}, *HI]
    reply = await client.chat.completions.create(model="a",
                                                 messages=refund_in_system)
    assert reply.choices[0].message.content == "echo: hi there stub"  # last user message only
    for model, expected in (("a", "echo: only-for-b"), ("b", "model b rule")):
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "only-for-b"}])
        assert reply.choices[0].message.content == expected


async def test_max_tokens_truncates_with_length(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="m", messages=LONG,
                                                 max_tokens=3)
    assert reply.choices[0].message.content == "echo: one two"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_litellm_stream_reassembles_with_usage(litellm: Any, stub: StubProvider) -> None:
    stream = await acomplete(litellm, stub, "m", LONG, stream=True,
                             stream_options={"include_usage": True})
    usages, pieces = [], []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None) is not None:
            usages.append(chunk.usage)
    assert "".join(pieces) == "echo: one two three four five six"
    assert len(pieces) == 7  # one chunk per word: a real stream, not one blob
    assert (usages[-1].prompt_tokens, usages[-1].completion_tokens) == (6, 7)


async def test_sdk_stream_chunks_and_usage_only_when_asked(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=HI, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hi there stub"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 3 + 4

    plain = await client.chat.completions.create(model="m", messages=HI,
                                                 stream=True)
    rest = [chunk async for chunk in plain]
    assert all(chunk.choices and chunk.usage is None for chunk in rest)  # no usage chunk


# -- faults through the openai SDK ---------------------------------------------------------


async def test_sdk_429_has_retry_after(stub: StubProvider, client: openai.AsyncOpenAI) -> None:
    stub.plan("m", ["429"])
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=HI)
    assert caught.value.response.headers["Retry-After"] == "2"
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "rate_limit_error"  # OpenAI error shape


@pytest.mark.parametrize("fault", ["500", "503"])
@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_server_errors(stub: StubProvider, client: openai.AsyncOpenAI, fault: str,
                                 stream: bool) -> None:
    stub.plan("m", [fault])
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="m", messages=HI,
                                             stream=stream)
    assert caught.value.status_code == int(fault)


@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_hang_times_out(stub: StubProvider, client: openai.AsyncOpenAI,
                                  stream: bool) -> None:
    stub.plan("m", ["hang"])
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=HI,
                                             stream=stream, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    reply = await client.chat.completions.create(model="m", messages=HI)
    assert reply.choices[0].message.content == "echo: hi there stub"  # server not blocked


async def test_sdk_malformed_json(stub: StubProvider, client: openai.AsyncOpenAI) -> None:
    stub.plan("m", ["malformed", "malformed"])
    with pytest.raises(json.JSONDecodeError):  # the SDK does not wrap it
        await client.chat.completions.create(model="m", messages=HI)
    stream = await client.chat.completions.create(model="m", messages=HI,
                                                  stream=True)
    with pytest.raises(json.JSONDecodeError):
        await collect(stream, [])


async def test_sdk_cut_mid_stream(stub: StubProvider, client: openai.AsyncOpenAI) -> None:
    stub.plan("m", ["cut", "cut_before_first_token", "cut"])
    pieces: list[str] = []
    stream = await client.chat.completions.create(model="m", messages=LONG,
                                                  stream=True)
    with pytest.raises(openai.APIConnectionError):
        await collect(stream, pieces)
    assert pieces == ["", "echo: ", "one "]  # role chunk, then cut_after=2 content chunks

    pieces = []
    stream = await client.chat.completions.create(model="m", messages=LONG,
                                                  stream=True)
    with pytest.raises(openai.APIConnectionError):
        await collect(stream, pieces)
    assert pieces == []

    with pytest.raises(openai.APIConnectionError):  # non-stream: body closed half-way
        await client.chat.completions.create(model="m", messages=LONG)


# -- faults through litellm ----------------------------------------------------------------


async def test_litellm_error_classes(litellm: Any, stub: StubProvider) -> None:
    stub.plan("m", ["429", "500", "503", "malformed", "cut", "cut_before_first_token"])
    with pytest.raises(litellm.RateLimitError) as limited:
        await acomplete(litellm, stub, "m", HI)
    error: Any = limited.value
    assert error.litellm_response_headers["retry-after"] == "2"
    assert isinstance(error, openai.RateLimitError)  # litellm's classes subclass openai's
    assert error.response.headers["retry-after"] == "2"
    with pytest.raises(litellm.InternalServerError):
        await acomplete(litellm, stub, "m", HI)
    with pytest.raises(litellm.ServiceUnavailableError) as unavailable:
        await acomplete(litellm, stub, "m", HI)
    assert unavailable.value.status_code == 503
    # broken bodies and dropped connections both become InternalServerError in litellm
    for _ in ("malformed", "cut", "cut_before_first_token"):
        with pytest.raises(litellm.InternalServerError):
            await acomplete(litellm, stub, "m", HI)
    assert stub.planned("m") == []


async def test_litellm_hang_times_out(litellm: Any, stub: StubProvider) -> None:
    stub.plan("m", ["hang"])
    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        await acomplete(litellm, stub, "m", HI, timeout=0.3)
    assert time.monotonic() - started < 1.5


async def test_litellm_stream_cuts(litellm: Any, stub: StubProvider) -> None:
    stub.plan("m", ["cut", "cut_before_first_token"])
    pieces: list[str] = []
    stream = await acomplete(litellm, stub, "m", LONG, stream=True)
    with pytest.raises(litellm.exceptions.MidStreamFallbackError) as cut:
        await collect(stream, pieces)
    assert "".join(pieces) == "echo: one "
    assert cut.value.generated_content == "echo: one "
    assert not cut.value.is_pre_first_chunk

    stream = await acomplete(litellm, stub, "m", LONG, stream=True)
    with pytest.raises(litellm.exceptions.MidStreamFallbackError) as early:
        await collect(stream, [])
    assert early.value.is_pre_first_chunk and early.value.generated_content == ""


# -- plans, per-model faults, the record ---------------------------------------------------


async def test_plan_order_then_normal(stub: StubProvider, client: openai.AsyncOpenAI) -> None:
    stub.plan("m", ["429", "500"])
    stub.plan("m", ["ok", "503"])
    seen = []
    for _ in range(5):
        try:
            await client.chat.completions.create(model="m", messages=HI)
            seen.append("ok")
        except openai.APIStatusError as exc:
            seen.append(str(exc.status_code))
    assert seen == ["429", "500", "ok", "503", "ok"]
    assert [r.outcome for r in stub.requests_for("m")] == seen
    with pytest.raises(ValueError, match="unknown outcomes"):
        stub.plan("m", ["teapot"])


async def test_plan_is_per_model_and_wildcard(stub: StubProvider,
                                              client: openai.AsyncOpenAI) -> None:
    stub.plan("smart", ["500"])
    stub.plan("*", ["429"])
    with pytest.raises(openai.RateLimitError):  # "*" serves a model without its own plan
        await client.chat.completions.create(model="cheap", messages=HI)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="smart", messages=HI)
    assert (await client.chat.completions.create(model="cheap", messages=HI)
            ).choices[0].message.content


async def test_per_model_fault_profiles() -> None:
    config = StubConfig(seed=3, models={
        "smart": {"failure_rate": 1.0, "faults": ["500"]},
        "cheap": {"failure_rate": 0.3, "faults": {429: 1}},
    })
    outcomes: list[dict[str, list[str]]] = []
    for _ in range(2):  # same seed, same draws per model, whatever the interleaving
        async with StubProvider(config) as stub, openai.AsyncOpenAI(
                base_url=stub.base_url, api_key="x", max_retries=0) as sdk:
            for model in ("smart", "cheap", "plain") * 40:
                with contextlib.suppress(openai.APIStatusError):
                    await sdk.chat.completions.create(model=model, messages=HI)
            outcomes.append({m: [r.outcome for r in stub.requests_for(m)]
                             for m in ("smart", "cheap", "plain")})
    first = outcomes[0]
    assert set(first["smart"]) == {"500"}
    assert set(first["plain"]) == {"ok"}
    assert set(first["cheap"]) == {"429", "ok"}
    assert 4 <= first["cheap"].count("429") <= 20  # ~30% of 40
    assert outcomes[0] == outcomes[1]


async def test_requests_recorded(stub: StubProvider, client: openai.AsyncOpenAI) -> None:
    stub.plan("m", ["500"])
    with pytest.raises(openai.InternalServerError):  # max_retries=0: sent exactly once
        await client.chat.completions.create(model="m", messages=HI,
                                             extra_headers={"Idempotency-Key": "key-1"})
    stream = await client.chat.completions.create(model="m", messages=LONG,
                                                  stream=True)
    await collect(stream, [])
    first, second = stub.requests_for("m")
    assert (first.model, first.messages, first.stream, first.outcome) == ("m", HI, False, "500")
    assert first.idempotency_key == "key-1" and first.headers["idempotency-key"] == "key-1"
    assert (second.stream, second.outcome, second.idempotency_key) == (True, "ok", None)
    assert first.time <= second.time <= time.time()
    assert stub.requests_for("smart") == []  # a request that was not sent is not recorded
    stub.reset()
    assert stub.requests == []


async def test_sdk_retries_are_visible_and_honour_retry_after(stub: StubProvider) -> None:
    stub.plan("m", ["429", "429", "ok"])
    stub.config = StubConfig(retry_after=0.05)  # the SDK waits Retry-After, not its backoff
    started = time.monotonic()
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="x", max_retries=2) as sdk:
        await sdk.chat.completions.create(model="m", messages=HI)
    assert [r.outcome for r in stub.requests_for("m")] == ["429", "429", "ok"]
    first, _, third = stub.requests_for("m")
    assert third.time - first.time >= 0.1 and time.monotonic() - started < 0.5


async def test_latency_fixed_and_seeded_range() -> None:
    async with StubProvider(StubConfig(latency="150ms")) as stub, openai.AsyncOpenAI(
            base_url=stub.base_url, api_key="x", max_retries=0) as sdk:
        started = time.monotonic()
        await sdk.chat.completions.create(model="m", messages=HI)
        assert time.monotonic() - started >= 0.15
    draws = []
    for _ in range(2):
        stub = StubProvider(StubConfig(seed=5, latency="10ms..40ms"))
        draws.append([stub._latency("m") for _ in range(5)])
    assert draws[0] == draws[1] and all(0.01 <= d <= 0.04 for d in draws[0])
    assert len(set(draws[0])) == 5


async def test_stop_is_prompt_with_a_hung_request() -> None:
    stub = StubProvider(StubConfig(failure_rate=1.0, faults=["hang"]))
    await stub.start()
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="x", max_retries=0,
                                  timeout=30) as sdk:
        call = asyncio.create_task(sdk.chat.completions.create(model="m", messages=HI))
        await stub.wait_for_requests(1)
        started = time.monotonic()
        await stub.stop()
        assert time.monotonic() - started < 5  # not the client's 30 s timeout
        with pytest.raises(openai.APIConnectionError):  # dropped, not answered
            await asyncio.wait_for(call, 2)


async def test_models_health_and_bad_request(stub: StubProvider) -> None:
    root = stub.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{root}/healthz") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}
        async with http.post(f"{stub.base_url}/chat/completions", data=b"{nope") as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "invalid_request_error"
        async with http.post(f"{stub.base_url}/chat/completions",
                             json={"model": "seen", "messages": HI}) as response:
            assert response.status == 200
        async with http.get(f"{stub.base_url}/models") as response:
            listed = await response.json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["seen"]
    assert [r.outcome for r in stub.requests] == ["invalid", "ok"]


def test_sync_context_manager_serves_from_a_thread() -> None:
    with StubProvider(StubConfig(rules=[{"match": ".", "reply": "threaded"}])) as stub:
        body = json.dumps({"model": "m", "messages": HI}).encode()
        request = urllib.request.Request(f"{stub.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "threaded"
        assert len(stub.requests) == 1


# -- configuration and CLI -----------------------------------------------------------------


def test_config_yaml_and_per_model_merge(tmp_path: Path) -> None:
    path = tmp_path / "stub.yaml"
    path.write_text(
        "seed: 7\nlatency: 20ms..200ms\nfailure_rate: 0.1\nfaults: 429,hang\n"
        "rules:\n  - {match: '(?i)refund', reply: 'Refunds ({model})'}\n"
        "models:\n  smart: {failure_rate: 1.0, faults: [500]}\n"
        "  cheap: {faults: {429: 3, cut: 1}, retry_after: 2}\n"
    )
    config = StubConfig.from_yaml(path)
    assert config.latency == LatencyRange(min=0.02, max=0.2)
    assert config.faults == {"429": 1.0, "hang": 1.0}
    smart, cheap = config.profile_for("smart"), config.profile_for("cheap")
    assert (smart.failure_rate, smart.faults, smart.latency) == (1.0, {"500": 1.0},
                                                                 config.latency)
    assert (cheap.failure_rate, cheap.faults, cheap.retry_after) == (0.1, {"429": 3, "cut": 1},
                                                                      2)
    assert config.profile_for("other") == FaultProfile.model_validate(
        {"latency": {"min": 0.02, "max": 0.2}, "failure_rate": 0.1, "faults": ["429", "hang"]})
    for bad in ({"faults": ["teapot"]}, {"rules": [{"match": "(", "reply": "x"}]},
                {"failure_rate": 2}, {"latency": "50ms..10ms"}, {"colour": "red"}):
        with pytest.raises(ValidationError):
            StubConfig.model_validate(bad)


def test_cli_serves_until_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "stub.yaml"
    config.write_text("rules: [{match: ping, reply: pong}]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "stub-provider", "--port", "0", "--config", str(config),
         "--latency", "1ms", "--failure-rate", "0", "--faults", "429,500", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("stub provider listening on http://127.0.0.1:"), first
        url = first.split()[4]
        assert f"api_base: {url}" in proc.stdout.readline() + proc.stdout.readline()
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "ping"}]})
        request = urllib.request.Request(f"{url}/chat/completions", data=body.encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "pong"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "x → ok" in err


def test_cli_rejects_a_bad_config(tmp_path: Path) -> None:
    from engine.cli import main

    config = tmp_path / "stub.yaml"
    config.write_text("models: {smart: {faults: [teapot]}}\n")
    assert main(["stub-provider", "--config", str(config)]) == 2
    assert main(["stub-provider", "--port", "0", "--latency", "soon"]) == 2
