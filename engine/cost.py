"""What a pipeline will cost before it is launched: `engine estimate`'s numbers, defined once.

Pure computation over a compiled pipeline: no model is called, nothing is rendered. The only
outside input is a price lookup (litellm's cost map, passed in so tests need no litellm).

How one model call is estimated, and why:

- **input tokens** = the *static* text of its messages (a template's literal text, without its
  `{{ }}` / `{% %}` markup), counted with the tier's tokenizer — tiktoken's encoding for the
  model, or `cl100k_base` standing in when tiktoken does not know it (flagged) — plus chat
  framing (3 tokens a message and 3 to prime the reply, as OpenAI counts them), plus
  `input_tokens` assumed for the rendered variables: before launch nobody knows how long a
  ticket or a retrieved passage will be, so that part is the user's assumption, stated.
- **output tokens** = `output_tokens` for an answer (generate, a validate re-ask); a
  classification answers a small JSON object, counted in its longest form. A tier's
  `max_tokens` (or `max_completion_tokens`) param is shown as the upper bound.
- **price**: the tier's `price` (USD per 1M tokens), else litellm's cost map; `local/` models
  are free; a model with no known price counts $0 and is flagged `no price`.
- **calls per request**: 1 for generate and `llm` classify; `llm_share` for a `cascade`
  classify (the local embeddings decide the rest); `reask_rate` for a validate stage's
  re-asks (one re-ask per failing answer); times (1 - `cache_hit_rate`) for every stage
  downstream of a cache stage, since a hit ends the run. Route branches are assumed taken,
  so a branchy pipeline's estimate is an upper bound.

Per tier, the cost is "if this tier answered every call of the stages that list it"; the
`first tiers` scenario has each stage answered by its pyramid's first tier — the expected
case while nothing fails. A day is `requests_per_day` requests, a month 30 days.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import networkx as nx
from jinja2 import nodes

from engine.guard.tokens import encoding_for
from engine.providers.client import is_local
from engine.providers.structured import instruction
from engine.stages.classify import ClassifyStage
from engine.stages.generate import GenerateStage
from engine.stages.validate import ValidateStage

if TYPE_CHECKING:
    from engine.compile import CompiledPipeline
    from engine.spec.models import ModelTier
    from engine.stages.base import Stage

__all__ = [
    "DAYS_PER_MONTH",
    "Assumptions",
    "Call",
    "Estimate",
    "Rate",
    "RateLookup",
    "Rewrite",
    "Scenario",
    "count_tokens",
    "estimate",
    "rate",
    "rewrite",
    "static_text",
]

DAYS_PER_MONTH = 30
TOKENS_PER_MESSAGE = 3
"""OpenAI's chat framing: each message costs 3 tokens beyond its content, and 3 prime the
reply (the tiktoken cookbook's count for gpt-3.5/4-class models)."""
REPLY_PRIMING = 3
REASK_FEEDBACK_TOKENS = 40
"""A validate re-ask adds the failing answer and a user message listing its errors: the
errors are unknown before launch; 40 tokens is two or three short schema errors."""
KNOWN_TYPES = frozenset({"generate", "classify", "validate", "guard", "cache", "route",
                         "retrieve", "fallback", "template"})
"""Built-in stage types: the first three are estimated, the others call no hosted model.
Any other type (a plugin's) is listed as not estimated."""

RateLookup = Callable[[str], tuple[float, float]]
"""A model string → USD per input and per output token (litellm's cost map; 0, 0 unknown)."""


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What cannot be known before launch; each default is documented in `engine estimate`."""

    requests_per_day: int = 10_000
    cache_hit_rate: float = 0.0
    input_tokens: int = 200
    output_tokens: int = 250
    llm_share: float = 0.3
    reask_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per token; `source` is price (the YAML), litellm, local or `no price`."""

    input: float
    output: float
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"input_per_1m": self.input * 1e6, "output_per_1m": self.output * 1e6,
                "source": self.source}


