"""Shared fixtures: a registry of the built-in stage types plus one test stage that names
models and resources, so the compiler's name checks can be exercised."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from pydantic import Field

from engine.registry import Registry
from engine.spec.types import ModelRefStr, ResourceRefStr
from engine.stages.base import Stage, StageConfig
from engine.stages.fallback import FallbackStage
from engine.stages.route import RouteStage
from engine.stages.template import TemplateStage
from engine.template import TemplateStr

pytest_plugins = ["redis_server", "resources_pool", "webhook_receiver"]  # a throwaway
# redis-server; closing resources; a local webhook receiver


# A shell that starts pytest in the background (`pytest &` without job control) starts it
# with SIGINT ignored, and children inherit an ignored signal: the tests that press Ctrl-C
# on `engine run` and `engine stub-provider` would then wait for an exit that never comes.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class LlmConfig(StageConfig):
    model: ModelRefStr
    fallbacks: list[ModelRefStr] = Field(default_factory=list)
    store: ResourceRefStr | None = None
    prompt: TemplateStr | None = None


class LlmStage(Stage[LlmConfig]):
    """Names a model (and maybe a resource); never called over the network in these tests."""

    Config = LlmConfig

    async def run(self, ctx: Any) -> Any:
        return ctx.render(self.config.prompt)


@pytest.fixture(autouse=True, scope="session")
def _run_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`engine run` records every run in its store: here, a throwaway folder, not ./runs."""
    import os

    os.environ["ENGINE_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.of(
        {"template": TemplateStage, "route": RouteStage, "fallback": FallbackStage,
         "llm": LlmStage}
    )
