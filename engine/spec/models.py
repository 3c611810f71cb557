"""The pipeline file format, version 1, as frozen pydantic models.

These models hold the core keys only. A stage's `with:` block stays a plain mapping here:
it is validated by the compiler against that stage type's own `Config`, because the set of
stage types is only known once the registry has been read (plugins included).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from engine.spec.types import Duration, RateStr, StageName, StageNames
from engine.template import ConditionStr, TemplateStr, TemplateValue

__all__ = [
    "Breaker",
    "Defaults",
    "FlagsSpec",
    "InputSpec",
    "ModelTier",
    "PipelineSpec",
    "Price",
    "Resource",
    "Retry",
    "StageSpec",
    "TierLimits",
]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Price(_Spec):
    """USD per one million tokens; overrides litellm's cost map for this tier."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class TierLimits(_Spec):
    """The provider's quota for this model: across every process that shares state (`engine
    run --redis`, `engine serve --redis`, Ray workers), not per process. A call waits for a
    slot and a token at most `max_wait` (and never past its deadline), then the next tier is
    asked."""

    concurrency: int | None = Field(None, ge=1, description="calls in flight at once")
    rate: RateStr | None = Field(None, description="calls started per period, e.g. 500/min")
    max_wait: Duration = Field(10.0, description="the longest wait for a slot or a token")


class ModelTier(_Spec):
    """A named model tier; `model` is any litellm model string (`openai/gpt-4o`, `local/kb`)."""

    model: str = Field(min_length=1)
    timeout: Duration | None = None
    price: Price | None = None
    api_base: str | None = None
    api_key: SecretStr | None = Field(
        None,
        description="e.g. ${OPENAI_API_KEY:-}; an empty key skips the tier (not configured "
        "here), so one file runs with and without hosted providers",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    transport: Literal["litellm", "direct"] = Field(
        "litellm",
        description="litellm (any provider), or direct: a plain HTTP POST to an "
        "OpenAI-compatible endpoint, ~2.9 ms less CPU per call",
    )
    limits: TierLimits | None = None


class Retry(_Spec):
    attempts: int = Field(3, ge=1, le=20)
    backoff: Duration = 1.0
    max_backoff: Duration = 8.0
    jitter: Literal["full", "equal", "none"] = "full"


class Breaker(_Spec):
    """Circuit breaker per model, with resilience4j's sliding-window semantics. The window is
    wide on purpose: with 20 calls a 30 % fault rate opened every breaker within 2 s in
    bench/fallback.py and sent 91 % of answers to the last tier; with 100/50 none opened."""

    window: int = Field(100, ge=1)
    min_calls: int = Field(50, ge=1, description="no failure rate is judged before this many")
    failure_rate: float = Field(0.5, gt=0, le=1)
    cooldown: Duration = 30.0
    half_open_calls: int = Field(3, ge=1)


class Defaults(_Spec):
    timeout: Duration = Field(30.0, description="the whole-request deadline")
    retry: Retry = Field(default_factory=Retry)
    breaker: Breaker = Field(default_factory=Breaker)


class Slo(_Spec):
    """Targets `engine report` checks a pipeline's recorded runs against (exit 1 on a breach).
    Rates are shares of requests in [0, 1]; latencies are durations."""

    latency_p50: Duration | None = None
    latency_p95: Duration | None = None
    latency_p99: Duration | None = None
    error_rate: float | None = Field(None, ge=0, le=1, description="at most")
    timeout_rate: float | None = Field(None, ge=0, le=1, description="at most")
    fallback_rate: float | None = Field(None, ge=0, le=1, description="at most")
    cost_per_request: float | None = Field(None, ge=0, description="USD, at most (mean)")
    cache_hit_rate: float | None = Field(None, ge=0, le=1, description="at least")
    parse_success: float | None = Field(None, ge=0, le=1, description="at least")


class Budget(_Spec):
    """A spending limit: per pipeline or per a scope rendered from the input (a tenant), per
    UTC day or month. Each model call reserves its worst-case cost first and settles the
    real cost after, so concurrent requests cannot overshoot the limit together."""

    scope: TemplateStr = Field(
        "pipeline", validate_default=True,
        description="pipeline, or a template over input, e.g. {{ input.tenant }}")
    period: Literal["day", "month"] = "day"
    limit_usd: float = Field(gt=0)
    alert_at: list[float] = Field(default_factory=lambda: [0.8, 1.0],
                                  description="shares of the limit that alert, once a period")
    on_exceed: Literal["block", "degrade"] = Field(
        "block", description="block: the stage fails (on_error decides); degrade: only tiers "
                             "that cost nothing (local/) are asked")
    store: str = Field("memory", description="memory, or a redis:// URL shared by replicas")


class Alerts(_Spec):
    webhook: str | None = Field(None, description="POSTed a JSON alert; empty: log only")


class FlagsSpec(_Spec):
    """Feature flags for `flag('name')` in templates and conditions, evaluated through the
    OpenFeature SDK: engine's file provider, or any OpenFeature provider class."""

    provider: str = Field(
        "file", description="file: a YAML or JSON flags file, re-read when it changes; or "
        "'package.module:Name' of any OpenFeature provider class (flagd, ...) or of a "
        "function returning a provider (LaunchDarkly's needs its client)")
    path: str | None = Field(
        None, description="file provider: the flags file, relative to the pipeline file")
    refresh: Duration = Field(
        1.0, description="file provider: how often, at most, the file is checked for changes")
    options: dict[str, Any] = Field(
        default_factory=dict, description="provider class or function: its keyword "
        "arguments")
    targeting_key: TemplateStr | None = Field(
        None, description="who the flags are evaluated for (targeting, sticky rollouts), "
        "rendered per record over input and env, e.g. {{ input.user_id }}")
    attributes: dict[str, TemplateStr] = Field(
        default_factory=dict, description="more evaluation context rendered per record, "
        "e.g. {tenant: '{{ input.tenant }}'}")

    @model_validator(mode="after")
    def _provider_settings(self) -> FlagsSpec:
        if self.provider == "file" and self.path is None:
            raise ValueError("the file provider needs `path:` (the flags file)")
        if self.provider == "file" and self.options:
            raise ValueError("`options` are for a provider class; the file provider takes "
                             "`path` and `refresh`")
        if self.provider != "file" and ":" not in self.provider:
            raise ValueError("`provider` is `file` or 'package.module:Name' (a provider "
                             "class or a function returning a provider)")
        return self


class Resource(BaseModel):
    """A shared, long-lived thing (cache, index, store); its settings belong to its type."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(min_length=1)


class InputSpec(_Spec):
    schema_: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        alias="schema",
        description="JSON Schema of one input record",
    )


class StageSpec(_Spec):
    type: str = Field(min_length=1, description="a registered stage type")
    needs: StageNames = Field(default_factory=list)
    if_: ConditionStr | None = Field(None, alias="if")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    timeout: Duration | None = None
    on_error: str = Field(
        "fail", description="fail, continue, or the name of a stage to run instead"
    )


class PipelineSpec(_Spec):
    version: Literal[1]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="lower-case slug")
    description: str = ""
    models: dict[str, ModelTier] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    resources: dict[str, Resource] = Field(default_factory=dict)
    input: InputSpec = Field(default_factory=InputSpec)
    stages: dict[StageName, StageSpec] = Field(min_length=1)
    output: TemplateValue = None
    slo: Slo | None = Field(None, description="targets for `engine report`")
    budgets: list[Budget] = Field(default_factory=list)
    alerts: Alerts = Field(default_factory=Alerts)
    flags: FlagsSpec | None = Field(None, description="feature flags for flag('name')")
