"""`Handoff` (run another stage in this one's place) and `ctx.finalize` (post-process the
final output): the two hooks the guard stage builds on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field

from engine.errors import SpecError
from engine.runtime.context import StageContext
from engine.stages.base import Handoff, Stage, StageConfig
from engine.testing import compile_text, outcomes

HEADER = "version: 1\nname: handoff\n"


class GateConfig(StageConfig):
    divert_to: str = Field(description="the stage to hand off to when input.allowed is false")


class Gate(Stage[GateConfig]):
    """Lets a record through, or hands it to another stage (a stand-in for the guard)."""

    Config = GateConfig

    def handoffs(self) -> frozenset[str]:
        return frozenset({self.config.divert_to})

    async def run(self, ctx: StageContext) -> Any:
        if ctx.input.get("allowed"):
            ctx.finalize(lambda output: output.replace("<NAME>", ctx.input["name"]))
            return {"text": "hello <NAME>"}
        return Handoff(self.config.divert_to, {"reason": "not allowed"})


PIPELINE = HEADER + """
stages:
  gate: {type: gate, with: {divert_to: human}}
  answer:
    type: template
    needs: [gate]
    with: {output: "{{ stages.gate.output.text }}, how can we help?"}
  human:
    type: fallback
    needs: [gate]
    with: {response: "Sent to a person ({{ stages.gate.output.reason }})."}
output: "{{ stages.answer.output }}"
"""


async def test_a_handoff_runs_the_target_in_place_and_it_can_read_why() -> None:
    pipeline = compile_text(PIPELINE, {"gate": Gate})
    result = await pipeline.run({"allowed": False, "name": "Ann"})
    assert (result.status, result.finished_by, result.handed_off) == ("finished", "human", True)
    assert result.output == "Sent to a person (not allowed)."
    assert outcomes(result) == {"gate": "handoff", "human": "finished"}
    assert result.events[0].detail == "to human"


async def test_a_handoff_target_is_not_scheduled_on_its_own() -> None:
    pipeline = compile_text(PIPELINE, {"gate": Gate})
    assert "human" not in pipeline.stages["gate"].dependents
    result = await pipeline.run({"allowed": True, "name": "Ann"})
    assert result.status == "ok"
    assert "human" not in outcomes(result)


async def test_finalizers_transform_only_the_final_output() -> None:
    pipeline = compile_text(PIPELINE, {"gate": Gate})
    result = await pipeline.run({"allowed": True, "name": "Ann"})
    assert result.output == "hello Ann, how can we help?"
    assert result.to_json()["output"] == "hello Ann, how can we help?"
    again = await pipeline.run({"allowed": True, "name": "Bob"})
    assert again.output == "hello Bob, how can we help?"


def test_a_handoff_to_an_unknown_stage_is_a_located_error() -> None:
    with pytest.raises(SpecError) as caught:
        compile_text(PIPELINE.replace("divert_to: human", "divert_to: humn"), {"gate": Gate})
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.path == ("stages", "gate", "with")
    assert diagnostic.message == "handoff names unknown stage 'humn'"
    assert diagnostic.hint == "did you mean 'human'?"
