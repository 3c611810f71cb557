"""`generate`: ask models in order — the fallback pyramid — and never go down.

```yaml
answer:
  type: generate
  with:
    models: [smart, cheap, local]          # tiers from `models:`, best first
    prompt: prompts/answer.j2              # a Jinja2 file (the user message), or messages:
    system: "You answer support tickets."  # optional
    static_response: "We will reply by email."   # the last tier: always answers
    stream: true                           # time to first token; text to the caller live
    idempotency_key: "{{ input.ticket_id }}"
    cite: "{{ stages.kb.output.passages }}"   # the passages the prompt numbers [1], [2]...
    response_schema: schemas/reply.json    # or pkg.mod:Model: JSON of this shape is asked for
```

Output: `text`, the `tier` that answered (`static` for the static response) and its `model`,
`usage` (input/output tokens), `cost_usd`, `ttft_ms` when streaming, and `attempts`: every
call, skip and wait, with why each tier that did not answer failed. When every tier fails and
there is no static response, the stage fails with that list. With `cite`, `sources` lists the
passages the answer cites as `[n]` (the n-th of `cite`, counting from 1), each once, in the
order cited — so an answer can be traced to the articles it rests on. With `response_schema`
every tier is told the schema in a system message, and a tier whose model litellm knows to
support JSON-schema responses also gets it as its `response_format` (strict when the schema
meets the strict subset); a `validate` stage then parses, checks and re-asks.

With `stream: true` the text also goes, as it arrives, to the run's `on_token` hook when the
caller set one (`engine serve` answering `stream: true`): a tier that fails before its first
token still falls back, one that breaks after it does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from engine.errors import StageError
from engine.providers.client import is_local
from engine.providers.pyramid import Pyramid, TierOutcome
from engine.providers.structured import instruction, schema_format, supports_schema
from engine.resources.budgets import Gate
from engine.runtime.context import StageContext
from engine.spec.models import ModelTier, Retry
from engine.spec.types import ModelRefStr
from engine.stages.base import Reference, Setup, SetupError, Stage, StageConfig
from engine.template import Template, TemplateStr, TemplateValue
from engine.validate.contract import OutputSchema

__all__ = ["GenerateConfig", "GenerateStage", "Message"]


class Message(StageConfig):
    role: Literal["system", "user", "assistant"]
    content: TemplateStr


class GenerateConfig(StageConfig):
    models: list[ModelRefStr] = Field(min_length=1, description="the pyramid, best tier first")
    prompt: str | None = Field(None, description="a Jinja2 template file: the user message")
    system: TemplateStr | None = None
    messages: list[Message] | None = Field(None, description="inline messages instead of prompt")
    static_response: TemplateValue = Field(None, description="answers when every tier fails")
    stream: bool = False
    idempotency_key: TemplateStr | None = Field(
        None, description="the same key within 24 h returns the first answer, one call")
    retry: Retry | None = Field(None, description="overrides defaults.retry for this stage")
    response_schema: str | None = Field(
        None, description="a JSON Schema file or a Pydantic model (pkg.mod:Model): asked of "
                          "the tiers as a response format, or as an instruction")
    cite: TemplateStr | None = Field(
        None, description="the passages the prompt numbers [1], [2]...: `sources` lists those "
                          "the answer cites")

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateConfig:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` (a template file) or `messages`")
        return self


class GenerateStage(Stage[GenerateConfig]):
    Config = GenerateConfig

    def __init__(self, setup: Setup[GenerateConfig]) -> None:
        super().__init__(setup)
        self.pipeline_name = setup.pipeline.name
        self.prompt = _load_prompt(setup.base_dir, self.config.prompt)
        models = setup.pipeline.models
        tiers = [(name, models[name]) for name in self.config.models if name in models]
        defaults = setup.pipeline.defaults
        self.pyramid = Pyramid(tiers, self.config.retry or defaults.retry, defaults.breaker,
                               setup.resources, stream=self.config.stream)
        self.idempotency = setup.resources.idempotency
        self.schema = _load_schema(setup.base_dir, self.config.response_schema)
        self.budgets = setup.resources.budgets(setup.pipeline)

    async def warm_up(self) -> None:
        await self.pyramid.resources.models.warm_up(tier for _, tier in self.pyramid.tiers)

    def references(self) -> Iterable[Reference]:
        yield from super().references()
        if self.prompt is not None:
            yield ("prompt",), self.prompt

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        last = self.pyramid.tiers[-1][1].model if self.pyramid.tiers else ""
        if self.config.static_response is None and not is_local(last):
            yield ("no last-resort tier: when every model fails the record errors; add "
                   "`static_response` or a local/ model as the last tier", ("models",))

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        messages = self.messages(ctx)
        key = (ctx.render(self.config.idempotency_key)
               if self.config.idempotency_key is not None else None)
        headers = ctx.traceparent()
        if key is None or key == "":  # a record without an id: no idempotency, not a shared key
            return await self.answer(ctx, messages, headers)
        key = str(key)
        fresh = False

        async def first_call() -> dict[str, Any]:
            nonlocal fresh
            fresh = True
            return await self.answer(ctx, messages, {**headers, "Idempotency-Key": key})

        result = await self.idempotency.run(f"{self.pipeline_name}/{self.name}/{key}",
                                            first_call)
        if not fresh:
            ctx.note(idempotent_replay=True)
        return result

    def messages(self, ctx: StageContext) -> list[dict[str, Any]]:
        out = []
        if self.config.system is not None:
            out.append({"role": "system", "content": str(ctx.render(self.config.system))})
        if self.schema is not None:
            out.append({"role": "system", "content": instruction(self.schema.schema)})
        if self.prompt is not None:
            out.append({"role": "user", "content": str(ctx.render(self.prompt))})
        for message in self.config.messages or ():
            out.append({"role": message.role, "content": str(ctx.render(message.content))})
        return out

    async def answer(self, ctx: StageContext, messages: list[dict[str, Any]],
                     headers: dict[str, str] | None) -> dict[str, Any]:
        outcome = await self.pyramid.call(messages, ctx.remaining, headers,
                                          params=self.params, gate=self.gate(ctx),
                                          on_token=ctx.hooks.on_token)
        attempts = [attempt.to_json() for attempt in outcome.attempts]
        ctx.note(tier=outcome.tier or "static")
        ctx.note_call(outcome.call_note())
        if outcome.completion is not None:
            out = _output(outcome, attempts)
            if self.config.cite is not None:
                out["sources"] = cited(out["text"], ctx.render(self.config.cite) or [])
            return out
        if self.config.static_response is None:
            raise StageError(self.name, outcome.failed())
        ctx.degrade(f"{self.name}: static response")
        return {"text": ctx.render(self.config.static_response), "tier": "static",
                "model": None, "usage": {"input_tokens": 0, "output_tokens": 0},
                "cost_usd": 0.0, "attempts": attempts}


    def gate(self, ctx: StageContext) -> Gate | None:
        """The record's budgets, when the pipeline has any."""
        return self.budgets.gate(ctx.render) if self.budgets is not None else None

    def params(self, tier: ModelTier) -> Mapping[str, Any]:
        """A tier that supports JSON-schema responses is asked for the response schema."""
        if self.schema is None or not supports_schema(tier.model):
            return {}
        return {"response_format": schema_format(
            "response", self.schema.schema, strict=self.schema.strict())}


