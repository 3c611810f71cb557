"""`CompiledPipeline`: the immutable, runnable form of a pipeline file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

from engine.runtime.executor import run_record
from engine.template import Condition

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from engine.errors import Diagnostic
    from engine.flags.client import PipelineFlags
    from engine.resources import Resources
    from engine.results import RunResult
    from engine.runtime.context import RunHooks
    from engine.spec import LoadedSpec
    from engine.stages.base import Stage

__all__ = ["CompiledPipeline", "CompiledStage"]


@dataclass(frozen=True, slots=True)
class CompiledStage:
    """A stage instance with everything the executor needs precomputed."""

    name: str
    type: str
    stage: Stage[Any]
    needs: tuple[str, ...]
    dependents: tuple[str, ...]
    branches: frozenset[str]
    condition: Condition | None
    timeout: float | None
    on_error: str


@dataclass(frozen=True, eq=False)
class CompiledPipeline:
    """Built once, run for many records concurrently; holds no per-record state."""

    loaded: LoadedSpec
    graph: nx.DiGraph[str]
    stages: Mapping[str, CompiledStage]
    roots: tuple[str, ...]
    chain: tuple[CompiledStage, ...]
    """The stages in order when the pipeline is one linear chain (the executor's fast path),
    else empty."""
    need_counts: Mapping[str, int]
    """Stage name → how many needs it waits for: each record's countdown starts here."""
    sinks: tuple[str, ...]
    output: Any
    deadline: float
    input_validator: Validator
    env: Mapping[str, str]
    resources: Resources
    warnings: tuple[Diagnostic, ...] = ()
    flags: PipelineFlags | None = None
    """The `flags:` block's provider client; None when the pipeline has none."""

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    async def warm_up(self) -> None:
        """Let every stage prepare (imports, model loads) before the first record."""
        for stage in self.stages.values():
            await stage.stage.warm_up()

    async def run(self, record: Any, index: int = 0, record_id: Any = None, *,
                  hooks: RunHooks | None = None) -> RunResult:
        """Run one record (already validated against `input.schema`)."""
        return await run_record(self, record, index, record_id, hooks)
