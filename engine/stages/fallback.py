"""`fallback`: end the run with a fixed (templated) response and mark it handed off."""

from __future__ import annotations

from pydantic import Field

from engine.runtime.context import StageContext
from engine.stages.base import Finish, Stage, StageConfig
from engine.template import TemplateValue


class FallbackConfig(StageConfig):
    response: TemplateValue = Field(description="the run's output: a template or a mapping")


class FallbackStage(Stage[FallbackConfig]):
    """The non-AI path: a human hand-off, a queue, an apology that never fails."""

    Config = FallbackConfig
    terminal = True

    async def run(self, ctx: StageContext) -> Finish:
        return Finish(ctx.render(self.config.response), handed_off=True)
