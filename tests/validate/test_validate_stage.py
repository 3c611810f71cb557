"""The validate stage against the chaos stub over real HTTP (litellm): repair, re-ask, the
next tier, on_error; the PII filter; the response schema asked of the tiers."""

from __future__ import annotations

import hashlib
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
from engine.results import RunResult
from engine.spec import parse_spec

SCHEMA = {"type": "object", "required": ["reply", "urgent"], "additionalProperties": False,
          "properties": {"reply": {"type": "string"}, "urgent": {"type": "boolean"}}}
REASK = "Your answer could not be used"


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "reply.json").write_text(json.dumps(SCHEMA))
    return tmp_path


def script(stub: StubProvider, *rules: Rule) -> None:
    stub.config = stub.config.model_copy(update={"rules": list(rules)})


def build(stub: StubProvider, folder: Path, check: str, *,
          models: tuple[str, ...] = ("smart", "cheap"), generate: str = "") -> CompiledPipeline:
    tiers = "".join(f'  {name}: {{model: openai/{name}, api_base: "{stub.base_url}", '
                    f"api_key: stub, timeout: 5s}}\n" for name in models)
    text = f"""\
version: 1
name: checked
models:
{tiers}defaults: {{retry: {{attempts: 1}}}}
stages:
  answer:
    type: generate
    with:
      models: [{", ".join(models)}]
      messages: [{{role: user, content: "{{{{ input.q }}}}"}}]
{textwrap.indent(generate, "      ")}
  check:
    type: validate
    needs: [answer]
    on_error: human
    with:
{textwrap.indent(textwrap.dedent(check), "      ")}
  human:
    type: fallback
    with: {{response: handed to a person}}
output: "{{{{ stages.check.output }}}}"
"""
    return compile_pipeline(parse_spec(text, base_dir=folder), Registry.from_entry_points(),
                            resources=opened())


async def checked(pipeline: CompiledPipeline, q: str = "help") -> tuple[Any, RunResult]:
    result = await pipeline.run({"q": q})
    assert result.status in ("ok", "finished"), result.error
    return result.output, result


async def test_damaged_json_is_repaired_without_a_reask(stub: StubProvider,
                                                        folder: Path) -> None:
    script(stub, Rule(match=".", reply="Sure! ```json\n{'reply': 'Done', 'urgent': false,}\n```"))
    output, _ = await checked(build(stub, folder, "schema: reply.json\nreask: 2"))
    assert output["value"] == {"reply": "Done", "urgent": False}
    assert (output["parse"], output["reasks"], output["tier"]) == ("repaired", 0, "smart")
    assert len(stub.requests) == 1


async def test_an_invalid_answer_is_reasked_with_its_errors_then_passes(
        stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=REASK, reply='{"reply": "Fixed", "urgent": true}'),
           Rule(match=".", reply='{"reply": 42}'))
    output, _ = await checked(build(stub, folder, "schema: reply.json\nreask: 2"))
    assert output["value"] == {"reply": "Fixed", "urgent": True}
    assert (output["reasks"], output["tier"]) == (1, "smart")
    first, second = stub.requests
    feedback = second.messages[-1]["content"]
    assert "reply: 42 is not of type 'string'" in feedback
    assert "<root>: 'urgent' is a required property" in feedback
    assert second.messages[-2] == {"role": "assistant", "content": '{"reply": 42}'}
    assert second.messages[0] == first.messages[0]  # the same conversation, continued
    assert [(a["tier"], a["reask"], a["valid"]) for a in output["attempts"]] == [
        ("smart", 0, False), ("smart", 1, True)]


async def test_after_the_reasks_the_next_tier_is_asked_afresh(stub: StubProvider,
                                                              folder: Path) -> None:
    script(stub, Rule(match=".", reply="not json at all", model="smart"),
           Rule(match=".", reply='{"reply": "From cheap", "urgent": false}', model="cheap"))
    output, _ = await checked(build(stub, folder, "schema: reply.json\nreask: 1"))
    assert (output["tier"], output["reasks"]) == ("cheap", 1)
    assert [(r.model, REASK in r.messages[-1]["content"]) for r in stub.requests] == [
        ("smart", False), ("smart", True), ("cheap", False)]
    assert output["attempts"][0]["errors"] == ["the reply holds no JSON value"]


