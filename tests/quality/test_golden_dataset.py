"""Golden datasets: every problem reported at once, with file:line:col, the YAML path and a
hint — never a traceback — and `engine test` exits 2 for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_helpers import engine_test, use_samples, write

from engine.errors import SpecError
from engine.quality.golden import load_dataset


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_dataset(path)
    return [str(diagnostic) for diagnostic in caught.value.diagnostics]


def test_every_problem_is_located_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, """\
pipeline: p.yaml
casess: []
cases:
  - name: a
    input: {ticket: hi}
    expect:
      - {path: output.category, equal: billing}
      - {path: outptu.category, equals: billing}
      - {path: output.reply, regex: "(unclosed"}
      - {path: output.reply, threshold: 0.9, equals: x}
      - {finishd_by: escalate}
  - name: a
    inputs: {ticket: hi}
""")
    got = problems(path)
    where = str(path)
    assert got == [
        f"{where}:2:1: error at casess: unknown key 'casess'\n  hint: did you mean 'cases'?",
        f"{where}:7:33: error at cases[0].expect[0].equal: unknown assertion key 'equal'\n"
        "  hint: did you mean 'equals'?",
        f"{where}:8:16: error at cases[0].expect[1].path: a path starts with one of output, "
        "status, finished_by, handed_off, error, degraded, trace, stages, route, cost_usd, "
        "latency; did you mean 'output'?",
        f"{where}:9:37: error at cases[0].expect[2].regex: `regex` is not a valid regex: "
        "missing ), unterminated subpattern at position 0",
        f"{where}:10:30: error at cases[0].expect[3].threshold: `threshold` goes with "
        "`similar_to`",
        f"{where}:11:10: error at cases[0].expect[4].finishd_by: an assertion needs a `path` "
        "(or one subject field as its key: {finished_by: escalate})\n"
        "  hint: did you mean 'finished_by'?",
        f"{where}:13:5: error at cases[1].inputs: unknown key 'inputs'\n"
        "  hint: did you mean 'input'?",
        f"{where}:12:5: error at cases[1]: a case needs an `input`",
        f"{where}:12:5: error at cases[1]: two cases are named 'a' (first on line 4)\n"
        "  hint: names identify cases in reports, JUnit and pytest",
    ]


def test_jsonl_problems_carry_their_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"name": "a", "input": {"ticket": "hi"}}\n\n'
                           '{"name": "b", "input": {"ticket": "hi"}, '
                           '"expect": [{"path": "output", "min_count": -1}]}\n'
                           '{"name": "c", "input": \n', name="golden.jsonl")
    got = problems(path)
    assert got[0].startswith(f"{path}:4:")
    assert "invalid YAML" in got[0] or "invalid" in got[0]
    path.write_text(path.read_text().splitlines()[2] + "\n")
    assert problems(path) == [f"{path}:1:85: error at [0].expect[0].min_count: `min_count` "
                              "expects a whole number >= 0"]


def test_a_bad_dataset_exits_2_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_samples(monkeypatch)
    path = write(tmp_path, "pipeline: p.yaml\ncases:\n  - {input: {}, expect: [{path: x}]}\n")
    assert engine_test(path)[0] == 2
    err = capsys.readouterr().err
    assert "golden.yaml:3:33: error at cases[0].expect[0].path: a path starts with" in err
    assert "Traceback" not in err


def test_a_dataset_without_a_pipeline_needs_one_on_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_samples(monkeypatch)
    path = write(tmp_path, "- {name: a, input: {ticket: hi}}\n")
    assert engine_test(path)[0] == 2
    assert "names no pipeline" in capsys.readouterr().err
    assert engine_test(path, str(tmp_path / "p.yaml"))[0] == 0
    assert engine_test(path, str(tmp_path / "missing.yaml"))[0] == 2
