"""Canary rollout: sticky users, steps up while healthy, rolls back (and alerts) on a breach."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import Live, Serve, pipeline_text

from engine.cli import main
from engine.observe.store import read_runs
from engine.providers.stub import StubProvider
from engine.serve.canary import Canary
from engine.serve.config import CanarySettings


def versions(stub: StubProvider, folder: Path, url: str) -> tuple[Path, ...]:
    """`stable` on the stub's model `fast`, alerting to `url`; `fresh` on the model `cand`."""
    folder.mkdir()
    stable, fresh = folder / "stable.yaml", folder / "fresh.yaml"
    stable.write_text(pipeline_text(stub, "stable", stream=False)
                      + f'alerts: {{webhook: "{url}"}}\n')
    fresh.write_text(pipeline_text(stub, "fresh", model="cand", stream=False))
    return stable, fresh


def canary(**settings: Any) -> dict[str, Any]:
    return {"stable": {"canary": {"candidate": "fresh", "min_sample": 20, **settings}}}


async def ask(http: httpx.AsyncClient, user: int) -> httpx.Response:
    """A new question (no cache hit) from user `user`: without keys the client address is
    the sticky key."""
    question = f"question {next(_asked)} from {user}"
    return await http.post("/v1/chat/completions", headers={"X-Forwarded-For": f"10.0.0.{user}"},
                           json={"model": "stable", "messages": [
                               {"role": "user", "content": question}]})


_asked = itertools.count()


@asynccontextmanager
async def start(serve: Serve, files: tuple[Path, ...], settings: dict[str, Any]
                ) -> AsyncIterator[tuple[Live, httpx.AsyncClient]]:
    """A keyless server (the client address is the user) whose two versions are warm."""
    async with serve(files=files, keys=None, trusted_proxies=("127.0.0.1",),
                     pipelines=settings, rate_per_ip=None) as live, \
            httpx.AsyncClient(base_url=live.url) as http:
        for name in ("stable", "fresh"):
            await http.post("/v1/pipelines/" + name + "/runs", json={"question": "warm up"})
        yield live, http


def test_users_are_sticky_and_shares_match_the_step() -> None:
    steps = CanarySettings(candidate="v2", steps=(0.05, 0.5, 1.0))
    canary = Canary("triage", "v2", steps, None, lambda _: None)
    users = [f"user-{i}" for i in range(4000)]
    first = {u for u in users if canary.takes(u)}
    assert first == {u for u in users if canary.takes(u)}  # the same users every time
    canary.share = 0.5
    second = {u for u in users if canary.takes(u)}
    assert abs(len(first) / len(users) - 0.05) < 0.015
    assert abs(len(second) / len(users) - 0.5) < 0.03
    assert first <= second  # a user on the candidate stays there as the share grows


