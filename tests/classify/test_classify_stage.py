"""The classify stage: the embedding engine on the real local model, the llm engine and the
cascade against the chaos stub over real HTTP (litellm), and its configuration errors."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import SpecError
from engine.providers.stub import StubProvider
from engine.providers.stub_config import Rule, StubConfig
from engine.registry import Registry
from engine.spec import parse_spec

LABELS = """\
labels:
  category:
    billing:
      description: "Charges, refunds, invoices, payment methods and subscription plans"
      examples: ["I was charged twice for my subscription", "Where can I download my invoice?",
                 "Please refund the payment you took by mistake"]
    technical:
      description: "Log-in problems, error messages, crashes and the API"
      examples: ["The app crashes every time I open it", "I cannot log in to my account",
                 "The API returns error 500 on every call"]
  urgency:
    high: {description: "The business is stopped or at risk: outage, security breach",
           examples: ["Our whole team is locked out and production is down"]}
    low: {description: "A routine question with no deadline",
          examples: ["How do I change the colour of my dashboard?",
                     "Can you refund one payment when you have a moment?"]}
"""
CLEAR = "I was charged twice this month, please refund one payment"
UNCLEAR = "hello"


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


def build(config: str, *, stub: StubProvider | None = None, base_dir: Path | None = None,
          models: tuple[str, ...] = ("smart", "cheap")) -> CompiledPipeline:
    tiers = "".join(f'  {name}: {{model: openai/{name}, api_base: "{stub.base_url}", '
                    f'api_key: stub, timeout: 5s}}\n' for name in models) if stub else ""
    text = ("version: 1\nname: classify\n" + (f"models:\n{tiers}" if tiers else "")
            + "defaults: {retry: {attempts: 1}}\n"
            + "stages:\n  classify:\n    type: classify\n    with:\n"
            + textwrap.indent(config, "      ") + 'output: "{{ stages.classify.output }}"\n')
    return compile_pipeline(parse_spec(text, base_dir=base_dir), Registry.from_entry_points(),
                            resources=opened())


async def classify(pipeline: CompiledPipeline, text: str) -> dict[str, Any]:
    output, _ = await classify_noted(pipeline, text)
    return output


async def classify_noted(pipeline: CompiledPipeline, text: str
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage's output and its notes in the trace."""
    result = await pipeline.run({"text": text})
    assert result.status == "ok", result.error
    assert isinstance(result.output, dict)
    [event] = [event for event in result.events if event.stage == "classify"]
    return result.output, event.notes or {}


def reply(stub: StubProvider, text: str, model: str | None = None) -> None:
    stub.config = stub.config.model_copy(update={"rules": [
        *stub.config.rules, Rule(match=".", reply=text, model=model)]})


EMBEDDING = 'text: "{{ input.text }}"\nengine: embedding\n' + LABELS


async def test_embedding_engine_labels_every_set_locally_with_a_confidence() -> None:
    output = await classify(build(EMBEDDING), CLEAR)
    assert (output["category"], output["urgency"]) == ("billing", "low")
    assert output["engine"] == "embedding" and output["tier"] is None
    assert output["cost_usd"] == 0.0
    assert set(output["confidences"]) == {"category", "urgency"}
    assert 0.5 < output["confidences"]["category"] <= 1.0
    assert output["confidence"] == min(output["confidences"].values())
    technical = await classify(build(EMBEDDING), "Every API call fails with an error")
    assert technical["category"] == "technical"


async def test_bias_moves_a_close_decision_toward_the_costly_label() -> None:
    plain, notes = await classify_noted(build(EMBEDDING), CLEAR)
    assert plain["urgency"] == "low"
    scores = notes["scores"]["urgency"]
    margin = scores["low"] - scores["high"]
    assert margin > 0
    bias = round(margin + 0.01, 4)
    biased, notes = await classify_noted(build(EMBEDDING.replace(
        "high: {description", f"high: {{bias: {bias}, description")), CLEAR)
    assert biased["urgency"] == "high"
    assert notes["scores"]["urgency"]["high"] == pytest.approx(scores["high"] + bias, abs=1e-3)


