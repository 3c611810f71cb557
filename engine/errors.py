"""The exception tree and the one shape every user-facing problem takes.

```
EngineError                 anything engine raises on purpose
├── SpecError               the pipeline file is wrong; carries every Diagnostic found
├── PluginError             a stage type could not be loaded (named, with the cause)
└── StageError              a stage failed while running one record
    └── StageTimeout        it ran past its own `timeout`
```

A `Diagnostic` is a breadcrumb (file → line:col → YAML path → problem → hint). The CLI
prints diagnostics and exits 2; a traceback is only ever shown for a bug in engine itself.
Messages never contain the values of `${VAR}` references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Diagnostic",
    "EngineError",
    "PluginError",
    "SpecError",
    "StageError",
    "StageTimeout",
    "format_path",
]

Severity = Literal["error", "warning"]


def format_path(path: tuple[str | int, ...]) -> str:
    """Render a YAML path the way users write it: `stages.answer.with.models[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in a pipeline file, located as precisely as the loader could."""

    message: str
    file: str = "<string>"
    line: int | None = None
    column: int | None = None
    path: tuple[str | int, ...] = ()
    hint: str | None = None
    severity: Severity = "error"

    @property
    def location(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def __str__(self) -> str:
        where = f"{self.location}: {self.severity}"
        if self.path:
            where += f" at {format_path(self.path)}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class EngineError(Exception):
    """Base of every error engine raises on purpose."""


class SpecError(EngineError):
    """A pipeline file that cannot be loaded or compiled; holds all of its diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class PluginError(EngineError):
    """A stage type whose entry point is broken; the message names the plugin."""


class StageError(EngineError):
    """A stage failed while running a record."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


class StageTimeout(StageError):
    """A stage ran past its own `timeout`. (The request deadline ends the whole record
    instead: its result's error type is `DeadlineExceeded`.)"""
