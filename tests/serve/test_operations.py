"""Shedding, deadlines, Cache-Control, probes, metrics, feedback and start-up errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import Serve, pipeline_text

from engine.cli import main
from engine.providers.stub import StubProvider

ASK = {"model": "echo", "messages": [{"role": "user", "content": "cache me"}]}


async def test_over_capacity_requests_are_shed_with_503_not_queued(serve: Serve) -> None:
    ask = {**ASK, "model": "slow"}
    async with serve(max_inflight=1) as live, httpx.AsyncClient(base_url=live.url) as http:
        first = asyncio.ensure_future(http.post("/v1/chat/completions", json=ask,
                                                headers=live.headers()))
        while live.gateway.shedder.inflight == 0:
            await asyncio.sleep(0.01)
        shed = await http.post("/v1/chat/completions", json=ask, headers=live.headers())
        ready = await http.get("/readyz")
        assert (await first).status_code == 200
        ready_after = await http.get("/readyz")
    assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
    assert shed.json()["error"]["code"] == "overloaded"
    assert ready.status_code == 503 and ready_after.status_code == 200


async def test_the_pipeline_deadline_is_504(serve: Serve, stub: StubProvider,
                                            tmp_path: Path) -> None:
    late = tmp_path / "late.yaml"
    late.write_text(pipeline_text(stub, "late", model="late", timeout="300ms"))
    stub.plan("late", ["hang"])
    async with serve(files=(late,)) as live, httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/v1/chat/completions", json={**ASK, "model": "late"},
                                   headers=live.headers())
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"


@pytest.mark.parametrize(("control", "calls"), [
    (None, 1), ("no-cache", 3), ("no-store", 3), ("max-age=3600", 1)])
async def test_cache_control_reaches_the_cache_stage(serve: Serve, stub: StubProvider,
                                                     control: str | None, calls: int) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        headers = live.headers(**({"Cache-Control": control} if control else {}))
        for _ in range(3):
            response = await http.post("/v1/chat/completions", json=ASK, headers=headers)
            assert response.status_code == 200
            await live.gateway.resources.settle()  # the cache stores off the request path
    assert len(stub.requests_for("fast")) == calls


async def test_no_store_keeps_the_answer_out_for_the_next_caller(serve: Serve,
                                                                 stub: StubProvider) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        await http.post("/v1/chat/completions", json=ASK,
                        headers=live.headers(**{"Cache-Control": "no-store"}))
        await live.gateway.resources.settle()
        await http.post("/v1/chat/completions", json=ASK, headers=live.headers())
    assert len(stub.requests_for("fast")) == 2


async def test_probes_and_metrics(serve: Serve) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        await http.post("/v1/chat/completions", json=ASK, headers=live.headers())
        await http.post("/v1/chat/completions", json=ASK)
        text = (await http.get("/metrics")).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    route = "/v1/chat/completions"
    assert samples[("engine_http_responses_total", (("code", "200"), ("route", route)))] == 1
    assert samples[("engine_http_responses_total", (("code", "401"), ("route", route)))] == 1
    assert samples[("engine_requests_total", (("pipeline", "echo"), ("status", "ok")))] == 1
    assert samples[("engine_http_inflight", ())] == 0


async def test_feedback_is_stored_for_the_report_to_join(serve: Serve, tmp_path: Path) -> None:
    async with serve() as live, httpx.AsyncClient(base_url=live.url) as http:
        answer = (await http.post("/v1/chat/completions", json=ASK,
                                  headers=live.headers())).json()
        ok = await http.post("/v1/feedback", json={"id": answer["id"], "score": 1},
                             headers=live.headers())
        bad = await http.post("/v1/feedback", json={"id": "nope", "score": 1},
                              headers=live.headers())
        out_of_range = await http.post("/v1/feedback", json={"id": answer["id"], "score": 5},
                                       headers=live.headers())
    assert ok.status_code == 200 and bad.status_code == 400 and out_of_range.status_code == 400
    [file] = (tmp_path / "runs" / "feedback").glob("*.jsonl")
    line = json.loads(file.read_text())
    trace_id = answer["id"].removeprefix("chatcmpl-")
    assert (line["trace_id"], line["score"], line["tenant"]) == (trace_id, 1, "acme")
    stored = [json.loads(x) for f in (tmp_path / "runs" / "echo").glob("*.jsonl")
              for x in f.read_text().splitlines()]
    [run] = [x for x in stored if x.get("trace_id") == trace_id]
    assert run["tenant"] == "acme"  # so the report joins feedback only within the tenant


def test_a_broken_pipeline_stops_start_up_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: broken\nstages:\n  a: {type: nosuch}\n")
    assert main(["serve", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:4:" in err and "nosuch" in err


def test_no_keys_off_loopback_is_refused(tmp_path: Path, pipelines: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_API_KEYS", raising=False)
    assert main(["serve", str(pipelines), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--no-auth" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "said"), [
    (["--redis", "notaurl"], "--redis 'notaurl': expected a URL such as redis://"),
    (["--audit-dir", "AUDIT", "--audit-content"], "storing request content needs a key"),
    (["--opt-out", "/nonexistent/optouts.txt"], "--opt-out /nonexistent/optouts.txt: its folder"),
    (["--config", "CONFIG"], "expected one key, `pipelines:` (name → settings)"),
])
def test_a_wrong_option_stops_start_up_in_one_line(
        tmp_path: Path, pipelines: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, options: list[str], said: str) -> None:
    monkeypatch.delenv("ENGINE_AUDIT_KEY", raising=False)
    config = tmp_path / "serve.yaml"
    config.write_text("pipelines: [echo]\n")
    options = [{"AUDIT": str(tmp_path / "audit"), "CONFIG": str(config)}.get(o, o)
               for o in options]
    assert main(["serve", str(pipelines), "--port", "0", *options]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
