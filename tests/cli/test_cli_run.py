"""`engine run`: one result line per input line, whatever goes wrong with some of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.registry import Registry
from engine.testing import sample_registry

ROOT = Path(__file__).resolve().parents[2]

PIPELINE = """\
version: 1
name: batchy
defaults: {timeout: 5s}
input:
  schema: {type: object, required: [n], properties: {n: {type: integer}}}
stages:
  wait:
    type: hang
    if: "input.get('delay')"
    timeout: 300ms
  invert:
    type: template
    with: {output: "{{ 100 // input.n }}"}
output: {n: "{{ input.n }}", inverse: "{{ stages.invert.output }}"}
"""


@pytest.fixture
def samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads entry points; give it the sample stages (sleep, fail, hang, finish) too."""
    monkeypatch.setattr(Registry, "from_entry_points", classmethod(
        lambda cls, builtin_only=False: sample_registry()))


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_record_from_set(samples: None, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    assert main(["run", str(pipeline), "--set", "n=4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok"
    assert result["output"] == {"n": 4, "inverse": 25}
    assert {step["stage"]: step["outcome"] for step in result["trace"]} == {
        "wait": "skipped", "invert": "ok"}


def test_batch_keeps_one_line_per_record(samples: None, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([
        '{"n": 1}',
        '{"n": 2, "delay": 2}',   # exceeds the stage timeout
        '{"n": ',                 # malformed JSON
        '',                       # blank: not a record
        '{"m": 3}',               # fails input.schema
        '{"n": 0}',               # the template divides by zero
        '{"id": "last", "n": 5}',
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    code = main(["run", str(pipeline), "-i", str(source), "-o", str(out), "-c", "3", "--trace"])
    assert code == 1
    by_index = {row["index"]: row for row in lines(out)}
    assert sorted(by_index) == [0, 1, 2, 3, 4, 5]
    assert by_index[0]["output"] == {"n": 1, "inverse": 100}
    assert by_index[5] == {**by_index[5], "id": "last", "status": "ok"}
    assert {step["stage"]: step["outcome"] for step in by_index[1]["trace"]} == {
        "wait": "timeout", "invert": "ok"}
    assert by_index[1]["error"]["stage"] == "wait"
    assert by_index[2]["error"]["type"] == "InvalidInput"
    assert f"{source}:3:" in by_index[2]["error"]["message"]
    assert "'n' is a required property" in by_index[3]["error"]["message"]
    assert by_index[4]["error"] == {**by_index[4]["error"], "stage": "invert",
                                    "type": "ZeroDivisionError"}
    err = capsys.readouterr().err
    assert "#5 id=last · ok" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "novalue"], "--set expects key=value"),
        (["--input", "missing.jsonl"], "cannot read --input missing.jsonl"),
        (["--set", "n=1", "--input", "x.jsonl"], "either --set or --input"),
    ],
)
def test_command_line_mistakes_exit_2(samples: None, tmp_path: Path, argv: list[str],
                                      message: str, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    assert main(["run", str(pipeline), *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_pipeline_exits_2_before_reading_input(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("version: 1\nname: x\nstages:\n  a: {type: tempalte}\n")
    assert main(["run", str(pipeline), "--set", "x=1"]) == 2
    err = capsys.readouterr().err
    assert f"{pipeline}:4:" in err
    assert "did you mean 'template'?" in err


SLOW = """\
version: 1
name: slow
stages:
  burn:
    type: template
    with:
      output: "{% for i in range(400) %}{% for j in range(1000) %}{% endfor %}{% endfor %}done"
"""


@pytest.mark.slow
def test_ctrl_c_flushes_finished_records_and_exits_130(tmp_path: Path) -> None:
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(SLOW)
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n" * 2000)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(pipeline), "-i", str(source), "-o", str(out),
         "-c", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_text().splitlines()) < 3) and proc.poll() is None:
        assert time.monotonic() < deadline, "no record finished within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    written = out.read_text()
    assert written.endswith("\n")
    rows = [json.loads(line) for line in written.splitlines()]
    assert 3 <= len(rows) < 2000
    assert all(row["status"] == "ok" for row in rows)
    assert "interrupted" in err
    assert "Traceback" not in err


CACHED = """\
version: 1
name: shared-cache
resources:
  responses: {type: cache, backend: memory}
stages:
  lookup:
    type: cache
    with: {resource: responses, key: "{{ input.q }}", mode: exact}
  answer:
    type: template
    needs: [lookup]
    with: {output: "answered {{ input.q }}"}
output: "{{ stages.answer.output }}"
"""


def test_with_redis_two_runs_share_a_memory_cache(tmp_path: Path, redis_url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(CACHED)
    finished_by = []
    for _ in range(2):  # two runs, each with its own resources: as two processes would be
        assert main(["run", str(pipeline), "--set", "q=hi", "--redis", redis_url]) == 0
        finished_by.append(json.loads(capsys.readouterr().out).get("finished_by"))
    assert finished_by == [None, "lookup"]
    assert main(["run", str(pipeline), "--set", "q=hi"]) == 0  # without: its own cache
    assert json.loads(capsys.readouterr().out).get("finished_by") is None
