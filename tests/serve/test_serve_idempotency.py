"""Idempotency-Key over HTTP: replay, another body, a duplicate in flight."""

from __future__ import annotations

import asyncio

import httpx
from serve_helpers import Serve

from engine.providers.stub import StubProvider

ASK = {"model": "echo", "messages": [{"role": "user", "content": "pay me once"}]}


async def test_a_key_replays_the_first_response_without_a_second_run(
        serve: Serve, stub: StubProvider) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        headers = live.headers(**{"Idempotency-Key": "k-1", "Cache-Control": "no-cache"})
        first = await http.post("/v1/chat/completions", json=ASK, headers=headers)
        again = await http.post("/v1/chat/completions", json=ASK, headers=headers)
        other_key = await http.post("/v1/chat/completions", json=ASK,
                                    headers={**headers, "Idempotency-Key": "k-2"})
    assert first.status_code == again.status_code == other_key.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert other_key.json()["id"] != first.json()["id"]
    assert len(stub.requests_for("fast")) == 2  # k-1 once, k-2 once


async def test_the_same_key_with_another_body_is_422(serve: Serve) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        headers = live.headers(**{"Idempotency-Key": "k-1"})
        await http.post("/v1/chat/completions", json=ASK, headers=headers)
        changed = {**ASK, "messages": [{"role": "user", "content": "pay me twice"}]}
        response = await http.post("/v1/chat/completions", json=changed, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_duplicate_in_flight_waits_and_gets_the_same_answer(
        serve: Serve, stub: StubProvider) -> None:
    ask = {**ASK, "model": "slow"}
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        headers = live.headers(**{"Idempotency-Key": "k-1", "Cache-Control": "no-cache"})
        first, second = await asyncio.gather(
            http.post("/v1/chat/completions", json=ask, headers=headers),
            http.post("/v1/chat/completions", json=ask, headers=headers))
        streamed = await http.post("/v1/chat/completions", json={**ask, "stream": True},
                                   headers={**headers, "Idempotency-Key": "k-s"})
        replayed = await http.post("/v1/chat/completions", json={**ask, "stream": True},
                                   headers={**headers, "Idempotency-Key": "k-s"})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(stub.requests_for("slow")) == 2  # k-1 once, k-s once
    assert replayed.text.replace(" ", "") .count('"content"') >= 1
    ids = {line for line in replayed.text.split() if line.startswith('{"id"')}
    assert ids and first.json()["id"] not in replayed.text
    streamed_id = streamed.text.split('"id": "', 1)[1].split('"', 1)[0]
    assert streamed_id in replayed.text  # the replay names the run that answered


async def test_failures_are_not_kept(serve: Serve, stub: StubProvider) -> None:
    stub.plan("fast", ["500"])
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        headers = live.headers(**{"Idempotency-Key": "k-1"})
        failed = await http.post("/v1/chat/completions", json=ASK, headers=headers)
        retried = await http.post("/v1/chat/completions", json=ASK, headers=headers)
    assert (failed.status_code, retried.status_code) == (502, 200)