async def test_when_no_tier_gets_it_right_on_error_takes_over(stub: StubProvider,
                                                              folder: Path) -> None:
    script(stub, Rule(match=".", reply='{"reply": "x"}'))
    output, result = await checked(build(stub, folder, "schema: reply.json\nreask: 1"))
    assert output == "handed to a person"
    [event] = [e for e in result.events if e.stage == "check"]
    assert event.outcome == "recovered" and "no valid answer" in str(event.detail)
    assert len(stub.requests) == 4  # smart, smart re-asked, cheap, cheap re-asked


async def test_max_length_is_reasked_with_the_limit(stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=REASK, reply="Short answer."), Rule(match=".", reply="word " * 50))
    output, _ = await checked(build(stub, folder, "max_length: 40\nreask: 1"))
    assert output["text"] == "Short answer." and output["reasks"] == 1
    assert "the limit is 40" in stub.requests[1].messages[-1]["content"]


@pytest.mark.parametrize(("pii", "expected"), [
    ("redact", "Write to <EMAIL> or call <PHONE>; billing@acme.com is ours."),
    ("{action: redact, allow: ['@acme\\.com$']}",
     "Write to <EMAIL> or call <PHONE>; billing@acme.com is ours."),
])
async def test_personal_data_in_the_answer_is_redacted(stub: StubProvider, folder: Path,
                                                       pii: str, expected: str) -> None:
    script(stub, Rule(match=".", reply="Write to jane.doe@example.com or call +1 415 555 0132; "
                                       "billing@acme.com is ours."))
    output, _ = await checked(build(stub, folder, f"pii: {pii}"))
    if "allow" not in pii:
        expected = expected.replace("billing@acme.com", "<EMAIL>")
    assert output["text"] == expected
    assert output["filters"] == ["pii"]
    assert output["audit"]["sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    assert output["audit"]["response_id"].startswith("resp_")


async def test_personal_data_in_a_structured_answer_is_redacted_field_by_field(
        stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=".", reply='{"reply": "Mail jane.doe@example.com", "urgent": true}'))
    output, _ = await checked(build(stub, folder, "schema: reply.json\npii: redact"))
    assert output["value"] == {"reply": "Mail <EMAIL>", "urgent": True}
    assert json.loads(output["text"]) == output["value"]


async def test_pii_block_fails_to_on_error(stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=".", reply="Call me on +1 415 555 0132."))
    output, result = await checked(build(stub, folder, "pii: block"))
    assert output == "handed to a person"
    [event] = [e for e in result.events if e.stage == "check"]
    assert "blocked: personal data in the answer (PHONE)" in str(event.detail)


async def test_a_clean_answer_passes_with_an_audit_marker(stub: StubProvider,
                                                          folder: Path) -> None:
    script(stub, Rule(match=".", reply="All good."))
    first, _ = await checked(build(stub, folder, "pii: redact\nmax_length: 100"))
    second, _ = await checked(build(stub, folder, "pii: redact\nmax_length: 100"))
    assert (first["text"], first["filters"], first["reasks"]) == ("All good.", [], 0)
    assert first["audit"]["sha256"] == second["audit"]["sha256"]
    assert first["audit"]["response_id"] != second["audit"]["response_id"]


async def test_the_response_schema_is_asked_of_every_tier_the_way_it_supports(
        stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=".", reply='{"reply": "ok", "urgent": false}'))
    for model in ("gpt-4o", "smart"):
        stub.requests.clear()
        pipeline = build(stub, folder, "schema: reply.json", models=(model,),
                         generate="response_schema: reply.json")
        await checked(pipeline)
        [request] = stub.requests
        system = request.messages[0]["content"]
        assert system.startswith("Answer with JSON only") and '"urgent"' in system
        if model == "gpt-4o":  # litellm knows it supports JSON-schema responses
            fmt = request.body["response_format"]
            assert fmt["json_schema"]["schema"] == SCHEMA and fmt["json_schema"]["strict"]
        else:
            assert "response_format" not in request.body


