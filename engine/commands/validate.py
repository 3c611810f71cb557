"""`engine validate`: compile pipeline files without running anything."""

from __future__ import annotations

from pathlib import Path

from engine.commands import EXIT_BAD_SPEC, EXIT_OK, compile_or_report, stderr, stdout
from engine.registry import Registry


def validate(files: list[Path]) -> int:
    out, err = stdout(), stderr()
    registry = Registry.from_entry_points()
    failed = 0
    for file in files:
        pipeline = compile_or_report(file, registry)
        if pipeline is None:
            failed += 1
            continue
        warned = f", {len(pipeline.warnings)} warning(s)" if pipeline.warnings else ""
        out.print(f"ok {file}: {len(pipeline.stages)} stages{warned}", markup=False)
    if failed:
        err.print(f"{failed} of {len(files)} file(s) invalid", style="red", markup=False)
    return EXIT_BAD_SPEC if failed else EXIT_OK