@dataclass(frozen=True, slots=True)
class Call:
    """One model call a stage may make, priced at one tier of its pyramid."""

    stage: str
    kind: str
    tier: str
    model: str
    encoding: str
    exact: bool
    """False: tiktoken does not know the model and `encoding` stands in."""
    first: bool
    """The stage's first tier: the one that answers while nothing fails."""
    prompt_tokens: int
    input_tokens: int
    output_tokens: int
    max_output_tokens: int | None
    share: float
    """Calls per request before the cache (cascade share, re-ask rate, else 1)."""
    cache_factor: float
    """1 - cache hit rate downstream of a cache stage, else 1."""
    rate: Rate

    @property
    def cost_per_call(self) -> float:
        return self.input_tokens * self.rate.input + self.output_tokens * self.rate.output

    @property
    def max_cost_per_call(self) -> float:
        """The cost when the answer runs to `max_tokens` (the estimate, without one)."""
        out = self.max_output_tokens or self.output_tokens
        return self.input_tokens * self.rate.input + out * self.rate.output

    @property
    def calls_per_request(self) -> float:
        return self.share * self.cache_factor

    @property
    def cost_per_request(self) -> float:
        return self.cost_per_call * self.calls_per_request

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "kind": self.kind, "tier": self.tier, "model": self.model,
                "encoding": self.encoding, "encoding_exact": self.exact, "first": self.first,
                "prompt_tokens": self.prompt_tokens, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "max_output_tokens": self.max_output_tokens,
                "calls_per_request": self.calls_per_request, "rate": self.rate.to_json(),
                "cost_per_call": self.cost_per_call, "cost_per_request": self.cost_per_request}


@dataclass(frozen=True, slots=True)
class Scenario:
    """A request's cost when the given calls answer it: one tier everywhere, or first tiers."""

    name: str
    model: str | None
    """The tier's model; None for the first-tiers scenario (one model per stage)."""
    rate: Rate | None
    calls: tuple[Call, ...]
    requests_per_day: int

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(call.stage for call in self.calls))

    @property
    def per_request(self) -> float:
        return sum(call.cost_per_request for call in self.calls)

    @property
    def per_request_uncached(self) -> float:
        return sum(call.cost_per_call * call.share for call in self.calls)

    @property
    def max_per_request(self) -> float:
        return sum(call.max_cost_per_call * call.calls_per_request for call in self.calls)

    def per_month(self, per_request: float) -> float:
        return per_request * self.requests_per_day * DAYS_PER_MONTH

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model,
                "rate": self.rate.to_json() if self.rate else None,
                "stages": {call.stage: call.tier for call in self.calls},
                "per_request": self.per_request,
                "per_day": self.per_request * self.requests_per_day,
                "per_month": self.per_month(self.per_request),
                "cache_saving_per_month": self.per_month(
                    self.per_request_uncached - self.per_request),
                "max_per_month": self.per_month(self.max_per_request)}


@dataclass(frozen=True, slots=True)
class Estimate:
    pipeline: str
    assumptions: Assumptions
    calls: list[Call]
    tiers: list[Scenario]
    first_tiers: Scenario
    cached_after: list[str]
    """The cache stages whose hits skip the stages downstream."""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "days_per_month": DAYS_PER_MONTH,
                "assumptions": asdict(self.assumptions),
                "cache_stages": self.cached_after,
                "calls": [call.to_json() for call in self.calls],
                "tiers": [tier.to_json() for tier in self.tiers],
                "first_tiers": self.first_tiers.to_json(), "notes": self.notes}


# -- counting ---------------------------------------------------------------------------------
def static_text(source: str) -> str:
    """A template's literal text — what every rendering sends whatever its variables are.
    Whitespace control (`-%}`) is applied, as when the engine renders it; a loop's literal
    text is counted once. Raises ValueError on a template syntax error."""
    try:
        ast = jinja2.Environment(autoescape=False).parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error: {exc.message} (line {exc.lineno})") from None
    return "".join(node.data for node in ast.find_all(nodes.TemplateData))


def count_tokens(text: str, model: str) -> tuple[int, str, bool]:
    """Tokens of `text` as `model` tokenizes it: (count, encoding name, exact). Offline."""
    encoding, exact = encoding_for(model)
    return len(encoding.encode(text, disallowed_special=())), encoding.name, exact


def rate(tier: ModelTier, lookup: RateLookup) -> Rate:
    """Per-token prices as the runtime charges them (`ModelClient.cost`): `price` first."""
    if tier.price is not None:
        return Rate(tier.price.input / 1e6, tier.price.output / 1e6, "price")
    if is_local(tier.model):
        return Rate(0.0, 0.0, "local")
    per_input, per_output = lookup(tier.model)
    return Rate(per_input, per_output, "litellm" if per_input or per_output else "no price")


def _max_output(tier: ModelTier) -> int | None:
    value = tier.params.get("max_tokens", tier.params.get("max_completion_tokens"))
    return value if isinstance(value, int) else None


