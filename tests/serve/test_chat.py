"""Stock clients against a live server: the official openai SDK (plain and streaming),
litellm, and the pipeline routes over httpx."""

from __future__ import annotations

import os
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import KEYS, Serve

from engine.providers.stub import StubProvider

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import


def client(url: str, who: str = "alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEYS[who], max_retries=0)


async def test_the_openai_sdk_calls_a_pipeline_as_a_model(serve: Serve) -> None:
    async with serve() as live, client(live.url) as sdk:
        reply = await sdk.chat.completions.create(
            model="echo", messages=[{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": "first"},
                                    {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.id.startswith("chatcmpl-") and len(reply.id) == len("chatcmpl-") + 32
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def _content(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks
            if c.choices and c.choices[0].delta.content]


async def test_streaming_with_the_sdk_sends_tokens_then_usage(serve: Serve,
                                                              stub: StubProvider) -> None:
    async with serve() as live, client(live.url) as sdk:
        stream = await sdk.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one two three four"}],
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    pieces = _content(chunks)
    assert "".join(pieces) == "echo: one two three four"
    assert len(pieces) > 1  # the generate stage streams: several content chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert stub.requests_for("fast")[-1].body.get("stream") is True


async def test_a_pipeline_that_does_not_stream_answers_a_stream_in_one_chunk(
        serve: Serve) -> None:
    async with serve() as live, client(live.url) as sdk:
        stream = await sdk.chat.completions.create(
            model="batch", messages=[{"role": "user", "content": "one two three"}], stream=True)
        chunks = [chunk async for chunk in stream]
    pieces = _content(chunks)
    assert pieces == ["echo: one two three"]
    assert len({c.id for c in chunks}) == 1


async def test_litellm_as_a_client(serve: Serve) -> None:
    import litellm

    async with serve() as live:
        reply = await litellm.acompletion(model="openai/echo", api_base=f"{live.url}/v1",
                                          api_key=KEYS["alice"],
                                          messages=[{"role": "user", "content": "hi litellm"}])
    assert reply.choices[0].message.content == "echo: hi litellm"


async def test_models_and_pipelines_list_what_the_key_may_call(serve: Serve) -> None:
    async with (serve() as live, httpx.AsyncClient(base_url=live.url) as http,
                client(live.url, "bob") as sdk):
        models = await sdk.models.list()
        listed = (await http.get("/v1/pipelines", headers=live.headers())).json()
    assert [m.id for m in models.data] == ["batch"]
    assert [p["id"] for p in listed["data"]] == ["batch", "echo", "slow"]
    assert listed["data"][0]["input_schema"]["required"] == ["question"]


async def test_the_runs_route_takes_a_record_and_sets_the_caller(serve: Serve) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/v1/pipelines/echo/runs", headers=live.headers(),
                                   json={"question": "hey", "user_id": "mallory"})
    body = response.json()
    assert response.status_code == 200, body
    assert body["output"] == {"reply": "echo: hey", "asked_by": "alice"}  # not mallory
    assert body["id"] == f"run-{body['trace_id']}" and body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(("route", "payload", "status", "fragment"), [
    ("/v1/pipelines/echo/runs", {"question": ""}, 400, "input.schema"),
    ("/v1/pipelines/echo/runs", {"nope": 1}, 400, "'question' is a required property"),
    ("/v1/chat/completions", {"model": "echo", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "echo",
                              "messages": [{"role": "system", "content": "x"}]}, 400, "'user'"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
     404, "no pipeline named 'nope'"),
    ("/v1/chat/completions", "{not json", 400, "not valid JSON"),
    ("/v1/nowhere", {}, 404, "no such route"),
])
async def test_bad_requests_get_openai_errors(serve: Serve, route: str, payload: object,
                                              status: int, fragment: str) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        kwargs = {"content": payload} if isinstance(payload, str) else {"json": payload}
        response = await http.post(route, headers=live.headers(), **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
