"""The stage contract — the one place it is written down.

A stage type is a class that subclasses `Stage` and has:

- `Config`: a pydantic model of its `with:` block. Declare fields with the types of
  `engine.template` (`TemplateStr`, `ConditionStr`, `TemplateValue`) for anything rendered
  per record, and `ModelRefStr` / `ResourceRefStr` for names of the pipeline's `models:` and
  `resources:`. The compiler finds those values in the validated config and checks them: a
  template may only read stages upstream, a name must exist. The stage never re-checks.
- `__init__(self, setup)`: called once when the pipeline compiles, with a `Setup` (stage name,
  validated config, the pipeline spec, the pipeline's folder, and the process's `Resources`:
  model clients, breakers, stores). Keep it cheap: read the files the config names (a prompt
  template) and raise `SetupError(message, path)` when one is wrong, so the user gets a
  `file:line:col` diagnostic; never call the network here.
- `async def run(self, ctx) -> Any`: called once per record. Read upstream outputs through
  `ctx.render(...)` or `ctx.stages`. Return the stage's output (JSON-able data), or
  `Finish(output)` to end the run early with that output (a cache hit, a blocked input, a
  hand-off to a human), or `Branch(output, to=...)` to select which downstream branches run
  (the others are skipped), or `Handoff(to, output)` to run another stage in its place (a
  guard sending a request down the non-AI path). Raise to fail; the stage's `on_error` decides
  what follows. Never print: report through `ctx.note(...)`, which lands in the run trace.
  `ctx.finalize(fn)` registers a transformation of the run's final output (the guard puts
  pseudonymized PII back into the answer the user gets; stage outputs and traces keep the
  placeholders).

Optional class hooks: `branches()` lists the stages a `Branch` may select (the compiler checks
they depend on this stage); `handoffs()` the stages a `Handoff` may name (handlers, like
`on_error` targets: scheduled only in another stage's place); `check()` yields warnings about
legal but suspicious configs;
`references()` yields the templates and names to check (by default: those in the config; a
stage that loads a template file adds it); `async warm_up()` runs once before the first record
of a run (never in `engine validate`): import heavy libraries, load models, open pools there,
so the first record does not pay for them; `terminal = True` marks a stage whose job is to end
the run (it needs no consumer). Stages that do blocking CPU work must hand it to
`asyncio.to_thread`: a timeout cannot interrupt code that never awaits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from engine.spec.types import ModelRef, ResourceRef
from engine.template import Condition, Template

if TYPE_CHECKING:
    from engine.resources import Resources
    from engine.runtime.context import StageContext
    from engine.spec.models import PipelineSpec

__all__ = [
    "Branch",
    "Finish",
    "Handoff",
    "Reference",
    "Setup",
    "SetupError",
    "Stage",
    "StageConfig",
    "walk_values",
]

YamlPath = tuple[str | int, ...]
Reference = tuple[YamlPath, Template | Condition | ModelRef | ResourceRef]


def walk_values(value: Any, path: YamlPath) -> Iterator[Reference]:
    """Every template, condition and model/resource name inside a validated config."""
    if isinstance(value, Template | Condition | ModelRef | ResourceRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from walk_values(getattr(value, name), (*path, info.alias or name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk_values(item, (*path, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from walk_values(item, (*path, i))


class SetupError(Exception):
    """Raised by a stage's `__init__` for a problem at `path` inside its `with:` block."""

    def __init__(self, message: str, path: YamlPath = ()) -> None:
        self.path = path
        super().__init__(message)


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
    resources: Resources


@dataclass(frozen=True, slots=True)
class Finish:
    """Returned by a stage to end the run now, with `output` as the run's output."""

    output: Any
    handed_off: bool = False


@dataclass(frozen=True, slots=True)
class Handoff:
    """Returned by a stage to run stage `to` in its place (the non-AI path, say): `output` is
    recorded as this stage's output first, so `to` can read why; `to`'s result stands in."""

    to: str
    output: Any


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

    def handoffs(self) -> frozenset[str]:
        """The stages a `Handoff` returned by this stage may name (they become handlers)."""
        return frozenset()

    def check(self) -> Iterable[tuple[str, tuple[str | int, ...]]]:
        """Warnings as (message, path inside `with:`); legal configs that are likely wrong."""
        return ()

    async def warm_up(self) -> None:
        """Prepare expensive things once per process before records run (default: nothing)."""

    def references(self) -> Iterable[Reference]:
        """Templates, conditions and model/resource names, with their paths inside `with:`."""
        return walk_values(self.config, ())