def _output(outcome: TierOutcome, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    completion = outcome.completion
    assert completion is not None
    out: dict[str, Any] = {
        "text": completion.text,
        "tier": outcome.tier,
        "model": completion.model,
        "usage": {"input_tokens": completion.input_tokens,
                  "output_tokens": completion.output_tokens},
        "cost_usd": completion.cost_usd,
        "attempts": attempts,
    }
    if completion.ttft is not None:
        out["ttft_ms"] = round(completion.ttft * 1000, 3)
    return out


_CITATION = re.compile(r"\[(\d{1,3})\]")


def cited(text: str, passages: Sequence[Any]) -> list[Any]:
    """The passages `text` cites as [n], each once, in citation order; for a passage that is
    a mapping, its `source` (or `id`) stands for it."""
    out: list[Any] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= len(passages):
            passage = passages[n - 1]
            source = (passage.get("source", passage.get("id", passage))
                      if isinstance(passage, dict) else passage)
            if source not in out:
                out.append(source)
    return out


def _load_schema(base_dir: Path, ref: str | None) -> OutputSchema | None:
    if ref is None:
        return None
    try:
        return OutputSchema.load(ref, base_dir)
    except ValueError as exc:
        raise SetupError(str(exc), ("response_schema",)) from None


def _load_prompt(base_dir: Path, name: str | None) -> Template | None:
    if name is None:
        return None
    path = base_dir / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        message = f"cannot read the prompt file {path}: {exc.strerror}"
        raise SetupError(message, ("prompt",)) from None
    try:
        return Template(text)
    except ValueError as exc:
        raise SetupError(f"{path}: {exc}", ("prompt",)) from None
