"""The stage contract — the one place it is written down.

A stage type is a class that subclasses `Stage` and has:

- `Config`: a pydantic model of its `with:` block. Declare fields with the types of
  `engine.template` (`TemplateStr`, `ConditionStr`, `TemplateValue`) for anything rendered
  per record, and `ModelRefStr` / `ResourceRefStr` for names of the pipeline's `models:` and
  `resources:`. The compiler finds those values in the validated config and checks them: a
  template may only read stages upstream, a name must exist. The stage never re-checks.
- `__init__(self, setup)`: called once when the pipeline compiles, with a `Setup` (stage name,
  validated config, the pipeline spec, the pipeline's folder). Keep it cheap and free of I/O;
  long-lived things (clients, caches) are resources, not stage attributes built here.
- `async def run(self, ctx) -> Any`: called once per record. Read upstream outputs through
  `ctx.render(...)` or `ctx.stages`. Return the stage's output (JSON-able data), or
  `Finish(output)` to end the run early with that output (a cache hit, a blocked input, a
  hand-off to a human), or `Branch(output, to=...)` to select which downstream branches run
  (the others are skipped). Raise to fail; the stage's `on_error` decides what follows. Never
  print: report through `ctx.note(...)`, which lands in the run trace.

Optional class hooks: `branches()` lists the stages a `Branch` may select (the compiler checks
they depend on this stage); `check()` yields warnings about legal but suspicious configs;
`terminal = True` marks a stage whose job is to end the run (it needs no consumer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from engine.runtime.context import StageContext
    from engine.spec.models import PipelineSpec

__all__ = ["Branch", "Finish", "Setup", "Stage", "StageConfig"]


class StageConfig(BaseModel):
    """Base for stage configs: frozen, and unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Setup(Generic[C]):
    """What a stage gets at compile time."""

    name: str
    config: C
    pipeline: PipelineSpec
    base_dir: Path


@dataclass(frozen=True, slots=True)
class Finish:
    """Returned by a stage to end the run now, with `output` as the run's output."""

    output: Any
    handed_off: bool = False


@dataclass(frozen=True, slots=True)
class Branch:
    """Returned by a stage to run only the branches in `to`; the stage's output is `output`."""

    output: Any
    to: frozenset[str]


class Stage(ABC, Generic[C]):
    Config: ClassVar[type[BaseModel]]
    terminal: ClassVar[bool] = False

    def __init__(self, setup: Setup[C]) -> None:
        self.name = setup.name
        self.config: C = setup.config

    @abstractmethod
    async def run(self, ctx: StageContext) -> Any:
        """Produce this stage's output for one record (or a `Finish` / `Branch`)."""

    def branches(self) -> frozenset[str]:
        """The stages a `Branch` returned by this stage may name."""
        return frozenset()

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        """Warnings as (message, path inside `with:`); legal configs that are likely wrong."""
        return ()
