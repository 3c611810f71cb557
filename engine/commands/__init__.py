"""One module per CLI verb; each exposes a function returning the process exit code."""

from __future__ import annotations

from rich.console import Console

__all__ = [
    "EXIT_BAD_SPEC",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RECORD_ERRORS",
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


def print_diagnostics(console: Console, diagnostics: object) -> None:
    """Diagnostics are user text (YAML paths contain `[0]`): never parse them as markup."""
    for diagnostic in diagnostics:  # type: ignore[attr-defined]
        style = "red" if diagnostic.severity == "error" else "yellow"
        console.print(str(diagnostic), style=style, markup=False)
