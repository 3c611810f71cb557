"""What `engine serve` was asked to do: one frozen settings object, built from the command line.

It is plain data that round-trips through JSON, because with `--workers N` each uvicorn
worker is a fresh process that rebuilds the app from it (`ENGINE_SERVE_CONFIG`, see
`engine.serve.server`). The per-pipeline settings live in a small YAML file
(`--config`), not in the pipeline spec: how a pipeline is exposed over HTTP — and which
version of it answers — is the operator's choice, not the pipeline author's.

```yaml
pipelines:
  support-triage:
    text: ticket        # the last user message goes here (default: the single required string)
    messages: history   # the whole conversation goes here (default: `messages` if declared)
    reply: reply        # the output field that is the assistant's answer (default: reply, text)
    shadow: {pipeline: support-triage-v2, share: 0.1}     # see engine.serve.shadow
    canary:                                                # see engine.serve.canary
      candidate: support-triage-v2
      file: ../pipelines-next/support_triage_v2.yaml       # optional: loaded, not served
      steps: [0.05, 0.5, 1.0]
      step_after: 200
      min_sample: 50
      bounds: {error_rate: 0.02, p95_ratio: 1.2, p95_slack: 50ms, cost_ratio: 1.3}
```

A candidate is named by its pipeline name: one of the files served, or one loaded only for
this (`file:`, relative to the config file), which clients cannot call directly.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.resources.limits import RateStr
from engine.spec.types import Duration

__all__ = ["CanaryBounds", "CanarySettings", "ConfigError", "PipelineSettings", "ServeConfig",
           "ShadowSettings", "load_settings"]

ENV_VAR = "ENGINE_SERVE_CONFIG"
"""Where the parent process leaves the settings for its uvicorn workers (JSON)."""


class ConfigError(Exception):
    """A serve option or file is wrong: one line for the user, exit code 2."""


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShadowSettings(_Settings):
    """A candidate run on a share of the answered requests, after the response."""

    pipeline: str = Field(description="the candidate's pipeline name")
    file: Path | None = Field(None, description="its file, when it is not served itself")
    share: float = Field(0.1, gt=0.0, le=1.0, description="the share of requests shadowed")
    max_inflight: int = Field(8, ge=1, description="shadow runs at once; more are dropped")
    window: int = Field(500, ge=1, description="recent pairs the live comparison keeps")
    fields: tuple[str, ...] = Field((), description="output fields compared (default: all)")


class CanaryBounds(_Settings):
    """How much worse than the stable version the candidate may be before it is rolled back."""

    error_rate: float = Field(0.02, ge=0.0, le=1.0,
                              description="allowed error rate above the stable one's")
    p95_ratio: float = Field(1.2, ge=1.0, description="allowed p95 latency, times stable's")
    p95_slack: Duration = Field(0.05, ge=0.0, description="latency differences below this "
                                "never count: at millisecond scale a ratio is noise")
    cost_ratio: float = Field(1.3, ge=1.0, description="allowed mean cost, times stable's")


class CanarySettings(_Settings):
    """A candidate taking a stepped share of live traffic while it stays within bounds."""

    candidate: str = Field(description="the candidate's pipeline name")
    file: Path | None = Field(None, description="its file, when it is not served itself")
    steps: tuple[float, ...] = Field((0.05, 0.5, 1.0), min_length=1,
                                     description="the candidate's traffic shares, in order")
    step_after: int = Field(200, ge=1, description="candidate requests judged per step")
    min_sample: int = Field(50, ge=1, description="requests of each version before judging")
    bounds: CanaryBounds = Field(default_factory=CanaryBounds)
    sticky: Literal["user"] = Field("user", description="who keeps one version: the user "
                                    "(the API key's; without keys, the client address)")

    @model_validator(mode="after")
    def _ordered(self) -> CanarySettings:
        steps = self.steps
        if any(not 0.0 < s <= 1.0 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("steps: shares in (0, 1], each larger than the one before")
        if self.min_sample > self.step_after:
            raise ValueError("min_sample cannot exceed step_after: a step is judged on "
                             "step_after requests")
        return self


class PipelineSettings(_Settings):
    """How one pipeline is served: its chat mapping, and a shadow or canary candidate."""

    text: str | None = Field(None, description="the input property for the last user message")
    messages: str | None = Field(None, description="the input property for the conversation")
    reply: str | None = Field(None, description="the output field holding the answer")
    shadow: ShadowSettings | None = None
    canary: CanarySettings | None = None

    def candidates(self) -> list[tuple[str, str, Path | None]]:
        """(config key, candidate name, its file) for the shadow and the canary."""
        found = []
        if self.shadow is not None:
            found.append(("shadow.pipeline", self.shadow.pipeline, self.shadow.file))
        if self.canary is not None:
            found.append(("canary.candidate", self.canary.candidate, self.canary.file))
        return found


class ServeConfig(BaseModel):
    """Every `engine serve` option (see `engine serve --help` for each one's meaning)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    redis: str | None = None
    keys: Path | None = None
    no_auth: bool = False
    rate_per_key: RateStr | None = Field("600/min", validate_default=True)
    rate_per_ip: RateStr | None = Field("1200/min", validate_default=True)
    trusted_proxies: tuple[str, ...] = ()
    max_body: int = 1_000_000
    max_inflight: int = 256
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    keep_alive: int = 5
    tls_cert: Path | None = None
    tls_key: Path | None = None
    pipelines: dict[str, PipelineSettings] = Field(default_factory=dict)
    store: Path | None = None
    audit_dir: Path | None = None
    audit_content: bool = False
    opt_out: Path | None = None

    def candidate_files(self) -> dict[Path, PipelineSettings]:
        """The `file:`s of shadow and canary candidates that are not served themselves, each
        with the settings of the pipeline naming it: its chat mapping fits the candidate."""
        served = {path.resolve() for path in self.files}
        found = {file.resolve(): settings for settings in self.pipelines.values()
                 for _, _, file in settings.candidates() if file is not None}
        return {path: found[path] for path in sorted(set(found) - served)}

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted proxies as networks (an address is a /32 or /128)."""
        return tuple(ipaddress.ip_network(net, strict=False) for net in self.trusted_proxies)

    def check(self) -> None:
        """Reject combinations uvicorn would only trip on later, with the option to fix."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        for option, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                             ("--keys", self.keys)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{option} {path}: no such file")
        try:
            self.networks()
        except ValueError as exc:
            raise ConfigError(f"--trusted-proxy: {exc}") from None
        if self.redis is not None and not self.redis.startswith(_REDIS_SCHEMES):
            raise ConfigError(f"--redis {self.redis!r}: expected a URL such as "
                              "redis://127.0.0.1:6379/0 (or rediss://, unix://)")
        if self.opt_out is not None and not self.opt_out.parent.is_dir():
            # a mistyped path would silently process users who opted out
            raise ConfigError(f"--opt-out {self.opt_out}: its folder does not exist")


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def load_settings(path: Path) -> dict[str, PipelineSettings]:
    """The `--config` file's `pipelines:` mapping, checked (unknown keys are errors); a
    candidate's `file:` is made relative to the config file's folder."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from None
    if (not isinstance(data, dict) or set(data) - {"pipelines"}
            or not isinstance(data.get("pipelines") or {}, dict)):
        raise ConfigError(f"--config {path}: expected one key, `pipelines:` (name → settings)")
    settings = {}
    for name, value in (data.get("pipelines") or {}).items():
        try:
            settings[str(name)] = _anchored(PipelineSettings.model_validate(value), path.parent)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *problem["loc"]))
            message = problem["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--config {path}: pipelines.{where}: {message}") from None
    for name, entry in settings.items():
        for key, _, file in entry.candidates():
            if file is not None and not file.is_file():
                raise ConfigError(f"--config {path}: pipelines.{name}.{key.split('.')[0]}.file:"
                                  f" {file}: no such file")
    return settings


def _anchored(settings: PipelineSettings, folder: Path) -> PipelineSettings:
    """`settings` with its candidates' files relative to `folder` (the config file's)."""
    update: dict[str, BaseModel] = {}
    for key in ("shadow", "canary"):
        part = getattr(settings, key)
        if part is not None and part.file is not None:
            update[key] = part.model_copy(update={"file": folder / part.file})
    return settings.model_copy(update=update)
