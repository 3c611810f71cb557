"""`classify`: label a text with one or more label sets — locally, by a model, or both.

```yaml
classify:
  type: classify
  needs: [guard]
  with:
    text: "{{ stages.guard.output.text }}"
    engine: cascade                  # embedding | llm | cascade
    threshold: 0.6                   # cascade: a model decides below this confidence
    models: [smart, cheap]           # llm / cascade: the tiers, best first (a pyramid)
    examples: data/classify_examples.jsonl   # {"text": ..., "category": ..., "urgency": ...}
    labels:
      category:
        billing: {description: "Charges, refunds, invoices", examples: ["I was charged twice"]}
        technical: "Log-in problems, errors, crashes, the API"    # a description alone
        general: "Shipping, account changes, anything else"
      urgency:
        high: {description: "Business stopped, security, legal", bias: 0.03}
        low: "Routine questions"
```

Engines: `embedding` (local, free; see `engine.classify.prototypes`) embeds the descriptions
and examples once and decides by nearness, with a confidence from the margins; `llm` asks
the model tiers for every label set in one call, the answer constrained to the labels (see
`engine.classify.prompt`), and an answer outside them moves to the next tier; `cascade` runs
the embedding engine and asks a model only when a label set's confidence is below
`threshold` — when every tier fails, the embedding decision stands and the trace says so.

Output: each label set's label (`category: billing`), `confidence` (the least confident
set's), `confidences` per set, `engine` (which one decided), `tier` (the model tier, or
None), `cost_usd`, and the model `attempts` when one was asked.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from engine.classify.prompt import Choice, LabelPrompt, Verdict
from engine.classify.prototypes import LabelSet
from engine.errors import StageError
from engine.providers.client import Completion
from engine.providers.pyramid import Pyramid, TierOutcome
from engine.providers.structured import schema_format, supports_schema
from engine.runtime.context import StageContext
from engine.spec.models import ModelTier
from engine.spec.types import ModelRefStr
from engine.stages.base import Setup, SetupError, Stage, StageConfig
from engine.template import TemplateStr

__all__ = ["ClassifyConfig", "ClassifyStage", "Label"]

RESERVED = frozenset({"confidence", "confidences", "engine", "tier", "cost_usd", "attempts"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Label(StageConfig):
    description: str = ""
    examples: list[str] = Field(default_factory=list)
    bias: float = Field(0.0, ge=-1, le=1, description="added to the embedding score: favour "
                        "the label whose miss costs more")


def _shorthand(value: Any) -> Any:
    return {"description": value} if isinstance(value, str) else value


class ClassifyConfig(StageConfig):
    text: TemplateStr = Field(description="what to classify")
    labels: dict[str, dict[str, Annotated[Label, BeforeValidator(
        _shorthand, json_schema_input_type=Label | str)]]] = Field(
        min_length=1, description="label set → label → description, examples, bias")
    engine: Literal["embedding", "llm", "cascade"] = "embedding"
    threshold: float = Field(0.6, ge=0, le=1, description="cascade: below it a model decides")
    models: list[ModelRefStr] = Field(default_factory=list, description="llm / cascade tiers")
    examples: str | None = Field(None, description="a JSONL file of labelled texts")
    k: int = Field(5, ge=1, le=50, description="embedding: nearest prototypes per label")
    temperature: float = Field(0.05, gt=0, le=1, description="embedding: confidence softmax")
    shots: int = Field(3, ge=0, le=20, description="llm: examples per label in the prompt")
    instructions: str | None = Field(None, description="llm: extra guidance for the model")

    @model_validator(mode="after")
    def _consistent(self) -> ClassifyConfig:
        for name, labels in self.labels.items():
            if not _NAME.match(name) or name in RESERVED:
                raise ValueError(f"label set name {name!r} must be an identifier and not one "
                                 f"of {', '.join(sorted(RESERVED))}")
            if len(labels) < 2:
                raise ValueError(f"label set {name!r} needs at least two labels")
        if self.engine != "embedding" and not self.models:
            raise ValueError(f"engine {self.engine} needs `models`: the tiers to ask")
        return self


class ClassifyStage(Stage[ClassifyConfig]):
    Config = ClassifyConfig

    def __init__(self, setup: Setup[ClassifyConfig]) -> None:
        super().__init__(setup)
        texts = _prototypes(self.config, _read_examples(setup.base_dir, self.config))
        self.sets = {name: LabelSet(texts[name], {label: spec.bias for label, spec in
                                                   self.config.labels[name].items()},
                                    k=self.config.k, temperature=self.config.temperature)
                     for name in self.config.labels}
        if self.config.engine != "llm":
            _require_prototypes(texts)
        self.prompt = LabelPrompt(
            {name: {label: Choice(spec.description, texts[name][label][1 if spec.description
                                                                   else 0:])
                    for label, spec in labels.items()}
             for name, labels in self.config.labels.items()},
            shots=self.config.shots, instructions=self.config.instructions)
        models = setup.pipeline.models
        defaults = setup.pipeline.defaults
        self.pyramid = Pyramid([(name, models[name]) for name in self.config.models
                                if name in models], defaults.retry, defaults.breaker,
                               setup.resources)
        self.resources = setup.resources
        self.budgets = setup.resources.budgets(setup.pipeline)
        self._fitted: asyncio.Lock | None = None
        self._ready = False

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        if self.config.engine == "embedding" and self.config.models:
            yield "`models` is unused with engine embedding", ("models",)

    async def warm_up(self) -> None:
        if self.config.engine != "llm":
            await self._fit()
        if self.pyramid.tiers:
            await self.resources.models.warm_up(tier for _, tier in self.pyramid.tiers)

    async def _fit(self) -> None:
        """Embed every prototype once per process, in one call."""
        self._fitted = self._fitted or asyncio.Lock()
        async with self._fitted:
            if self._ready:
                return
            texts = [text for labels in self.sets.values() for text in labels.texts]
            vectors = await self.resources.embedder().embed(texts)
            start = 0
            for labels in self.sets.values():
                labels.fit(vectors[start:start + len(labels.texts)])
                start += len(labels.texts)
            self._ready = True

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        text = str(ctx.render(self.config.text))
        local = None
        if self.config.engine != "llm":
            local = await self._embedding(ctx, text)
            if self.config.engine == "embedding" or local["confidence"] >= self.config.threshold:
                ctx.note(engine="embedding")
                return local
        outcome, reading = await self._ask(ctx, text)
        ctx.note_call(outcome.call_note())
        attempts = [attempt.to_json() for attempt in outcome.attempts]
        if reading is None or outcome.completion is None:
            if local is None:
                raise StageError(self.name, outcome.failed())
            ctx.note(engine="embedding", llm_failed="every tier failed")
            return {**local, "attempts": attempts}
        ctx.note(engine="llm", tier=outcome.tier, confidence=reading.confidence)
        return _llm_output(reading, outcome, outcome.completion, attempts)

    async def _embedding(self, ctx: StageContext, text: str) -> dict[str, Any]:
        if not self._ready:
            await self._fit()
        vector = (await self.resources.embedder().embed([text]))[0]
        decisions = {name: labels.decide(vector) for name, labels in self.sets.items()}
        ctx.note(scores={name: d.scores for name, d in decisions.items()})
        confidences = {name: d.confidence for name, d in decisions.items()}
        return {**{name: d.label for name, d in decisions.items()},
                "confidence": min(confidences.values()), "confidences": confidences,
                "engine": "embedding", "tier": None, "cost_usd": 0.0}

    async def _ask(self, ctx: StageContext, text: str) -> tuple[TierOutcome, Verdict | None]:
        """The pyramid's answer and its reading; an unreadable answer tries the next tier."""
        readings: list[Verdict] = []

        def accept(completion: Completion) -> str | None:
            reading = self.prompt.read(completion.text)
            if isinstance(reading, str):
                return reading
            readings.append(reading)
            return None

        gate = self.budgets.gate(ctx.render) if self.budgets is not None else None
        outcome = await self.pyramid.call(self.prompt.messages(text), ctx.remaining,
                                          ctx.traceparent(), params=self._params,
                                          accept=accept, gate=gate)
        return outcome, readings[-1] if readings else None

    def _params(self, tier: ModelTier) -> Mapping[str, Any]:
        if supports_schema(tier.model):
            return {"response_format": schema_format("classification", self.prompt.schema)}
        return {}