@pytest.mark.parametrize(("check", "expected"), [
    ("schema: missing.json", "cannot read the schema file"),
    ("schema: no.such.module:Model", "cannot import no.such.module:Model"),
    ("field: reply", "`field` picks a field of a structured answer"),
    ("of: human", "`of: human` must name a generate stage"),
])
def test_config_mistakes_are_spec_errors(stub: StubProvider, folder: Path, check: str,
                                         expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        build(stub, folder, check)
    assert expected in str(caught.value)


PASSAGE = "Refunds go back to the original payment method within 5-7 business days."
SUPPORTED = "Your refund goes back to the original payment method within 5-7 business days."
INVENTED = SUPPORTED + " We will also send you a free Acme Dock as an apology."


def grounded(action: str) -> str:
    return (f'grounded: {{passages: "{{{{ input.passages }}}}", min_support: 0.6, '
            f"action: {action}}}\nreask: 1")


async def ground(pipeline: CompiledPipeline) -> tuple[Any, RunResult]:
    result = await pipeline.run({"q": "refund?", "passages": [{"text": PASSAGE}]})
    assert result.status in ("ok", "finished"), result.error
    return result.output, result


async def test_an_invented_claim_is_flagged_as_a_hallucination(stub: StubProvider,
                                                               folder: Path) -> None:
    script(stub, Rule(match=".", reply=INVENTED))
    output, result = await ground(build(stub, folder, grounded("flag")))
    assert output["text"] == INVENTED and output["filters"] == ["grounded"]
    assert output["hallucinations"] == 1
    assert output["unsupported"] == ["We will also send you a free Acme Dock as an apology."]
    [event] = [e for e in result.events if e.stage == "check"]
    assert event.notes is not None and event.notes["hallucinations"] == 1


async def test_a_supported_answer_has_no_hallucination_hits(stub: StubProvider,
                                                            folder: Path) -> None:
    script(stub, Rule(match=".", reply=SUPPORTED))
    output, _ = await ground(build(stub, folder, grounded("block")))
    assert (output["hallucinations"], output["filters"]) == (0, [])


async def test_grounded_block_fails_to_on_error(stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=".", reply=INVENTED))
    output, _ = await ground(build(stub, folder, grounded("block")))
    assert output == "handed to a person"


async def test_grounded_regenerate_reasks_with_the_unsupported_sentences(
        stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=REASK, reply=SUPPORTED), Rule(match=".", reply=INVENTED))
    output, _ = await ground(build(stub, folder, grounded("regenerate")))
    assert (output["text"], output["reasks"], output["hallucinations"]) == (SUPPORTED, 1, 0)
    feedback = stub.requests[1].messages[-1]["content"]
    assert "not supported by the passages: 'We will also send you a free Acme Dock" in feedback


HARMFUL = "You are a worthless idiot and nobody should ever help someone as stupid as you."


async def test_a_harmful_answer_is_blocked(stub: StubProvider, folder: Path) -> None:
    script(stub, Rule(match=".", reply=HARMFUL))
    output, result = await checked(build(stub, folder, "harm: {action: block, threshold: 0.7}"))
    assert output == "handed to a person"
    [event] = [e for e in result.events if e.stage == "check"]
    assert "blocked: harmful content" in str(event.detail)


async def test_harm_flag_scores_and_lets_a_benign_answer_through(stub: StubProvider,
                                                                 folder: Path) -> None:
    script(stub, Rule(match=".", reply=HARMFUL))
    flagged, _ = await checked(build(stub, folder, "harm: {action: flag, threshold: 0.7}"))
    assert flagged["filters"] == ["harm"] and flagged["harm"] >= 0.7
    script(stub, Rule(match=".", reply="Kill the process and restart the sync client."))
    benign, _ = await checked(build(stub, folder, "harm: {action: block, threshold: 0.7}"))
    assert benign["filters"] == [] and benign["harm"] < 0.7


async def test_a_pydantic_model_given_by_import_path_checks_the_answer(
        stub: StubProvider, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "replies.py").write_text(
        "from pydantic import BaseModel, Field\n\n"
        "class Reply(BaseModel):\n    reply: str\n    score: int = Field(ge=0, le=10)\n")
    monkeypatch.syspath_prepend(str(folder))
    script(stub, Rule(match=REASK, reply='{"reply": "ok", "score": 7}'),
           Rule(match=".", reply='{"reply": "ok", "score": 70}'))
    output, result = await checked(build(stub, folder, "schema: replies:Reply\nreask: 1",
                                         generate="response_schema: replies:Reply"))
    assert output["value"] == {"reply": "ok", "score": 7} and output["reasks"] == 1
    assert "score: Input should be less than or equal to 10" in (
        stub.requests[1].messages[-1]["content"])
    assert '"maximum": 10' in stub.requests[0].messages[0]["content"]  # the model's schema
    [event] = [e for e in result.events if e.stage == "check"]
    assert event.notes is not None and [a["valid"] for a in event.notes["attempts"]] == [
        False, True]
