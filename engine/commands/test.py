"""`engine test`: a golden dataset through a whole pipeline, as a test suite.

The pipeline compiles once; each case's input runs through it (`engine.quality.runner`),
each run is recorded in the run store with its case and verdict (`golden` in the stored
line: `engine report` reads pass rates from it), and the cases come out as a table, and
optionally as JSON (`--json`) and JUnit XML (`--junit`).
Exit codes: 0 the pass rate reaches `--min-pass-rate` (and, with `--repeat`, every case is
at least `--min-consistency` consistent), 1 it does not (the failing cases are named), 2 a
bad dataset, pipeline or command line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from engine.commands import (
    EXIT_BAD_SPEC,
    EXIT_OK,
    EXIT_RECORD_ERRORS,
    compile_or_report,
    print_diagnostics,
    stderr,
    stdout,
)
from engine.compile import CompiledPipeline
from engine.errors import SpecError
from engine.observe.store import RunStore
from engine.observe.summary import format_duration
from engine.quality.golden import Case, Dataset, load_dataset
from engine.quality.judge import Judge
from engine.quality.junit import write_junit
from engine.quality.runner import CaseReport, GoldenReport, run_dataset
from engine.results import RunResult

__all__ = ["Targets", "golden"]


@dataclass(frozen=True, slots=True)
class Targets:
    """What the run must reach to exit 0."""

    min_pass_rate: float = 1.0
    min_consistency: float = 0.9


def golden(file: Path | None, dataset_file: Path, *, repeat: int = 1, concurrency: int = 8,
           targets: Targets = Targets(), judges: Sequence[str] = (),
           json_file: Path | None = None, junit_file: Path | None = None,
           store: Path | None = None) -> int:
    err = stderr()
    try:
        dataset = load_dataset(dataset_file)
    except SpecError as exc:
        print_diagnostics(err, exc.diagnostics)
        return EXIT_BAD_SPEC
    file = file or dataset.pipeline
    if file is None:
        err.print(f"error: {dataset_file} names no pipeline: give the pipeline file, or "
                  "`pipeline:` in the dataset's header", style="red", markup=False)
        return EXIT_BAD_SPEC
    pipeline = compile_or_report(file)
    if pipeline is None:
        return EXIT_BAD_SPEC
    judge = Judge(pipeline, judges)
    problems = judge.problems(dataset)
    for problem in problems:
        err.print(f"error: {problem}", style="red", markup=False)
    if problems:
        return EXIT_BAD_SPEC
    report = asyncio.run(_execute(pipeline, dataset, judge, repeat, concurrency, store))
    return _conclude(report, targets, json_file, junit_file)


async def _execute(pipeline: CompiledPipeline, dataset: Dataset, judge: Judge, repeat: int,
                   concurrency: int, folder: Path | None) -> GoldenReport:
    store = RunStore(folder) if folder is not None else None
    if store is not None:
        store.open_pipeline(pipeline)

    def observe(case: Case, result: RunResult, passed: bool) -> None:
        if store is not None:
            verdict = {"dataset": str(dataset.file), "case": case.name, "passed": passed}
            store.observe(pipeline.name, case.input, result, extra={"golden": verdict})

    try:
        return await run_dataset(pipeline, dataset, judge, repeat=repeat,
                                 concurrency=concurrency, on_run=observe)
    finally:
        await pipeline.resources.aclose()
        if store is not None:
            store.close()
            stderr().print(f"stored as {store.files.get(pipeline.name)}: engine report "
                           f"{folder}", markup=False)


def _conclude(report: GoldenReport, targets: Targets, json_file: Path | None,
              junit_file: Path | None) -> int:
    out, err = stdout(), stderr()
    out.print(_table(report))
    inconsistent = report.inconsistent(targets.min_consistency)
    ok = report.pass_rate >= targets.min_pass_rate and not inconsistent
    try:
        if json_file is not None:
            data = {**report.to_json(), "min_pass_rate": targets.min_pass_rate,
                    "min_consistency": targets.min_consistency,
                    "inconsistent": [case.case.name for case in inconsistent], "ok": ok}
            json_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        if junit_file is not None:
            write_junit(report, junit_file)
    except OSError as exc:
        err.print(f"error: cannot write {exc.filename}: {exc.strerror}", style="red",
                  markup=False)
        return EXIT_BAD_SPEC
    for line in _verdict(report, targets, inconsistent):
        (out if ok else err).print(line, style=None if ok else "red", markup=False)
    return EXIT_OK if ok else EXIT_RECORD_ERRORS


def _verdict(report: GoldenReport, targets: Targets,
             inconsistent: list[CaseReport]) -> list[str]:
    failed = [case.case.name for case in report.cases if not case.passed]
    lines = [f"{report.passed}/{len(report.cases)} cases passed ({report.pass_rate:.1%}); "
             f"required {targets.min_pass_rate:.1%}"]
    if failed:
        lines.append(f"failed: {', '.join(failed)}")
    if inconsistent:
        lines.append(f"below {targets.min_consistency:.0%} consistency over {report.repeat} "
                     "runs: " + ", ".join(f"{case.case.name} ({case.consistency:.0%})"
                                          for case in inconsistent))
    return lines


def _table(report: GoldenReport) -> Table:
    table = Table(title=f"{report.pipeline}: {report.dataset.file}")
    table.add_column("case", overflow="fold")
    table.add_column("result")
    if report.repeat > 1:
        table.add_column("runs passed", justify="right")
        table.add_column("consistency", justify="right")
    table.add_column("latency", justify="right")
    table.add_column("first failure")
    for case in report.cases:
        first = case.first_failure()
        mean = sum(run.result.duration for run in case.runs) / max(1, len(case.runs))
        repeats = ([f"{sum(run.passed for run in case.runs)}/{len(case.runs)}",
                    f"{case.consistency:.0%}"] if report.repeat > 1 else [])
        table.add_row(Text(case.case.name), "pass" if case.passed else "FAIL", *repeats,
                      format_duration(mean), Text("" if first is None else str(first)),
                      style=None if case.passed else "red")
    return table
