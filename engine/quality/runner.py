"""Running a golden dataset through a compiled pipeline, and what came of each case.

Cases run concurrently (at most `concurrency` at a time), each input validated against the
pipeline's `input.schema` first (a mismatch is an error result, as in `engine run`), a case's
`setup` inputs before its own, in order. With `repeat` the whole dataset runs that many
rounds; before each new round the pipeline's in-process caches are emptied (and background
stores awaited), so a repeat measures the pipeline, not its cache. A cache shared through
Redis is left alone: clearing it would clear it for every replica.

A case passes when every one of its runs meets every assertion; the pass rate is passed
cases over cases. Its *consistency* is the share of its runs whose result — status, the
stage that finished it, the output without the dataset's `volatile` paths, the error type —
is the most common one: 1.0 when every run agreed.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.compile import CompiledPipeline
from engine.quality.assertions import MODEL_GRADED, Assertion, check, resolve, subject_of
from engine.quality.golden import Case, Dataset
from engine.quality.judge import Judge
from engine.results import RunResult
from engine.runtime.batch import InputRecord, run_input

__all__ = ["CaseReport", "CaseRun", "Failure", "GoldenReport", "run_dataset"]

OnRun = Callable[[Case, RunResult, bool], None]
"""Called with each checked run (not setup runs): the case, the result, whether it passed."""


@dataclass(frozen=True, slots=True)
class Failure:
    assertion: str
    """What was expected, as written: `output.category equals "billing"`."""
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.assertion}: {self.message}"


@dataclass(slots=True)
class CaseRun:
    result: RunResult
    failures: list[Failure]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(slots=True)
class CaseReport:
    case: Case
    runs: list[CaseRun] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(run.passed for run in self.runs)

    @property
    def consistency(self) -> float:
        if not self.fingerprints:
            return 1.0
        return Counter(self.fingerprints).most_common(1)[0][1] / len(self.fingerprints)

    def first_failure(self) -> Failure | None:
        return next((f for run in self.runs for f in run.failures), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.case.name, "line": self.case.line, "passed": self.passed,
            "runs": len(self.runs), "passed_runs": sum(run.passed for run in self.runs),
            "consistency": round(self.consistency, 4),
            "latency_ms": [round(run.result.duration * 1000, 3) for run in self.runs],
            "failures": [{"run": number, "assertion": f.assertion, "message": f.message,
                          "line": f.line}
                         for number, run in enumerate(self.runs, 1) for f in run.failures],
        }


@dataclass(slots=True)
class GoldenReport:
    dataset: Dataset
    pipeline: str
    repeat: int
    cases: list[CaseReport]

    @property
    def passed(self) -> int:
        return sum(case.passed for case in self.cases)

    @property
    def pass_rate(self) -> float:
        return self.passed / len(self.cases) if self.cases else 1.0

    def inconsistent(self, target: float) -> list[CaseReport]:
        """The cases whose runs agreed less than `target` (only with a repeat)."""
        return [case for case in self.cases if self.repeat > 1 and case.consistency < target]

    def to_json(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset.file), "pipeline": self.pipeline,
                "repeat": self.repeat, "cases": [case.to_json() for case in self.cases],
                "passed": self.passed, "total": len(self.cases),
                "pass_rate": round(self.pass_rate, 4)}


async def run_dataset(pipeline: CompiledPipeline, dataset: Dataset, judge: Judge, *,
                      repeat: int = 1, concurrency: int = 8,
                      on_run: OnRun | None = None) -> GoldenReport:
    """Every case, `repeat` rounds; the caller closes the pipeline's resources after."""
    await pipeline.warm_up()
    reports = [CaseReport(case) for case in dataset.cases]
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(index: int, report: CaseReport) -> None:
        async with slots:
            run = await _run_case(pipeline, report.case, index, judge)
        report.runs.append(run)
        report.fingerprints.append(_fingerprint(run.result, dataset))
        if on_run is not None:
            on_run(report.case, run.result, run.passed)

    for round_ in range(repeat):
        if round_:
            await _forget_answers(pipeline)
        await asyncio.gather(*(one(index, report) for index, report in enumerate(reports)))
    return GoldenReport(dataset, pipeline.name, repeat, reports)


async def _run_case(pipeline: CompiledPipeline, case: Case, index: int,
                    judge: Judge) -> CaseRun:
    for record in case.setup:
        await run_input(pipeline, InputRecord(index, record))
    if case.setup:
        await pipeline.resources.settle()  # the setup's cache stores land first
    result = await run_input(pipeline, InputRecord(index, case.input, case.name))
    subject = subject_of(result)
    failures = [Failure(a.describe(), message, a.line) for a in case.expect
                if (message := await _verify(a, subject, judge)) is not None]
    if result.status == "error" and not case.checks_status:
        error = result.error or {}
        where = f" at stage {error['stage']}" if error.get("stage") else ""
        failures.insert(0, Failure("status is not error", f"the run failed{where}: "
                                   f"{error.get('type')}: {error.get('message')}", case.line))
    return CaseRun(result, failures)


async def _verify(assertion: Assertion, subject: dict[str, Any], judge: Judge) -> str | None:
    """Why the assertion fails, or None. A check that cannot even run (a judge that errs, a
    value of a shape nobody foresaw) fails its case, saying so, not the whole test run."""
    actual = resolve(subject, assertion.parts)
    try:
        if assertion.op in MODEL_GRADED:
            return await judge.check(assertion, actual)
        return check(assertion, actual)
    except Exception as exc:
        return f"cannot check: {type(exc).__name__}: {exc}"


def _fingerprint(result: RunResult, dataset: Dataset) -> str:
    """A run's result as --repeat compares it: volatile paths left out."""
    seen: dict[str, Any] = copy.deepcopy({
        "status": result.status, "finished_by": result.finished_by, "output": result.output,
        "error": (result.error or {}).get("type")})
    for path in dataset.volatile:
        *parents, last = path
        holder = resolve(seen, tuple(parents))
        if isinstance(holder, dict) and isinstance(last, str):
            holder.pop(last, None)
        elif isinstance(holder, list) and isinstance(last, int) and last < len(holder):
            holder.pop(last)
    return json.dumps(seen, sort_keys=True, ensure_ascii=False, default=str)


async def _forget_answers(pipeline: CompiledPipeline) -> None:
    """Empty the pipeline's in-process caches (see the module docstring)."""
    resources = pipeline.resources
    await resources.settle()
    if resources.redis_url is not None:
        return
    for name, spec in pipeline.loaded.spec.resources.items():
        if spec.type == "cache" and str(getattr(spec, "backend", "memory")) == "memory":
            await resources.cache(name, spec).clear()
