"""Shadow traffic: the candidate runs after the response, off its clock, and is compared."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import Live, Serve, pipeline_text

from engine.observe.store import read_runs
from engine.providers.stub import StubProvider
from engine.quality.variants import variant_reports


def candidate_file(stub: StubProvider, folder: Path) -> Path:
    """`echo-v2` on the stub's 0.4 s model, answering differently for refund questions."""
    text = pipeline_text(stub, "echo-v2", model="slow", stream=False).replace(
        'content: "{{ input.question }}"',
        "content: \"{{ 'CHANGED' if 'refund' in input.question else input.question }}\"")
    path = folder / "candidate" / "echo_v2.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def shadowed(file: Path, **extra: Any) -> dict[str, Any]:
    return {"echo": {"shadow": {"pipeline": "echo-v2", "file": file, "share": 1.0, **extra}}}


async def ask(http: httpx.AsyncClient, live: Live, question: str, *, stream: bool = False
              ) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await http.post("/v1/chat/completions", headers=live.headers(), json={
        "model": "echo", "stream": stream, "messages": [{"role": "user", "content": question}]})
    return response, time.perf_counter() - started


async def until(done: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def test_the_shadow_runs_after_the_response_and_is_stored_and_compared(
        serve: Serve, stub: StubProvider, tmp_path: Path) -> None:
    candidate = candidate_file(stub, tmp_path)
    questions = ["where is my parcel", "refund please", "opening hours"]
    async with serve(pipelines=shadowed(candidate)) as live, \
            httpx.AsyncClient(base_url=live.url) as http:
        shadow = live.gateway.shadows["echo"]
        await http.post("/v1/chat/completions", headers=live.headers(), json={  # warm litellm
            "model": "batch", "messages": [{"role": "user", "content": "warm up"}]})
        answers = [await ask(http, live, q, stream=q.startswith("opening")) for q in questions]
        assert shadow.inflight >= 1  # the 0.4 s candidate is still running
        await until(lambda: shadow.counts["ran"] == len(questions))
        summary = (await http.get("/v1/pipelines/echo/shadow", headers=live.headers())).json()
        metrics = (await http.get("/metrics")).text
        hidden = await http.post("/v1/chat/completions", headers=live.headers(), json={
            "model": "echo-v2", "messages": [{"role": "user", "content": "hi"}]})
    for response, seconds in answers:
        assert response.status_code == 200 and response.headers["X-Engine-Variant"] == "baseline"
        assert seconds < 0.3, f"the response waited for the shadow ({seconds:.2f} s)"
    assert "CHANGED" not in answers[1][0].text
    assert hidden.status_code == 404
    fields = {f["field"]: (f["agree"], f["of"]) for f in summary["fields"]}
    assert fields == {"reply": (2, 3), "asked_by": (3, 3)}
    refund = next(r for r, _ in answers if "refund" in r.text)
    assert summary["disagreements"] == [
        {"trace_id": refund.json()["id"].removeprefix("chatcmpl-"), "field": "reply"}]
    assert "CHANGED" not in json.dumps(summary)  # other users' answers are not shown
    agreement = {s.labels["field"]: s.value for family in text_string_to_metric_families(metrics)
                 if family.name == "engine_shadow_agreement_ratio" for s in family.samples}
    assert agreement == {"reply": 2 / 3, "asked_by": 1.0}

    lines = [r for run in read_runs(tmp_path / "runs" / "echo") for r in run.records]
    baseline = {line["trace_id"] for line in lines if line.get("variant") == "baseline"}
    shadows = [line for line in lines if line.get("variant") == "shadow"]
    assert len(baseline) == 3 and {line["shadow_of"] for line in shadows} == baseline
    [report] = variant_reports(read_runs(tmp_path / "runs"))
    assert (report.pipeline, report.baseline) == ("echo", "baseline")
    assert [arm.name for arm in report.arms] == ["baseline", "shadow"]


async def test_shadow_work_beyond_its_bound_is_dropped_not_queued(
        serve: Serve, stub: StubProvider, tmp_path: Path) -> None:
    candidate = candidate_file(stub, tmp_path)
    async with serve(pipelines=shadowed(candidate, max_inflight=1)) as live, \
            httpx.AsyncClient(base_url=live.url) as http:
        shadow = live.gateway.shadows["echo"]
        for i in range(3):
            response, _ = await ask(http, live, f"question {i}")
            assert response.status_code == 200
        await until(lambda: shadow.inflight == 0)
    assert shadow.counts == {"ran": 1, "failed": 0, "shed": 2}
    assert len(stub.requests_for("slow")) == 1


async def test_a_failed_primary_is_not_shadowed(serve: Serve, stub: StubProvider,
                                                tmp_path: Path) -> None:
    candidate = candidate_file(stub, tmp_path)
    stub.plan("fast", ["500"])
    async with serve(pipelines=shadowed(candidate)) as live, \
            httpx.AsyncClient(base_url=live.url) as http:
        response, _ = await ask(http, live, "this fails")
        await asyncio.sleep(0.1)
    assert response.status_code == 502
    assert live.gateway.shadows["echo"].counts == {"ran": 0, "failed": 0, "shed": 0}
