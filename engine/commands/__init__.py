"""One module per CLI verb; each exposes a function returning the process exit code."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from engine.errors import Diagnostic, SpecError

if TYPE_CHECKING:
    from engine.compile import CompiledPipeline
    from engine.registry import Registry
    from engine.resources import Resources

__all__ = [
    "EXIT_BAD_SPEC",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RECORD_ERRORS",
    "compile_or_report",
    "print_diagnostics",
    "stderr",
    "stdout",
]

EXIT_OK = 0
EXIT_RECORD_ERRORS = 1
EXIT_BAD_SPEC = 2
EXIT_INTERRUPTED = 130


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_diagnostics(console: Console, diagnostics: Iterable[Diagnostic]) -> None:
    """Diagnostics are user text (YAML paths contain `[0]`): never parse them as markup."""
    for diagnostic in diagnostics:
        style = "red" if diagnostic.severity == "error" else "yellow"
        console.print(str(diagnostic), style=style, markup=False)


def compile_or_report(file: Path, registry: Registry | None = None,
                      resources: Resources | None = None) -> CompiledPipeline | None:
    """Compile `file`, printing its warnings; on errors print them all and return None (the
    verb then exits with EXIT_BAD_SPEC)."""
    from engine.compile import compile_file

    try:
        pipeline = compile_file(file, registry, resources=resources)
    except SpecError as exc:
        print_diagnostics(stderr(), exc.diagnostics)
        return None
    print_diagnostics(stderr(), pipeline.warnings)
    return pipeline
