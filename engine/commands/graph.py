"""`engine graph`: the compiled DAG as Mermaid or Graphviz DOT text."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from engine.commands import EXIT_BAD_SPEC, EXIT_OK, compile_or_report
from engine.compile import CompiledPipeline


def graph(file: Path, fmt: str) -> int:
    pipeline = compile_or_report(file)
    if pipeline is None:
        return EXIT_BAD_SPEC
    render = mermaid if fmt == "mermaid" else dot
    sys.stdout.write("\n".join(render(pipeline)) + "\n")
    return EXIT_OK


def _edges(pipeline: CompiledPipeline) -> Iterator[tuple[str, str, str]]:
    """(from, to, kind): kind is needs, route (a branch the route may select) or on_error."""
    for name, stage in pipeline.stages.items():
        for dependent in stage.dependents:
            yield name, dependent, "route" if dependent in stage.branches else "needs"
        if stage.on_error not in ("fail", "continue"):
            yield name, stage.on_error, "on_error"


def mermaid(pipeline: CompiledPipeline) -> Iterator[str]:
    yield "flowchart TD"
    for name, stage in pipeline.stages.items():
        yield f'    {name}["{name}<br/><small>{stage.type}</small>"]'
    arrows = {"needs": "-->", "route": "-.->|route|", "on_error": "-.->|on_error|"}
    for source, target, kind in _edges(pipeline):
        yield f"    {source} {arrows[kind]} {target}"


def dot(pipeline: CompiledPipeline) -> Iterator[str]:
    yield f'digraph "{pipeline.name}" {{'
    yield "    rankdir=TB; node [shape=box, style=rounded];"
    for name, stage in pipeline.stages.items():
        yield f'    "{name}" [label="{name}\\n({stage.type})"];'
    styles = {"needs": "", "route": ' [style=dashed, label="route"]',
              "on_error": ' [style=dotted, color=red, label="on_error"]'}
    for source, target, kind in _edges(pipeline):
        yield f'    "{source}" -> "{target}"{styles[kind]};'
    yield "}"
