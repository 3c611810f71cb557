"""What `engine serve` was asked to do: one frozen settings object, built from the command line.

It is plain data that round-trips through JSON, because with `--workers N` each uvicorn
worker is a fresh process that rebuilds the app from it (`ENGINE_SERVE_CONFIG`, see
`engine.serve.server`). The per-pipeline chat mapping lives in a small YAML file
(`--config`), not in the pipeline spec: how a pipeline is exposed over HTTP is the
operator's choice, not the pipeline author's.

```yaml
pipelines:
  support-triage:
    text: ticket        # the last user message goes here (default: the single required string)
    messages: history   # the whole conversation goes here (default: `messages` if declared)
    reply: reply        # the output field that is the assistant's answer (default: reply, text)
```
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.resources.limits import RateStr

__all__ = ["ChatMapping", "ConfigError", "ServeConfig", "load_mappings"]

ENV_VAR = "ENGINE_SERVE_CONFIG"
"""Where the parent process leaves the settings for its uvicorn workers (JSON)."""


class ConfigError(Exception):
    """A serve option or file is wrong: one line for the user, exit code 2."""


class ChatMapping(BaseModel):
    """How `/v1/chat/completions` maps onto one pipeline's input and output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str | None = Field(None, description="the input property for the last user message")
    messages: str | None = Field(None, description="the input property for the conversation")
    reply: str | None = Field(None, description="the output field holding the answer")


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
    mappings: dict[str, ChatMapping] = Field(default_factory=dict)
    store: Path | None = None
    audit_dir: Path | None = None
    audit_content: bool = False
    opt_out: Path | None = None

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


def load_mappings(path: Path) -> dict[str, ChatMapping]:
    """The `--config` file's `pipelines:` mapping, checked (unknown keys are errors)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"pipelines"}:
        raise ConfigError(f"--config {path}: expected one key, `pipelines:` (name → mapping)")
    mappings = {}
    for name, value in (data.get("pipelines") or {}).items():
        try:
            mappings[str(name)] = ChatMapping.model_validate(value)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *problem["loc"]))
            raise ConfigError(f"--config {path}: pipelines.{where}: {problem['msg']}") from None
    return mappings
