"""Spec + registry → an immutable, runnable `CompiledPipeline` (pure: no I/O, no stage runs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from engine.compile.compiler import compile_pipeline, stage_config_problems
from engine.compile.pipeline import CompiledPipeline, CompiledStage
from engine.errors import SpecError
from engine.registry import Registry
from engine.resources import Resources
from engine.spec import validate_document
from engine.spec.loader import Document, load_file

__all__ = [
    "CompiledPipeline",
    "CompiledStage",
    "compile_document",
    "compile_file",
    "compile_pipeline",
]


def compile_file(
    path: str | Path, registry: Registry | None = None, env: Mapping[str, str] | None = None,
    resources: Resources | None = None,
) -> CompiledPipeline:
    """Load, validate and compile a pipeline file; raises SpecError with every problem.
    `resources`: shared with other pipelines (`engine serve`) or other processes
    (`Resources(redis_url=...)`); a fresh set of this process's own otherwise."""
    registry = registry or Registry.from_entry_points()
    return compile_document(load_file(path, env), registry, env, resources)


def compile_document(
    doc: Document, registry: Registry, env: Mapping[str, str] | None = None,
    resources: Resources | None = None,
) -> CompiledPipeline:
    """Validate and compile a loaded document, reporting core and stage problems together."""
    try:
        loaded = validate_document(doc)
    except SpecError as exc:
        raise SpecError([*exc.diagnostics, *stage_config_problems(doc, registry)]) from None
    return compile_pipeline(loaded, registry, env, resources=resources)
