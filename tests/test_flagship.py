"""The flagship, `pipelines/support_triage.yaml`, on its sample tickets: offline as `make run`
runs it, and with its hosted tiers pointed at the chaos stub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.compile import compile_file
from engine.providers.stub import StubProvider
from engine.providers.stub_config import Rule, StubConfig, content_text
from engine.results import RunResult
from engine.runtime.batch import read_jsonl, run_batch

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "support_triage.yaml"
SAMPLE = ROOT / "pipelines" / "data" / "tickets.jsonl"
URGENT = ("S03", "S07", "S16")
CLASSIFY_PROMPT = "You classify one message"


def offline() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_API_BASE")}


async def triage(env: dict[str, str], ids: tuple[str, ...] | None = None
                 ) -> dict[str, RunResult]:
    pipeline = compile_file(FLAGSHIP, env=env)
    lines = [line for line in SAMPLE.read_text().splitlines()
             if ids is None or json.loads(line)["id"] in ids]
    results: list[RunResult] = []
    await run_batch(pipeline, read_jsonl(lines), results.append, concurrency=1)
    await pipeline.resources.aclose()
    assert len(results) == len(lines)
    return {result.id: result for result in results}


def ran(result: RunResult, stage: str) -> bool:
    return any(event.stage == stage and event.outcome == "ok" for event in result.events)


async def test_flagship_triages_its_sample_tickets_offline() -> None:
    by_id = await triage(offline())
    assert all(result.ok for result in by_id.values())
    outputs: dict[str, Any] = {key: result.output for key, result in by_id.items()}
    # Urgent tickets go to a person: escalated to their team, no reply generated.
    for key in URGENT:
        assert outputs[key]["action"] == "escalated" and outputs[key]["urgency"] == "high"
        assert not ran(by_id[key], "reply") and not ran(by_id[key], "kb")
    assert outputs["S03"]["team"] == "tech-support" and outputs["S16"]["team"] == "billing"
    # A routine ticket an article answers: answered by the offline tier, citing the article.
    upload = outputs["S09"]
    assert (upload["category"], upload["action"], upload["tier"]) == (
        "technical", "answered", "local")
    assert upload["sources"] == ["api-timeouts-large-uploads"]
    assert "[1]" in upload["reply"] and "resumable" in upload["reply"].lower()
    assert upload["classified_by"] == "embedding" and 0 < upload["confidence"] <= 1
    # ...and validated before it is sent: grounded, no personal data, an audit marker.
    [check] = [event for event in by_id["S09"].events if event.stage == "check"]
    assert check.notes is not None and (check.notes["filters"], check.notes["hallucinations"]
                                        ) == ([], 0)
    assert upload["audit"]["response_id"].startswith("resp_") and len(
        upload["audit"]["sha256"]) == 64
    # Routine tickets no article answers are queued to their team; no model writes to them.
    for key, team in (("S04", "customer-care"), ("S18", "billing")):
        assert (outputs[key]["action"], outputs[key]["team"]) == ("queued", team)
        assert not ran(by_id[key], "reply")
    # The guard: the injection attempt is refused; personal data never reaches a trace.
    assert (by_id["S11"].finished_by, outputs["S11"]["blocked"]) == ("refuse", "injection")
    trace = json.dumps([event.to_json() for event in by_id["S13"].events])
    assert "lena.hoffmann@example.com" not in trace and "5550 1823" not in trace
    # The cache: a repeat and a paraphrase are answered without the models.
    again, paraphrase = by_id["S14"], by_id["S19"]
    assert again.finished_by == "lookup" and again.events[-1].notes["cache"] == "exact"
    assert again.output == outputs["S08"]
    assert paraphrase.events[-1].notes["cache"] == "semantic"
    assert paraphrase.output == outputs["S15"]


async def test_urgent_tickets_never_reach_a_generating_model() -> None:
    """Hosted tiers on the stub: an urgent ticket may be classified by a model (the cascade),
    but no model is asked to answer it; a routine one is answered by the first tier."""
    verdict = '{"category": "technical", "urgency": "high", "confidence": 0.9}'
    config = StubConfig(seed=1, rules=[
        Rule(match=CLASSIFY_PROMPT, reply=verdict, on="any"),
        Rule(match="Passages:", reply="On yearly billing, 20 seats on the Team plan cost "
                                      "2,400 USD a year [1].", on="any")])
    async with StubProvider(config) as stub:
        env = {**offline(), "OPENAI_API_KEY": "stub", "OPENAI_API_BASE": stub.base_url}
        by_id = await triage(env, ("S03", "S07", "S08", "S16"))
        answering = [request for request in stub.requests
                     if not any(CLASSIFY_PROMPT in content_text(m) for m in request.messages)]
    for key in URGENT:
        assert by_id[key].output["action"] == "escalated"
    ticket = {key: json.loads(line)["ticket"] for line in SAMPLE.read_text().splitlines()
              for key in [json.loads(line)["id"]]}
    asked = [content_text(request.messages[-1]) for request in answering]
    assert not [key for key in URGENT if any(ticket[key][:40] in text for text in asked)]
    routine = by_id["S08"].output
    assert (routine["action"], routine["tier"]) == ("answered", "smart")
    assert routine["sources"] == ["plan-pricing"]
    assert len(answering) == 1 and ticket["S08"] in asked[0]


async def test_an_invented_claim_goes_back_to_the_tiers_until_one_is_grounded() -> None:
    invented = "Twenty seats on the Team plan cost 200 USD a month [1]."  # the KB: 240
    config = StubConfig(seed=1, rules=[Rule(match=".", reply=invented)])
    async with StubProvider(config) as stub:
        env = {**offline(), "OPENAI_API_KEY": "stub", "OPENAI_API_BASE": stub.base_url}
        result = (await triage(env, ("S08",)))["S08"]
        asked = [(r.model, "not supported by the passages" in content_text(r.messages[-1]))
                 for r in stub.requests]
    # smart, smart re-asked with the unsupported sentence, cheap, cheap re-asked: then the
    # local tier, which quotes the article.
    assert asked == [("gpt-4o", False), ("gpt-4o", True), ("gpt-4o-mini", False),
                     ("gpt-4o-mini", True)]
    output = result.output
    assert (output["action"], output["tier"], output["sources"]) == (
        "answered", "local", ["plan-pricing"])
    assert "200 USD" not in output["reply"] and "240 USD" in output["reply"]
