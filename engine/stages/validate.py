"""`validate`: no model output reaches the user unchecked.

```yaml
answer:
  type: generate
  with: {models: [smart, cheap, local], prompt: prompts/answer.j2,
         response_schema: schemas/support_reply.json}   # or a Pydantic model: "pkg.mod:Reply"
check:
  type: validate
  needs: [answer]
  on_error: human                  # where an answer that cannot be made valid goes
  with:
    schema: schemas/support_reply.json     # omitted: the answer is plain text
    field: reply                   # the prose the filters read (default: every string)
    reask: 2                       # feed the errors back to the tier, at most twice
    max_length: 1200
    pii: redact                    # or block; {action, entities, allow: [regex...]}
    harm: {action: block, threshold: 0.7}   # model: a models: entry → its moderation endpoint
    grounded: {passages: "{{ stages.kb.output.passages }}", min_support: 0.6, action: flag}
```

Structure first. The answer is parsed leniently (fences, prose around it, trailing commas:
see `engine.validate.contract`) and checked against the schema, and against `max_length`.
A failure is sent back to the tier that wrote it — its own messages, the failing answer, and
the precise errors — up to `reask` times; then the next tier of the generate stage's pyramid
is asked afresh (and re-asked); then the stage fails and its `on_error` decides. With
`grounded.action: regenerate` unsupported sentences are a failure of the same kind.

Then the filters, on the valid answer: personal data is redacted (or blocks), harm is scored
(a local offline scorer, or a provider's moderation endpoint) and blocks or is flagged, and
each factual sentence is compared with the passages: the unsupported ones are hallucination
hits, flagged or blocking. A block fails the stage (its reason in the error) for `on_error`.

Output: `text` (the checked answer; JSON text with a schema), `value` (with a schema), the
`tier` that wrote it, `parse` (ok / repaired), `reasks`, `filters` (those that fired),
`hallucinations`, `harm` (the score, when scored), `unsupported` (the sentences), `audit`
(`response_id` and the `sha256` of `text`: an answer shown to a user can be traced back),
`cost_usd` of the re-asks, `attempts` — every answer read, with its errors — and, with
`grounded`, `sources`: the passages the final answer cites as `[n]` (as generate's `cite`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from engine.errors import StageError
from engine.providers.pyramid import Pyramid
from engine.runtime.context import StageContext
from engine.spec.types import ModelRefStr, StageName
from engine.stages.base import Setup, SetupError, Stage, StageConfig
from engine.stages.generate import GenerateConfig, GenerateStage, cited
from engine.stages.guard import STRUCTURED_ENTITIES, Entity
from engine.template import TemplateStr
from engine.validate.contract import OutputSchema, Reading
from engine.values import map_strings, strings

__all__ = ["ValidateConfig", "ValidateStage"]


class PiiFilter(StageConfig):
    action: Literal["redact", "block"] = "redact"
    entities: list[Entity] = Field(default_factory=lambda: list(STRUCTURED_ENTITIES))
    allow: list[str] = Field(default_factory=list,
                             description="regexes of values that may stay (your own address)")


class HarmFilter(StageConfig):
    action: Literal["block", "flag"] = "block"
    threshold: float = Field(0.7, gt=0, le=1)
    model: ModelRefStr | None = Field(None, description="a moderation endpoint instead of the "
                                                        "local scorer")


class GroundedFilter(StageConfig):
    passages: TemplateStr = Field(description="what the answer may rest on")
    min_support: float = Field(0.6, gt=0, le=1)
    action: Literal["flag", "block", "regenerate"] = "flag"


def _action(value: Any) -> Any:
    return {"action": value} if isinstance(value, str) else value


class ValidateConfig(StageConfig):
    of: StageName | None = Field(None, description="the generate stage checked (default: the "
                                                   "one in needs)")
    schema_: str | None = Field(None, alias="schema",
                                description="a JSON Schema file or a Pydantic model path")
    field: str | None = Field(None, description="the prose field the filters read")
    reask: int = Field(0, ge=0, le=5)
    max_length: int | None = Field(None, gt=0, description="characters")
    pii: Annotated[PiiFilter | None, BeforeValidator(_action)] = None
    harm: HarmFilter | None = None
    grounded: GroundedFilter | None = None

    @model_validator(mode="after")
    def _field_needs_schema(self) -> ValidateConfig:
        if self.field is not None and self.schema_ is None:
            raise ValueError("`field` picks a field of a structured answer: give `schema` too")
        return self


class Blocked(Exception):
    """A filter refused the answer."""


@dataclass(slots=True)
class Inspection:
    """One answer as checked: how it read, and every problem a re-ask could fix."""

    text: str
    reading: Reading | None
    problems: list[str]
    unsupported: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class Spent:
    """What making the answer valid took: re-asks, their cost, every answer read."""

    attempts: list[dict[str, Any]]
    reasks: int = 0
    cost: float = 0.0


class ValidateStage(Stage[ValidateConfig]):
    Config = ValidateConfig

    def __init__(self, setup: Setup[ValidateConfig]) -> None:
        super().__init__(setup)
        self.source = _source(setup)
        self.generate = _generate_stage(setup, self.source)
        self.schema = self._schema(setup)
        models = setup.pipeline.models
        defaults = setup.pipeline.defaults
        retry = self.generate.config.retry or defaults.retry
        self.tiers = [name for name, _ in self.generate.pyramid.tiers]
        self.single = {name: Pyramid([(name, tier)], retry, defaults.breaker, setup.resources)
                       for name, tier in self.generate.pyramid.tiers}
        self.resources = setup.resources
        self.allow = [re.compile(p) for p in self.config.pii.allow] if self.config.pii else []
        harm = self.config.harm
        self.moderation = models.get(harm.model) if harm and harm.model else None
        self._pii: Any = None
        self._harm: Any = None

    def _schema(self, setup: Setup[ValidateConfig]) -> OutputSchema | None:
        if self.config.schema_ is None:
            return None
        try:
            return OutputSchema.load(self.config.schema_, setup.base_dir)
        except ValueError as exc:
            raise SetupError(str(exc), ("schema",)) from None

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        if self.config.reask and self.generate.config.stream:
            yield ("re-asks of a streamed answer happen after the user saw it: validate a "
                   "non-streamed generate", ("reask",))

    async def warm_up(self) -> None:
        if self.config.pii is not None:
            self._scanner()
        if self.config.harm is not None:
            scorer = self._scorer()
            if hasattr(scorer, "warm_up"):
                await scorer.warm_up()
        if self.config.grounded is not None:
            await self.resources.embedder().warm_up()

    # -- the run ------------------------------------------------------------------------------
    async def run(self, ctx: StageContext) -> dict[str, Any]:
        answer = ctx.stages[self.source]["output"]
        passages = self._passages(ctx)
        spent = Spent(attempts=[])
        tier = answer.get("tier")
        inspection = await self._inspect(str(answer.get("text", "")), passages)
        spent.attempts.append(_attempt(tier, 0, inspection))
        if not inspection.ok:
            inspection, tier = await self._repair(ctx, inspection, tier, passages, spent)
        try:
            return await self._filtered(ctx, inspection, tier, passages, spent)
        except Blocked as exc:
            ctx.note(blocked=str(exc))
            raise StageError(self.name, f"blocked: {exc}") from None

    async def _repair(self, ctx: StageContext, inspection: Inspection, tier: str | None,
                      passages: list[Any] | None, spent: Spent) -> tuple[Inspection, str]:
        """Re-ask the tier that answered, then ask (and re-ask) the tiers after it, until an
        answer passes; else fail."""
        if tier not in self.tiers:  # the static response, or an answer from elsewhere
            raise StageError(self.name, _failure(inspection))
        base = self.generate.messages(ctx)
        for position, name in enumerate(self.tiers[self.tiers.index(tier):]):
            if position:  # a tier after the one that answered: asked afresh
                fresh = await self._try(ctx, name, base, 0, passages, spent)
                if fresh is None:
                    continue
                inspection = fresh
                if inspection.ok:
                    return inspection, name
            for turn in range(1, self.config.reask + 1):
                again = await self._try(ctx, name, [
                    *base, {"role": "assistant", "content": inspection.text},
                    {"role": "user", "content": _feedback(inspection)}], turn, passages, spent)
                if again is None:
                    break  # this tier is failing: the next one
                inspection = again
                spent.reasks += 1
                if inspection.ok:
                    return inspection, name
        raise StageError(self.name, _failure(inspection))

    async def _try(self, ctx: StageContext, tier: str, messages: list[dict[str, Any]],
                   turn: int, passages: list[Any] | None, spent: Spent) -> Inspection | None:
        """One call to `tier` and its answer inspected; None when the tier did not answer."""
        outcome = await self.single[tier].call(messages, ctx.remaining, ctx.traceparent(),
                                               params=self.generate.params,
                                               gate=self.generate.gate(ctx))
        ctx.note_call(outcome.call_note())
        if outcome.completion is None:
            spent.attempts += [attempt.to_json() for attempt in outcome.attempts]
            return None
        spent.cost += outcome.completion.cost_usd
        inspection = await self._inspect(outcome.completion.text, passages)
        spent.attempts.append(_attempt(tier, turn, inspection))
        return inspection

    async def _inspect(self, text: str, passages: list[Any] | None) -> Inspection:
        reading = self.schema.read(text) if self.schema is not None else None
        problems = list(reading.errors) if reading is not None else []
        if self.config.max_length is not None and len(text) > self.config.max_length:
            problems.append(f"the answer is {len(text)} characters; the limit is "
                            f"{self.config.max_length}")
        inspection = Inspection(text, reading, problems)
        grounded = self.config.grounded
        if grounded is not None and grounded.action == "regenerate" and not problems:
            inspection.unsupported = await self._unsupported(self._prose(inspection), passages)
            problems += [f"not supported by the passages: {sentence!r}"
                         for sentence in inspection.unsupported]
        return inspection

    async def _filtered(self, ctx: StageContext, inspection: Inspection, tier: str | None,
                        passages: list[Any] | None, spent: Spent) -> dict[str, Any]:
        fired: list[str] = []
        value = inspection.reading.value if inspection.reading is not None else None
        text, value = self._redacted(inspection.text, value, fired)
        inspection = Inspection(text, inspection.reading, [], inspection.unsupported)
        prose = self._prose(inspection, value)
        grounded = self.config.grounded
        checked = grounded is not None and grounded.action != "regenerate"
        # Concurrently: the two checks' sentences then share the embedder's forward passes.
        score, found = await asyncio.gather(
            self._harm_score(prose), self._unsupported(prose, passages) if checked else _none())
        unsupported = found if found is not None else inspection.unsupported
        self._judge_harm(score, fired)
        if checked and unsupported:
            fired.append("grounded")
            if grounded is not None and grounded.action == "block":
                raise Blocked(f"{len(unsupported)} unsupported sentence(s)")
        harm = score
        out: dict[str, Any] = {
            "text": text, "tier": tier,
            "parse": inspection.reading.parse if inspection.reading is not None else "ok",
            "reasks": spent.reasks, "filters": fired, "hallucinations": len(unsupported),
            "unsupported": unsupported, "audit": _audit(text), "cost_usd": spent.cost,
            "attempts": spent.attempts}
        if self.schema is not None:
            out["value"] = value
        if harm is not None:
            out["harm"] = harm
        if passages is not None:
            out["sources"] = cited(text, passages)
        ctx.note(parse=out["parse"], reasks=spent.reasks, filters=fired,
                 hallucinations=len(unsupported), attempts=spent.attempts)
        return out

    # -- the filters --------------------------------------------------------------------------
    def _redacted(self, text: str, value: Any, fired: list[str]) -> tuple[str, Any]:
        """The answer with personal data redacted (or Blocked); JSON text re-serialized."""
        if self.config.pii is None:
            return text, value
        found: list[str] = []

        def clean(item: str) -> str:
            scanner = self._scanner()
            findings = [f for f in scanner.find(item)
                        if not any(p.search(item[f.start:f.end]) for p in self.allow)]
            found.extend(f.entity for f in findings)
            return str(scanner.apply(item, findings, "redact").text) if findings else item

        if self.schema is None:
            text = clean(text)
        else:
            value = map_strings(value, clean)
        if found:
            fired.append("pii")
            if self.config.pii.action == "block":
                raise Blocked(f"personal data in the answer ({', '.join(sorted(set(found)))})")
            if self.schema is not None:
                text = json.dumps(value, ensure_ascii=False)
        return text, value

    async def _harm_score(self, prose: str) -> float | None:
        if self.config.harm is None:
            return None
        verdict = await self._scorer().score(prose)
        return round(float(verdict.score), 4)

    def _judge_harm(self, score: float | None, fired: list[str]) -> None:
        harm = self.config.harm
        if harm is not None and score is not None and score >= harm.threshold:
            fired.append("harm")
            if harm.action == "block":
                raise Blocked(f"harmful content (score {score} ≥ {harm.threshold})")

    async def _unsupported(self, prose: str, passages: list[Any] | None) -> list[str]:
        from engine.validate.grounded import grounding

        assert self.config.grounded is not None
        texts = [str(p.get("text", "")) if isinstance(p, dict) else str(p)
                 for p in passages or []]
        result = await grounding(prose, texts, self.resources.embedder(),
                                 min_support=self.config.grounded.min_support)
        return [s.text for s in result.sentences if not s.supported]

    def _scanner(self) -> Any:
        if self._pii is None:
            from engine.guard.pii import PiiScanner

            assert self.config.pii is not None
            entities = list(self.config.pii.entities)
            self._pii = PiiScanner(entities, ner="PERSON" in entities)
        return self._pii

    def _scorer(self) -> Any:
        if self._harm is None:
            from engine.validate.harm import LocalHarm, ModerationHarm

            tier = self.moderation
            self._harm = (ModerationHarm(tier.model, api_key=tier.api_key.get_secret_value()
                                         if tier.api_key else None, api_base=tier.api_base,
                                         timeout=tier.timeout or 5.0)
                          if tier is not None else LocalHarm(self.resources.embedder()))
        return self._harm

    # -- reading ------------------------------------------------------------------------------
    def _passages(self, ctx: StageContext) -> list[Any] | None:
        """The passages as rendered: strings, or mappings with a `text` (retrieve's)."""
        if self.config.grounded is None:
            return None
        rendered = ctx.render(self.config.grounded.passages) or []
        return [rendered] if isinstance(rendered, str | dict) else list(rendered)

    def _prose(self, inspection: Inspection, value: Any = None) -> str:
        """What the filters read: the text, the `field` of a structured answer, or all of
        its strings."""
        if self.schema is None:
            return inspection.text
        if value is None and inspection.reading is not None:
            value = inspection.reading.value
        if self.config.field is not None and isinstance(value, dict):
            return str(value.get(self.config.field, ""))
        return "\n".join(strings(value))


def _source(setup: Setup[ValidateConfig]) -> str:
    """The generate stage this one checks: `of`, or the only generate stage in `needs`."""
    stages = setup.pipeline.stages
    needs = stages[setup.name].needs if setup.name in stages else []
    if setup.config.of is not None:
        if setup.config.of not in needs or stages[setup.config.of].type != "generate":
            raise SetupError(f"`of: {setup.config.of}` must name a generate stage listed in "
                             "this stage's needs", ("of",))
        return setup.config.of
    found = [name for name in needs if stages[name].type == "generate"]
    if len(found) != 1:
        raise SetupError("validate checks a generate stage: list exactly one in `needs`, or "
                         "name it with `of`", ())
    return found[0]


def _generate_stage(setup: Setup[ValidateConfig], name: str) -> GenerateStage:
    """The checked stage's twin: the same messages and tiers, to re-ask with."""
    config = GenerateConfig.model_validate(setup.pipeline.stages[name].with_)
    return GenerateStage(Setup(name, config, setup.pipeline, setup.base_dir, setup.resources))


async def _none() -> None:
    return None


def _feedback(inspection: Inspection) -> str:
    problems = "\n".join(f"- {problem}" for problem in inspection.problems)
    return ("Your answer could not be used:\n" + problems
            + "\nReply again with the corrected answer only.")


def _failure(inspection: Inspection) -> str:
    return "no valid answer: " + "; ".join(inspection.problems)


def _attempt(tier: str | None, reask: int, inspection: Inspection) -> dict[str, Any]:
    out: dict[str, Any] = {"tier": tier, "reask": reask, "valid": inspection.ok}
    if inspection.reading is not None:
        out["parse"] = inspection.reading.parse
    if inspection.problems:
        out["errors"] = inspection.problems
    return out


def _audit(text: str) -> dict[str, str]:
    return {"response_id": f"resp_{uuid.uuid4().hex[:24]}",
            "sha256": hashlib.sha256(text.encode()).hexdigest()}