# -- the calls a stage makes -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Shape:
    """A stage's model call before a tier is chosen: its static texts, variable tokens,
    output tokens (None: counted from `answer`) and how often it happens."""

    kind: str
    texts: tuple[str, ...]
    messages: int
    variable_tokens: int
    share: float
    output_tokens: int | None = None
    answer: str = ""


def _generate_texts(stage: GenerateStage) -> list[str]:
    """The static text of each message the stage sends, in `GenerateStage.messages` order."""
    config = stage.config
    texts = [static_text(config.system.source)] if config.system is not None else []
    if stage.schema is not None:
        texts.append(instruction(stage.schema.schema))
    if stage.prompt is not None:
        texts.append(static_text(stage.prompt.source))
    texts += [static_text(message.content.source) for message in config.messages or ()]
    return texts


def _generate_shape(stage: GenerateStage, assume: Assumptions) -> _Shape:
    texts = _generate_texts(stage)
    return _Shape("generate", tuple(texts), len(texts), assume.input_tokens, 1.0,
                  assume.output_tokens)


def _reask_shape(stage: ValidateStage, assume: Assumptions) -> _Shape:
    """A re-ask resends the generate stage's messages, the failing answer and the errors."""
    base = _generate_shape(stage.generate, assume)
    return _Shape("validate re-ask", base.texts, base.messages + 2,
                  assume.input_tokens + assume.output_tokens + REASK_FEEDBACK_TOKENS,
                  assume.reask_rate, assume.output_tokens)


def _classify_shape(stage: ClassifyStage, assume: Assumptions) -> _Shape:
    """The label prompt is all static; the text classified is the variable part; the answer
    is the JSON object with each set's longest label."""
    config = stage.config
    answer = {name: max(labels, key=len) for name, labels in config.labels.items()}
    share = assume.llm_share if config.engine == "cascade" else 1.0
    return _Shape(f"{config.engine} classify",
                  (stage.prompt.system, static_text(config.text.source)), 2,
                  assume.input_tokens, share, None,
                  json.dumps({**answer, "confidence": 0.87}))


def _shapes(stage: Stage[Any], assume: Assumptions, notes: list[str]
            ) -> tuple[_Shape, list[tuple[str, ModelTier]]] | None:
    """The call a stage makes and its tiers, or None (a note says why, when it matters)."""
    if isinstance(stage, GenerateStage):
        return _generate_shape(stage, assume), stage.pyramid.tiers
    if isinstance(stage, ClassifyStage) and stage.config.engine != "embedding":
        return _classify_shape(stage, assume), stage.pyramid.tiers
    if isinstance(stage, ValidateStage):
        return _validate_shape(stage, assume, notes)
    return None


def _validate_shape(stage: ValidateStage, assume: Assumptions, notes: list[str]
                    ) -> tuple[_Shape, list[tuple[str, ModelTier]]] | None:
    if stage.config.harm is not None and stage.config.harm.model is not None:
        notes.append(f"{stage.name}: moderation calls (harm.model) are not estimated")
    if not stage.config.reask:
        return None
    if assume.reask_rate <= 0:
        notes.append(f"{stage.name}: re-asks not estimated; --reask-rate R prices them "
                     "(R: the share of answers that fail validation)")
        return None
    return _reask_shape(stage, assume), stage.generate.pyramid.tiers


def _price(shape: _Shape, tier: ModelTier, cache_factor: float, lookup: RateLookup,
           stage: str, tier_name: str, first: bool) -> Call:
    encoding, exact = encoding_for(tier.model)
    prompt = sum(len(encoding.encode(text, disallowed_special=())) for text in shape.texts)
    framing = shape.messages * TOKENS_PER_MESSAGE + REPLY_PRIMING
    output = (shape.output_tokens if shape.output_tokens is not None
              else len(encoding.encode(shape.answer, disallowed_special=())))
    maximum = _max_output(tier)
    return Call(stage, shape.kind, tier_name, tier.model, encoding.name, exact, first, prompt,
                prompt + framing + shape.variable_tokens, output, maximum, shape.share,
                cache_factor, rate(tier, lookup))


# -- the estimate -----------------------------------------------------------------------------
def _cache_stages(pipeline: CompiledPipeline) -> list[str]:
    return [name for name, stage in pipeline.stages.items() if stage.type == "cache"]


def _downstream(pipeline: CompiledPipeline, caches: Sequence[str]) -> set[str]:
    return {name for cache in caches for name in nx.descendants(pipeline.graph, cache)}


