"""`engine test --repeat`: consistency per case from a scripted non-deterministic stage; the
run store gets each run with its verdict; the pytest plugin runs golden files as tests."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from golden_helpers import engine_test, use_samples, write

from engine.observe.store import read_runs
from engine.registry import Registry
from engine.runtime.context import StageContext
from engine.stages.base import Stage, StageConfig
from engine.testing import sample_registry

SCRIPT = itertools.cycle(["a", "a", "a", "b"])
"""What the flaky stage answers, call after call: the 4th run of four disagrees."""


class FlakyConfig(StageConfig):
    pass


class FlakyStage(Stage[FlakyConfig]):
    """Stable for tickets saying 'stable'; otherwise the next answer of SCRIPT."""

    Config = FlakyConfig

    async def run(self, ctx: StageContext) -> Any:
        return "a" if ctx.input["ticket"] == "stable" else next(SCRIPT)


FLAKY = """\
version: 1
name: flaky
stages:
  answer: {type: flaky}
output: {answer: "{{ stages.answer.output }}"}
"""
CASES = """\
pipeline: p.yaml
cases:
  - {name: stable, input: {ticket: stable}, expect: [{path: output.answer, equals: a}]}
  - {name: wobbly, input: {ticket: wobbly}, expect: [{path: output.answer, one_of: [a, b]}]}
"""


def test_repeat_reports_the_consistency_of_each_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Registry, "from_entry_points", classmethod(
        lambda cls, builtin_only=False: sample_registry({"flaky": FlakyStage})))
    path = write(tmp_path, CASES, FLAKY)
    code, report = engine_test(path, "--repeat", "4", "-c", "1")
    stable, wobbly = report["cases"]
    assert (stable["runs"], stable["consistency"]) == (4, 1.0)
    assert (wobbly["runs"], wobbly["passed_runs"], wobbly["consistency"]) == (4, 4, 0.75)
    assert report["inconsistent"] == ["wobbly"] and report["pass_rate"] == 1.0
    assert code == 1
    assert "below 90% consistency over 4 runs: wobbly (75%)" in capsys.readouterr().err
    assert engine_test(path, "--repeat", "4", "--min-consistency", "0.75")[0] == 0


def test_each_run_is_stored_with_its_case_and_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli import main

    use_samples(monkeypatch)
    path = write(tmp_path, """\
pipeline: p.yaml
cases:
  - {name: ok, input: {ticket: a}, expect: [{path: output.category, equals: billing}]}
  - {name: ko, input: {ticket: b}, expect: [{path: output.category, equals: general}]}
""")
    store = tmp_path / "runs"
    assert main(["test", "-d", str(path), "--store", str(store), "--repeat", "2"]) == 1
    [run] = read_runs(store)
    assert run.pipeline == "golden-sample"
    verdicts = sorted((r["golden"]["case"], r["golden"]["passed"]) for r in run.records)
    assert verdicts == [("ko", False), ("ko", False), ("ok", True), ("ok", True)]
    assert all(r["golden"]["dataset"] == str(path) and "output" not in r for r in run.records)


PLUGIN_PIPELINE = """\
version: 1
name: greeter
stages:
  greet:
    type: template
    with: {output: "Hello, {{ input.name }}!"}
output: "{{ stages.greet.output }}"
"""


def run_plugin(tmp_path: Path, ini: str) -> subprocess.CompletedProcess[str]:
    """pytest with the golden plugin on a folder holding the greeter and its two cases."""
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "greeter.yaml").write_text(PLUGIN_PIPELINE)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ngolden_pipeline = "pipelines/greeter.yaml"\n' + ini)
    (tmp_path / "golden_greeter.yaml").write_text("""\
- {name: ada, input: {name: Ada}, expect: [{path: output, equals: "Hello, Ada!"}]}
- {name: bob, input: {name: Bob}, expect: [{path: output, regex: "^Bye"}]}
""")
    (tmp_path / "other.yaml").write_text("not: a golden file\n")
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "engine.quality.pytest_plugin", "-q",
         "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_the_pytest_plugin_runs_each_case_as_a_test(tmp_path: Path) -> None:
    done = run_plugin(tmp_path, "")
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "golden case 'bob' failed:" in done.stdout
    assert 'output regex "^Bye": got "Hello, Bob!" (line 2)' in done.stdout
    assert done.returncode == 1


def test_a_bad_golden_concurrency_is_one_clear_error(tmp_path: Path) -> None:
    done = run_plugin(tmp_path, 'golden_concurrency = "eight"\n')
    assert "golden_concurrency = 'eight' in the pytest ini options: expected a whole number" \
        in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 1
