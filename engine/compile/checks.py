"""Graph checks of a pipeline: needs, cycles, template references, routes, handlers, names.

Each check takes the facts it needs and yields diagnostics; `compiler.py` runs all of them
so a file's problems are reported together. Pure functions: no I/O, no stage code runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import networkx as nx

from engine.errors import Diagnostic
from engine.spec.loader import SourceMap
from engine.spec.models import PipelineSpec
from engine.spec.types import ModelRef, ResourceRef
from engine.spec.validation import closest

__all__ = [
    "Path",
    "cycles",
    "handler_problems",
    "name_problems",
    "reference_problems",
    "route_problems",
    "unknown_needs",
]

Path = tuple[str | int, ...]


def unknown_needs(spec: PipelineSpec, source: SourceMap) -> Iterator[Diagnostic]:
    for name, stage in spec.stages.items():
        for i, need in enumerate(stage.needs):
            path = ("stages", name, "needs", i)
            if need == name:
                yield source.diagnostic(f"stage '{name}' needs itself", path)
            elif need not in spec.stages:
                yield source.diagnostic(
                    f"needs unknown stage '{need}'", path, hint=_did_you_mean(need, spec.stages)
                )


def cycles(graph: nx.DiGraph[str], source: SourceMap) -> Iterator[Diagnostic]:
    """One diagnostic per strongly connected knot, printing a cycle through it."""
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycle = nx.find_cycle(graph.subgraph(component))
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        yield source.diagnostic(
            "a cycle in `needs`: " + " → ".join(names),
            ("stages", names[1], "needs"),
            hint="needs must form a DAG; remove one of these dependencies",
        )


def reference_problems(
    refs: Mapping[str, list[tuple[Path, frozenset[str]]]],
    graph: nx.DiGraph[str],
    source: SourceMap,
) -> Iterator[Diagnostic]:
    """A template may read `stages.X` only when X is upstream of the stage it belongs to."""
    for owner, found in refs.items():
        upstream = nx.ancestors(graph, owner) if owner in graph else set(graph.nodes)
        for path, names in found:
            for name in sorted(names):
                if name not in graph:
                    yield source.diagnostic(
                        f"refers to unknown stage '{name}'", path,
                        hint=_did_you_mean(name, graph.nodes),
                    )
                elif name not in upstream:
                    yield source.diagnostic(
                        f"refers to stage '{name}', which is not upstream of '{owner}'", path,
                        hint=f"add '{name}' to stages.{owner}.needs",
                    )


def route_problems(
    branches: Mapping[str, frozenset[str]], spec: PipelineSpec, source: SourceMap
) -> Iterator[Diagnostic]:
    for route, targets in branches.items():
        for target in sorted(targets):
            path = ("stages", route, "with")
            if target not in spec.stages:
                yield source.diagnostic(
                    f"routes to unknown stage '{target}'", path,
                    hint=_did_you_mean(target, spec.stages),
                )
            elif route not in spec.stages[target].needs:
                yield source.diagnostic(
                    f"routes to '{target}', which does not depend on '{route}'", path,
                    hint=f"add '{route}' to stages.{target}.needs",
                )


Delegation = tuple[str, str, Path, str]
"""(stage, handler it may run in its place, YAML path, "on_error" or "handoff")."""


def handler_problems(delegations: Sequence[Delegation], spec: PipelineSpec, graph: nx.DiGraph[str],
                     source: SourceMap) -> Iterator[Diagnostic]:
    """A handler — an `on_error` target, or a stage handed off to — runs only in place of
    another stage: it must exist, be needed by nobody, and need only stages upstream."""
    for name, handler, path, kind in delegations:
        if handler not in spec.stages:
            extra = ["fail", "continue"] if kind == "on_error" else []
            guess = closest(handler, [*spec.stages, *extra])
            stages = ", ".join(sorted(spec.stages))
            options = f"use {', '.join(extra)}, or one of the stages: " if extra else "use one of: "
            yield source.diagnostic(
                f"{kind} names unknown stage '{handler}'", path,
                hint=f"did you mean '{guess}'?" if guess else options + stages,
            )
        elif handler == name:
            yield source.diagnostic(f"a stage cannot be its own {kind} handler", path)
        elif any(graph.successors(handler)):
            yield source.diagnostic(
                f"{kind} handler '{handler}' is needed by other stages", path,
                hint="a handler runs only in place of another stage; give it no dependents",
            )
        elif not set(spec.stages[handler].needs) <= _readable(graph, name, kind):
            yield source.diagnostic(
                f"{kind} handler '{handler}' needs stages that are not upstream of '{name}'",
                path,
            )


def _readable(graph: nx.DiGraph[str], name: str, kind: str) -> set[str]:
    """What a handler may need: the stages upstream of the one it stands in for, and, for a
    handoff, that stage itself (its output, saying why, is recorded before the handler runs)."""
    upstream = nx.ancestors(graph, name)
    return upstream | {name} if kind == "handoff" else upstream


def name_problems(found: list[tuple[Path, Any]], spec: PipelineSpec, source: SourceMap
                  ) -> Iterator[Diagnostic]:
    """Model and resource names used by stage configs must exist in the pipeline."""
    for path, value in found:
        if isinstance(value, ModelRef) and value not in spec.models:
            yield source.diagnostic(
                f"unknown model '{value}'", path, hint=_did_you_mean(value, spec.models, "models")
            )
        elif isinstance(value, ResourceRef) and value not in spec.resources:
            yield source.diagnostic(
                f"unknown resource '{value}'", path,
                hint=_did_you_mean(value, spec.resources, "resources"),
            )


def _did_you_mean(word: str, choices: Any, section: str = "stages") -> str:
    names = sorted(choices)
    guess = closest(word, names)
    if guess:
        return f"did you mean '{guess}'?"
    return f"{section} defined: {', '.join(names)}" if names else f"no {section} are defined"
