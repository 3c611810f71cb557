"""Configuration of the chaos stub provider (scripted replies, fault injection) and the
record it keeps of each request.

A `StubConfig` is a `FaultProfile` (the global behaviour) plus reply rules and per-model
profiles. A per-model profile overrides only the fields it sets, so `models: {smart:
{failure_rate: 1, faults: [500]}}` keeps the global latency. YAML form:

    seed: 7
    latency: 20ms..200ms          # or 50ms, or {min: 20ms, max: 200ms}
    rules:
      - {match: "(?i)refund", reply: "Refunds take 5 days. ({model})"}
    models:
      smart: {failure_rate: 1.0, faults: [500]}
      cheap: {failure_rate: 0.3, faults: {429: 1}, retry_after: 2}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.spec.types import Duration

__all__ = [
    "OUTCOMES",
    "FaultKind",
    "FaultProfile",
    "LatencyRange",
    "Outcome",
    "RecordedRequest",
    "Rule",
    "StubConfig",
    "content_text",
    "parse_faults",
    "words",
]

FaultKind = Literal["429", "500", "503", "hang", "malformed", "cut", "cut_before_first_token"]
Outcome = Literal["ok", FaultKind]
_ONLY_500: dict[FaultKind, float] = {"500": 1.0}
OUTCOMES: tuple[str, ...] = get_args(Outcome)


def parse_faults(value: Any) -> Any:
    """`"429,500"`, `["429", 500]` (equal weights) or `{429: 3, 500: 1}` → {kind: weight}.

    `"429:3,500:1"` gives weights in the string form used by the CLI."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        weights: dict[str, Any] = {}
        for item in value:
            kind, _, weight = str(item).partition(":")
            weights[kind.strip()] = float(weight) if weight else 1.0
        return weights
    if isinstance(value, dict):
        return {str(kind): weight for kind, weight in value.items()}
    return value


class LatencyRange(BaseModel):
    """Latency drawn uniformly from [min, max] with the stub's seeded RNG."""

    model_config = ConfigDict(extra="forbid")

    min: Duration
    max: Duration

    @model_validator(mode="after")
    def _ordered(self) -> LatencyRange:
        if self.min > self.max:
            raise ValueError("latency min must not exceed max")
        return self


class FaultProfile(BaseModel):
    """How the stub behaves for a model: latency, then with `failure_rate` a fault drawn
    from `faults` (kind → weight); otherwise the scripted reply."""

    model_config = ConfigDict(extra="forbid")

    latency: Duration | LatencyRange = 0.0
    failure_rate: float = Field(0.0, ge=0.0, le=1.0)
    faults: dict[FaultKind, float] = Field(default_factory=lambda: _ONLY_500.copy())
    retry_after: float = Field(1.0, ge=0.0, description="Retry-After seconds on a 429.")
    cut_after: int = Field(2, ge=0, description="Content chunks sent before a `cut`.")
    chunk_delay: Duration = Field(0.0, description="Pause between streamed chunks.")

    @field_validator("latency", mode="before")
    @classmethod
    def _range_string(cls, value: Any) -> Any:
        if isinstance(value, str) and ".." in value:
            low, _, high = value.partition("..")
            return {"min": low.strip(), "max": high.strip()}
        return value

    @field_validator("faults", mode="before")
    @classmethod
    def _faults(cls, value: Any) -> Any:
        return parse_faults(value)

    @field_validator("faults")
    @classmethod
    def _weights(cls, value: dict[FaultKind, float]) -> dict[FaultKind, float]:
        if any(weight < 0 for weight in value.values()):
            raise ValueError("fault weights must be >= 0")
        return value

    def describe(self) -> str:
        if isinstance(self.latency, LatencyRange):
            latency = f"{self.latency.min * 1000:g}..{self.latency.max * 1000:g}ms"
        else:
            latency = f"{self.latency * 1000:g}ms"
        text = f"latency {latency}"
        if self.failure_rate:
            mix = ", ".join(f"{kind}:{weight:g}" for kind, weight in self.faults.items())
            text += f", failure rate {self.failure_rate:g} ({mix})"
        return text


class Rule(BaseModel):
    """`match` (a regex, searched) → `reply`. `{model}` in the reply becomes the requested
    model name and `{message}` the last user message."""

    model_config = ConfigDict(extra="forbid")

    match: str
    reply: str
    on: Literal["last_user", "any"] = Field(
        "last_user", description="Search the last user message, or each message."
    )
    model: str | None = Field(None, description="Only for this requested model name.")

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from exc
        return value


class StubConfig(FaultProfile):
    """The whole stub: global fault profile, reply rules and per-model overrides."""

    seed: int | None = None
    rules: list[Rule] = Field(default_factory=list)
    echo_prefix: str = "echo: "
    models: dict[str, FaultProfile] = Field(default_factory=dict)

    def profile_for(self, model: str) -> FaultProfile:
        """The global profile with the fields the model's own profile sets replaced."""
        base = FaultProfile.model_validate(
            {name: getattr(self, name) for name in FaultProfile.model_fields}
        )
        override = self.models.get(model)
        if override is None:
            return base
        return base.model_copy(
            update={name: getattr(override, name) for name in override.model_fields_set}
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> StubConfig:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return cls.model_validate(data)


@dataclass
class RecordedRequest:
    """One request the stub received. `headers` keys are lower-cased."""

    time: float
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    headers: dict[str, str]
    outcome: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


def words(text: str) -> int:
    """The stub's token count: whitespace-separated words."""
    return len(text.split())


def content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{type: text, text: ...}, ...]
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
