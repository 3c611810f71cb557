"""Golden datasets inside a project's own pytest suite: one test item per case.

Installed with engine (entry point `pytest11`), the plugin collects `golden_*.yaml` and
`*.golden.yaml` files (also `.yml`, and `.jsonl`) under the test paths. Each case is a test
named after it (`tests/golden_support.yaml::double-charge`); a failed case shows every failed
assertion with its line. The pipeline is the dataset's `pipeline:` header, else the ini
option `golden_pipeline` (relative to the rootdir)::

    [tool.pytest.ini_options]
    golden_pipeline = "pipelines/support_triage.yaml"
    golden_judge = ["cheap"]        # tiers grading `rubric` assertions that name none
    golden_concurrency = "8"

The whole file runs once, when its first case runs (one compile, cases concurrently, as
`engine test` does); its runs are not stored in the run store. Importing this module costs
nothing: engine is imported when a golden file is collected.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from engine.quality.golden import Case, Dataset
    from engine.quality.runner import GoldenReport

__all__ = ["GoldenFile", "GoldenItem", "pytest_addoption", "pytest_collect_file"]

_SUFFIXES = (".yaml", ".yml", ".jsonl")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("golden_pipeline", "The pipeline file of golden datasets that name none "
                  "(relative to the rootdir).", default=None)
    parser.addini("golden_judge", "Model tiers grading `rubric` assertions that name none.",
                  type="linelist", default=[])
    parser.addini("golden_concurrency", "Golden cases in flight at once.", default="8")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> GoldenFile | None:
    name = file_path.name
    stem = name.rsplit(".", 1)[0]
    if file_path.suffix in _SUFFIXES and (name.startswith("golden_") or stem.endswith(".golden")):
        file: GoldenFile = GoldenFile.from_parent(parent, path=file_path)
        return file
    return None


class GoldenFailure(Exception):
    """A case that failed, or a file whose pipeline cannot run: the message says why."""


class GoldenFile(pytest.File):
    """A dataset file; runs every case on the first item's call and keeps the report."""

    def collect(self) -> Any:
        from engine.errors import SpecError
        from engine.quality.golden import load_dataset

        try:
            self.dataset = load_dataset(self.path)
        except SpecError as exc:
            raise self.CollectError(str(exc)) from None
        self._report: GoldenReport | str | None = None
        for case in self.dataset.cases:
            yield GoldenItem.from_parent(self, name=case.name, case=case)

    def report(self) -> GoldenReport:
        if self._report is None:
            self._report = self._run()
        if isinstance(self._report, str):
            raise GoldenFailure(self._report)
        return self._report

    def _run(self) -> GoldenReport | str:
        from engine.compile import compile_file
        from engine.errors import SpecError
        from engine.quality.judge import Judge

        concurrency = str(self.config.getini("golden_concurrency")).strip()
        if not concurrency.isdecimal() or int(concurrency) < 1:
            return (f"golden_concurrency = {concurrency!r} in the pytest ini options: expected "
                    "a whole number of cases in flight, at least 1")
        pipeline_file = self.dataset.pipeline or self._ini_pipeline()
        if pipeline_file is None:
            return (f"{self.path} names no pipeline: add `pipeline:` to its header, or "
                    "golden_pipeline to the pytest ini options")
        try:
            pipeline = compile_file(pipeline_file)
        except SpecError as exc:
            return str(exc)
        judge = Judge(pipeline, self.config.getini("golden_judge"))
        problems = judge.problems(self.dataset)
        if problems:
            return "\n".join(problems)
        return asyncio.run(_run_all(pipeline, self.dataset, judge, int(concurrency)))

    def _ini_pipeline(self) -> Path | None:
        value = self.config.getini("golden_pipeline")
        return Path(self.config.rootpath, value) if value else None


async def _run_all(pipeline: Any, dataset: Dataset, judge: Any,
                   concurrency: int) -> GoldenReport:
    from engine.quality.runner import run_dataset

    try:
        return await run_dataset(pipeline, dataset, judge, concurrency=concurrency)
    finally:
        await pipeline.resources.aclose()


class GoldenItem(pytest.Item):
    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        parent = self.parent
        assert isinstance(parent, GoldenFile)
        [report] = [c for c in parent.report().cases if c.case.name == self.case.name]
        if report.passed:
            return
        lines = [f"{failure}" + (f" (line {failure.line})" if failure.line else "")
                 for run in report.runs for failure in run.failures]
        raise GoldenFailure("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, GoldenFailure):
            return f"golden case '{self.case.name}' failed:\n{excinfo.value}"
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.case.line - 1 if self.case.line else None
        return self.path, line, f"golden case {self.case.name}"
