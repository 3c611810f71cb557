"""Spec + registry → an immutable, runnable `CompiledPipeline` (pure: no I/O, no stage runs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from engine.compile.compiler import compile_pipeline
from engine.compile.pipeline import CompiledPipeline, CompiledStage
from engine.registry import Registry
from engine.spec import load_spec

__all__ = ["CompiledPipeline", "CompiledStage", "compile_file", "compile_pipeline"]


def compile_file(
    path: str | Path, registry: Registry | None = None, env: Mapping[str, str] | None = None
) -> CompiledPipeline:
    """Load, validate and compile a pipeline file; raises SpecError with every problem."""
    registry = registry or Registry.from_entry_points()
    return compile_pipeline(load_spec(path, env), registry, env)