def _calls(pipeline: CompiledPipeline, assume: Assumptions, lookup: RateLookup,
           notes: list[str]) -> Iterator[Call]:
    cached = _downstream(pipeline, _cache_stages(pipeline))
    for name, compiled in pipeline.stages.items():
        found = _shapes(compiled.stage, assume, notes)
        if found is None:
            if compiled.type not in KNOWN_TYPES:
                notes.append(f"{name}: stage type {compiled.type!r} is not estimated")
            continue
        shape, tiers = found
        factor = 1 - assume.cache_hit_rate if name in cached else 1.0
        for position, (tier_name, tier) in enumerate(tiers):
            yield _price(shape, tier, factor, lookup, name, tier_name, position == 0)


def estimate(pipeline: CompiledPipeline, assume: Assumptions, lookup: RateLookup
             ) -> Estimate:
    """Every model call's cost, per tier and for the first tiers (see the module's doc)."""
    notes: list[str] = []
    calls = list(_calls(pipeline, assume, lookup, notes))
    models = pipeline.loaded.spec.models
    tiers = [Scenario(name, tier.model, rate(tier, lookup),
                      tuple(c for c in calls if c.tier == name), assume.requests_per_day)
             for name, tier in models.items() if any(c.tier == name for c in calls)]
    first = Scenario("first tiers", None, None, tuple(c for c in calls if c.first),
                     assume.requests_per_day)
    notes += [f"{s.name}: litellm has no price for {s.model}; counted as $0 (set `price:`)"
              for s in tiers if s.rate is not None and s.rate.source == "no price"]
    return Estimate(pipeline.name, assume, calls, tiers, first, _cache_stages(pipeline), notes)


# -- a prompt rewrite -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rewrite:
    """Two versions of a template: their static tokens and what the difference saves."""

    old: str
    new: str
    old_tokens: int
    new_tokens: int
    tier: str
    encoding: str
    rate: Rate
    calls_per_request: float
    requests_per_day: int

    @property
    def saved_tokens(self) -> int:
        return self.old_tokens - self.new_tokens

    def per_request(self, tokens: int) -> float:
        return tokens * self.rate.input * self.calls_per_request

    def to_json(self) -> dict[str, Any]:
        saved = self.per_request(self.saved_tokens)
        return {"old": self.old, "new": self.new, "old_tokens": self.old_tokens,
                "new_tokens": self.new_tokens, "saved_tokens": self.saved_tokens,
                "tier": self.tier, "encoding": self.encoding, "rate": self.rate.to_json(),
                "calls_per_request": self.calls_per_request, "saved_per_request": saved,
                "saved_per_day": saved * self.requests_per_day,
                "saved_per_month": saved * self.requests_per_day * DAYS_PER_MONTH}


def rewrite(result: Estimate, pipeline: CompiledPipeline, old: Path, new: Path,
            sources: tuple[str, str], lookup: RateLookup) -> Rewrite:
    """Price a rewrite at the first tier of the stage whose prompt file is `old` or `new`
    (its calls per request too), else of the first estimated stage, else of `models:`."""
    call = _matching_call(result, pipeline, (old, new))
    if call is not None:
        tier_name, calls_per_request = call.tier, call.calls_per_request
    else:
        tier_name, calls_per_request = next(iter(pipeline.loaded.spec.models), ""), 1.0
    tier = pipeline.loaded.spec.models.get(tier_name)
    model = tier.model if tier is not None else ""  # no tier at all: cl100k_base
    (old_tokens, encoding, _), (new_tokens, _, _) = (
        count_tokens(static_text(source), model) for source in sources)
    price = rate(tier, lookup) if tier is not None else Rate(0.0, 0.0, "no tier")
    return Rewrite(str(old), str(new), old_tokens, new_tokens, tier_name or "-", encoding,
                   price, calls_per_request, result.assumptions.requests_per_day)


def _matching_call(result: Estimate, pipeline: CompiledPipeline, files: Sequence[Path]
                   ) -> Call | None:
    firsts = [call for call in result.calls if call.first and call.kind == "generate"]
    base = pipeline.loaded.base_dir
    targets = {file.resolve() for file in files}
    for call in firsts:
        stage = pipeline.stages[call.stage].stage
        prompt = getattr(stage.config, "prompt", None)
        if isinstance(prompt, str) and (base / prompt).resolve() in targets:
            return call
    return firsts[0] if firsts else next((c for c in result.calls if c.first), None)
