"""`template`: render data from the record and upstream outputs — the glue stage."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engine.runtime.context import StageContext
from engine.stages.base import Stage, StageConfig
from engine.template import TemplateValue


class TemplateConfig(StageConfig):
    output: TemplateValue = Field(
        description="a template string, or a mapping/list whose strings are templates"
    )


class TemplateStage(Stage[TemplateConfig]):
    """Renders `with.output` into the stage's output."""

    Config = TemplateConfig

    async def run(self, ctx: StageContext) -> Any:
        return ctx.render(self.config.output)
