"""Sample stages and helpers for testing pipelines — yours and engine's own.

Testing how a pipeline is *wired* (what runs, what is skipped, what a failure or a timeout
does to the record) should not need a model, a network or a mock. These stages behave in one
deterministic way each, so a test can build any graph shape from a few lines of YAML:

- `sleep`  waits `seconds`, then returns its rendered `output` (a stand-in for a model call);
- `fail`   raises `SampleFailure` with its rendered `message` (optionally `after` a delay);
- `hang`   never returns, so only a timeout or a cancellation ends it;
- `finish` ends the run early with `Finish(output)` (a cache hit, a block, a hand-off).

`compile_text` compiles a YAML string against the built-in stage types plus these samples
(and any extra classes you pass), without reading entry points: the registry is explicit,
so a test cannot pass or fail because of which plugins happen to be installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from engine.compile import CompiledPipeline, compile_pipeline
from engine.registry import Registry
from engine.results import Outcome, RunResult
from engine.runtime.context import StageContext
from engine.spec import parse_spec
from engine.spec.types import Duration
from engine.stages.base import Finish, Stage, StageConfig
from engine.stages.fallback import FallbackStage
from engine.stages.route import RouteStage
from engine.stages.template import TemplateStage
from engine.template import TemplateStr, TemplateValue

__all__ = [
    "FailConfig",
    "FailStage",
    "FinishConfig",
    "FinishStage",
    "HangConfig",
    "HangStage",
    "SampleFailure",
    "SleepConfig",
    "SleepStage",
    "compile_text",
    "outcomes",
    "sample_registry",
]


class SampleFailure(RuntimeError):
    """What `fail` raises: its own type, so a test can tell it from a real bug."""


class SleepConfig(StageConfig):
    seconds: Duration = Field(0.0, description="how long to wait: 200ms, 1s, or seconds")
    output: TemplateValue = Field(None, description="the stage's output, rendered per record")


class SleepStage(Stage[SleepConfig]):
    """Waits, then returns `output` — the shape of a model call without the model."""

    Config = SleepConfig

    async def run(self, ctx: StageContext) -> Any:
        await asyncio.sleep(self.config.seconds)
        return ctx.render(self.config.output)


class FailConfig(StageConfig):
    message: TemplateStr = Field("failed on purpose", validate_default=True,
                                 description="the error message")
    after: Duration = Field(0.0, description="wait this long first (to fail mid-run)")


class FailStage(Stage[FailConfig]):
    """Raises `SampleFailure`, to exercise `on_error` and error records."""

    Config = FailConfig

    async def run(self, ctx: StageContext) -> Any:
        if self.config.after:
            await asyncio.sleep(self.config.after)
        raise SampleFailure(str(ctx.render(self.config.message)))


class HangConfig(StageConfig):
    """No settings: a hang is a hang."""


class HangStage(Stage[HangConfig]):
    """Never returns: only a stage timeout, the request deadline or a cancellation end it."""

    Config = HangConfig

    async def run(self, ctx: StageContext) -> Any:
        await asyncio.get_running_loop().create_future()  # nobody ever resolves it


class FinishConfig(StageConfig):
    output: TemplateValue = Field(None, description="the run's output, rendered per record")
    handed_off: bool = Field(False, description="mark the record as handed off to a human")


class FinishStage(Stage[FinishConfig]):
    """Ends the run early, like a cache hit or a blocked input."""

    Config = FinishConfig
    terminal = True

    async def run(self, ctx: StageContext) -> Finish:
        return Finish(ctx.render(self.config.output), handed_off=self.config.handed_off)


_SAMPLES: Mapping[str, type[Stage[Any]]] = {
    "sleep": SleepStage,
    "fail": FailStage,
    "hang": HangStage,
    "finish": FinishStage,
}
"""The sample stage types, by the `type:` name `sample_registry` gives them."""

_BUILTINS: Mapping[str, type[Stage[Any]]] = {
    "template": TemplateStage,
    "route": RouteStage,
    "fallback": FallbackStage,
}


def sample_registry(stages: Mapping[str, type[Stage[Any]]] | None = None) -> Registry:
    """Built-ins + samples + `stages` (which may override either, by name)."""
    classes: dict[str, type[Stage[BaseModel]]] = {**_BUILTINS, **_SAMPLES, **(stages or {})}
    return Registry.of(classes)


def compile_text(
    yaml_text: str,
    stages: Mapping[str, type[Stage[Any]]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> CompiledPipeline:
    """Compile a pipeline written inline in a test; raises `SpecError` like a file would.

    `env` defaults to empty rather than `os.environ`, so `${VAR}` in a test means what the
    test says, not what the machine running it happens to have.
    """
    env = {} if env is None else env
    return compile_pipeline(parse_spec(yaml_text, env=env), sample_registry(stages), env)


def outcomes(result: RunResult) -> dict[str, Outcome]:
    """Stage name → outcome from a run's trace: the shape of a run, in one comparable dict."""
    return {event.stage: event.outcome for event in result.events}