async def test_examples_file_adds_prototypes(tmp_path: Path) -> None:
    config = ('text: "{{ input.text }}"\nexamples: ex.jsonl\nlabels:\n'
              '  topic: {pets: "", weather: ""}\n')
    lines = [{"text": t, "topic": "pets"} for t in ("my dog barks", "the cat sleeps all day")]
    lines += [{"text": t, "topic": "weather"} for t in ("it will rain tomorrow", "sunny skies")]
    (tmp_path / "ex.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    pipeline = build(config, base_dir=tmp_path)
    assert (await classify(pipeline, "my puppy chews shoes"))["topic"] == "pets"
    assert (await classify(pipeline, "a thunderstorm is coming"))["topic"] == "weather"


@pytest.mark.parametrize(("content", "expected"), [
    ('{"text": "x", "topic": "cars"}', "ex.jsonl:2: topic 'cars' is not one of pets, weather"),
    ("{not json", "ex.jsonl:2: not JSON"),
    ('{"topic": "pets"}', "ex.jsonl:2: expected an object with a `text` string"),
])
def test_a_bad_examples_line_is_named_by_file_and_line(tmp_path: Path, content: str,
                                                        expected: str) -> None:
    (tmp_path / "ex.jsonl").write_text('{"text": "a dog", "topic": "pets"}\n' + content)
    config = ('text: "{{ input.text }}"\nexamples: ex.jsonl\n'
              'labels:\n  topic: {pets: a, weather: b}\n')
    with pytest.raises(SpecError) as caught:
        build(config, base_dir=tmp_path)
    assert expected in str(caught.value)
    assert "stages.classify.with.examples" in str(caught.value)


@pytest.mark.parametrize(("config", "expected"), [
    ('text: x\nengine: llm\nlabels: {topic: {a: x, b: y}}\n', "engine llm needs `models`"),
    ('text: x\nlabels: {topic: {a: x}}\n', "needs at least two labels"),
    ('text: x\nlabels: {engine: {a: x, b: y}}\n', "must be an identifier and not one of"),
    ('text: x\nlabels: {topic: {a: x, b: {examples: []}}}\n', "label 'b' has no description"),
])
def test_config_mistakes_are_spec_errors(config: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        build(config)
    assert expected in str(caught.value)


LLM = 'text: "{{ input.text }}"\nengine: llm\nmodels: [smart, cheap]\n' + LABELS


async def test_llm_engine_reads_a_fenced_reply_and_tolerates_label_case(
        stub: StubProvider) -> None:
    reply(stub, '```json\n{"category": "Billing", "urgency": "low", "confidence": 0.9,}\n```')
    output = await classify(build(LLM, stub=stub), CLEAR)
    assert output["category"] == "billing" and output["urgency"] == "low"
    assert (output["engine"], output["tier"], output["confidence"]) == ("llm", "smart", 0.9)
    [request] = stub.requests
    system = request.messages[0]["content"]
    assert "Label set `category`" in system and "I was charged twice" in system  # few-shot
    assert request.messages[-1]["content"] == CLEAR
    assert "response_format" not in request.body  # litellm knows no schema support for it


async def test_a_reply_outside_the_label_set_moves_to_the_next_tier(
        stub: StubProvider) -> None:
    reply(stub, '{"category": "shipping", "urgency": "low", "confidence": 1}', model="smart")
    reply(stub, '{"category": "technical", "urgency": "high", "confidence": 0.7}',
          model="cheap")
    output = await classify(build(LLM, stub=stub), "anything")
    assert (output["category"], output["urgency"], output["tier"]) == (
        "technical", "high", "cheap")
    first = output["attempts"][0]
    assert (first["tier"], first["outcome"]) == ("smart", "invalid")
    assert "category" in first["detail"] and "'shipping' is not one of" in first["detail"]


async def test_llm_engine_fails_the_stage_when_no_tier_answers_usably(
        stub: StubProvider) -> None:
    reply(stub, "I think it is about billing.")
    result = await build(LLM, stub=stub).run({"text": CLEAR})
    assert result.status == "error"
    assert "smart #1: invalid" in str(result.error) and "cheap #1: invalid" in str(result.error)


async def test_a_tier_known_to_support_json_schema_gets_the_label_enum(
        stub: StubProvider) -> None:
    reply(stub, '{"category": "billing", "urgency": "low", "confidence": 0.8}')
    config = LLM.replace("[smart, cheap]", "[gpt-4o]")
    await classify(build(config, stub=stub, models=("gpt-4o",)), CLEAR)
    [request] = stub.requests
    schema = request.body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["category"]["enum"] == ["billing", "technical"]
    assert schema["required"] == ["category", "urgency", "confidence"]


CASCADE = 'text: "{{ input.text }}"\nengine: cascade\nmodels: [smart]\n' + LABELS


async def test_cascade_asks_the_model_only_below_the_threshold(stub: StubProvider) -> None:
    local = build(EMBEDDING)
    clear, unclear = [(await classify(local, text))["confidence"] for text in (CLEAR, UNCLEAR)]
    assert unclear < clear
    reply(stub, '{"category": "technical", "urgency": "low", "confidence": 0.95}')
    threshold = round((clear + unclear) / 2, 4)
    pipeline = build(CASCADE + f"threshold: {threshold}\n", stub=stub, models=("smart",))
    confident = await classify(pipeline, CLEAR)
    assert confident["engine"] == "embedding" and confident["category"] == "billing"
    assert stub.requests == []
    unsure = await classify(pipeline, UNCLEAR)
    assert (unsure["engine"], unsure["tier"], unsure["category"]) == ("llm", "smart",
                                                                      "technical")
    assert len(stub.requests) == 1


async def test_cascade_keeps_the_local_decision_when_every_tier_fails(
        stub: StubProvider) -> None:
    stub.plan("smart", ["500"])
    pipeline = build(CASCADE + "threshold: 1.0\n", stub=stub, models=("smart",))
    output = await classify(pipeline, CLEAR)
    assert output["engine"] == "embedding" and output["category"] == "billing"
    assert [(a["tier"], a["outcome"]) for a in output["attempts"]] == [("smart", "server")]