async def test_the_canary_steps_up_while_healthy_and_is_promoted(
        serve: Serve, stub: StubProvider, tmp_path: Path,
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, posted = webhook
    files = versions(stub, tmp_path / "versions", url)
    seen: dict[int, list[str]] = {}
    async with start(serve, files, canary(steps=[0.2, 0.5, 1.0], step_after=20)) as (live, http):
        rollout = live.gateway.canaries["stable"]
        shares = []
        for turn in range(600):
            if rollout.state != "running":
                break
            user = turn % 40
            response = await ask(http, user)
            assert response.status_code == 200
            seen.setdefault(user, []).append(response.headers["X-Engine-Variant"])
            shares.append(rollout.share)
        status = (await http.get("/v1/pipelines/stable/canary")).json()
        metrics = (await http.get("/metrics")).text
        await live.gateway.resources.settle()
    assert rollout.state == "promoted" and status["state"] == "promoted"
    assert sorted(set(shares)) == [0.2, 0.5, 1.0]
    for variants in seen.values():  # a user never goes back to the stable version
        assert variants == sorted(variants, key=["baseline", "candidate"].index)
    assert [p["alert"] for p in posted] == ["canary_promoted"]
    assert _gauge(metrics, "engine_canary_share") == 1.0


async def test_the_canary_rolls_back_when_the_candidate_starts_failing(
        serve: Serve, stub: StubProvider, tmp_path: Path,
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, posted = webhook
    files = versions(stub, tmp_path / "versions", url)
    async with start(serve, files, canary(steps=[0.5, 1.0], step_after=200)) as (live, http):
        rollout = live.gateway.canaries["stable"]
        healthy = [await ask(http, user) for user in range(60)]
        on_candidate = {u for u, r in enumerate(healthy)
                        if r.headers["X-Engine-Variant"] == "candidate"}
        stub.plan("cand", ["500"] * 40)
        for turn in range(100):
            if rollout.state != "running":
                break
            await ask(http, turn % 60)
        after = [await ask(http, user) for user in range(60)]
        metrics = (await http.get("/metrics")).text
        await live.gateway.resources.settle()
    assert all(r.status_code == 200 for r in healthy) and 20 <= len(on_candidate) <= 40
    assert rollout.state == "rolled_back" and rollout.share == 0.0
    assert "error rate" in str(rollout.reason)
    assert [p["alert"] for p in posted] == ["canary_rolled_back"]
    assert posted[0]["candidate"] == "fresh" and posted[0]["windows"]["candidate"]["error_rate"] > 0
    assert {(r.status_code, r.headers["X-Engine-Variant"]) for r in after} == {(200, "baseline")}
    assert _gauge(metrics, "engine_canary_share") == 0.0
    lines = [r for run in read_runs(tmp_path / "runs" / "stable") for r in run.records]
    assert {line["variant"] for line in lines} == {"baseline", "candidate"}
    assert any(line["variant"] == "candidate" and line["status"] == "error" for line in lines)


def _gauge(metrics: str, name: str) -> float:
    return next(s.value for family in text_string_to_metric_families(metrics)
                for s in family.samples if s.name == name)


def test_an_unknown_candidate_stops_start_up_with_a_clear_message(
        tmp_path: Path, stub: StubProvider, capsys: pytest.CaptureFixture[str]) -> None:
    files = versions(stub, tmp_path / "versions", "http://127.0.0.1:9/alert")
    config = tmp_path / "serve.yaml"
    config.write_text("pipelines:\n  stable:\n    canary: {candidate: nosuch}\n")
    assert main(["serve", str(files[0]), "--port", "0", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "pipelines.stable.canary.candidate" in err and "no pipeline named 'nosuch'" in err
    assert "Traceback" not in err


def test_a_candidate_with_another_input_schema_is_refused(
        tmp_path: Path, stub: StubProvider, capsys: pytest.CaptureFixture[str]) -> None:
    stable, fresh = versions(stub, tmp_path / "versions", "http://127.0.0.1:9/alert")
    fresh.write_text(fresh.read_text().replace("required: [question]", "required: [ticket]"))
    config = tmp_path / "serve.yaml"
    config.write_text("pipelines:\n  stable:\n    canary: {candidate: fresh, file: "
                      "versions/fresh.yaml}\n")
    assert main(["serve", str(stable), "--port", "0", "--config", str(config)]) == 2
    assert "another input schema" in capsys.readouterr().err


@pytest.mark.parametrize(("canary_yaml", "message"), [
    ("{candidate: fresh, steps: [0.5, 0.2]}", "each larger than the one before"),
    ("{candidate: fresh, step_after: 10, min_sample: 20}", "min_sample cannot exceed"),
    ("{candidate: fresh, file: nowhere.yaml}", "nowhere.yaml: no such file"),
])
def test_bad_canary_settings_are_one_line_errors(
        tmp_path: Path, stub: StubProvider, capsys: pytest.CaptureFixture[str],
        canary_yaml: str, message: str) -> None:
    stable, _ = versions(stub, tmp_path / "versions", "http://127.0.0.1:9/alert")
    config = tmp_path / "serve.yaml"
    config.write_text(f"pipelines:\n  stable:\n    canary: {canary_yaml}\n")
    assert main(["serve", str(stable), "--port", "0", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "pipelines.stable.canary" in err and "Traceback" not in err