def _llm_output(reading: Verdict, outcome: TierOutcome, completion: Completion,
                attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {**reading.labels, "confidence": reading.confidence,
            "confidences": dict.fromkeys(reading.labels, reading.confidence),
            "engine": "llm", "tier": outcome.tier, "cost_usd": completion.cost_usd,
            "attempts": attempts}


def _prototypes(config: ClassifyConfig, examples: Mapping[str, Mapping[str, list[str]]]
                ) -> dict[str, dict[str, list[str]]]:
    """Per set and label: the description first (when given), then every example."""
    return {name: {label: [*([spec.description] if spec.description else []),
                           *spec.examples, *examples.get(name, {}).get(label, [])]
                   for label, spec in labels.items()}
            for name, labels in config.labels.items()}


def _require_prototypes(texts: Mapping[str, Mapping[str, list[str]]]) -> None:
    for name, labels in texts.items():
        for label, items in labels.items():
            if not items:
                raise SetupError(f"label {label!r} has no description and no examples: the "
                                 "embedding engine has nothing to compare with",
                                 ("labels", name, label))


def _read_examples(base_dir: Path, config: ClassifyConfig) -> dict[str, dict[str, list[str]]]:
    """The examples file: per set and label, its texts. Every line is checked."""
    found: dict[str, dict[str, list[str]]] = {name: {} for name in config.labels}
    if config.examples is None:
        return found
    path = base_dir / config.examples
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SetupError(f"cannot read the examples file {path}: {exc.strerror}",
                         ("examples",)) from None
    for number, line in enumerate(lines, 1):
        if line.strip():
            _add_example(found, config, f"{path}:{number}", line)
    return found


def _add_example(found: dict[str, dict[str, list[str]]], config: ClassifyConfig, where: str,
                 line: str) -> None:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise SetupError(f"{where}: not JSON ({exc})", ("examples",)) from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise SetupError(f"{where}: expected an object with a `text` string", ("examples",))
    for name, labels in config.labels.items():
        label = record.get(name)
        if label is None:
            continue
        if label not in labels:
            raise SetupError(f"{where}: {name} {label!r} is not one of "
                             f"{', '.join(labels)}", ("examples",))
        found[name].setdefault(label, []).append(record["text"])
