"""`engine run --resume`: an interrupted batch — even by kill -9 — completes exactly the
missing records, one line per input record, no duplicates, no gaps."""

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

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = """\
version: 1
name: resumable
stages:
  invert:
    type: template
    with: {output: "{{ 100 // input.n }}"}
output: "{{ stages.invert.output }}"
"""
SLOW = """\
version: 1
name: slow
stages:
  burn:
    type: template
    with:
      output: "{% for i in range(300) %}{% for j in range(999) %}{% endfor %}{% endfor %}\\
{{ input.n }}"
"""


def rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def setup(tmp_path: Path, text: str, records: list[dict[str, object]]) -> tuple[Path, Path]:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    return pipeline, source


def test_resume_skips_what_is_done_drops_a_torn_line_and_fills_the_gaps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline, source = setup(tmp_path, PIPELINE, [{"id": f"r{n}", "n": n} for n in range(1, 7)])
    out = tmp_path / "out.jsonl"
    done = {"index": 1, "id": "r2", "status": "ok", "output": "answered before"}
    out.write_text(json.dumps(done) + "\n" + '{"index": 3, "id": "r4", "sta')  # torn by a kill
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(out), "--resume"]) == 0
    written = rows(out)
    assert sorted(row["index"] for row in written) == list(range(6))  # one line per record
    assert written[0]["output"] == "answered before"  # not redone
    assert "resuming: 1 records already answered" in capsys.readouterr().err


def test_retry_errors_redoes_only_the_errored_records(tmp_path: Path) -> None:
    pipeline, source = setup(tmp_path, PIPELINE, [{"n": 5}, {"n": 0}, {"n": 4}])
    out = tmp_path / "out.jsonl"
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(out)]) == 1
    first = {row["index"]: row for row in rows(out)}
    assert first[1]["status"] == "error"
    source.write_text('{"n": 5}\n{"n": 50}\n{"n": 4}\n')  # the bad record fixed upstream
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(out), "--resume"]) == 1
    assert len(rows(out)) == 3  # without --retry-errors the error line stands
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(out), "--resume",
                 "--retry-errors"]) == 0
    again = {row["index"]: row for row in rows(out)}
    assert len(again) == 3 == len(rows(out)) and again[1]["output"] == 2
    assert again[0] == first[0] and again[2] == first[2]


@pytest.mark.parametrize(("argv", "message"), [
    (["--resume"], "--resume needs --output FILE"),
    (["--retry-errors", "-o", "x.jsonl"], "--retry-errors goes with --resume"),
])
def test_resume_mistakes_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                argv: list[str], message: str) -> None:
    pipeline, source = setup(tmp_path, PIPELINE, [{"n": 1}])
    assert main(["run", str(pipeline), "-i", str(source), *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_input_that_changed_under_the_output_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline, source = setup(tmp_path, PIPELINE, [{"id": "a", "n": 1}, {"id": "b", "n": 2}])
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"index": 0, "id": "zzz", "status": "ok"}) + "\n")
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(out), "--resume"]) == 2
    assert "input line 1 has id 'a', but the output answered id 'zzz'" in (
        capsys.readouterr().err)


@pytest.mark.slow
def test_kill_9_then_resume_completes_exactly_the_missing_records(tmp_path: Path) -> None:
    total = 400
    pipeline, source = setup(tmp_path, SLOW, [{"n": n} for n in range(total)])
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "engine", "run", str(pipeline), "-i", str(source), "-o",
            str(out), "-c", "4", "--no-store"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_text().count("\n") < 20) and proc.poll() is None:
        assert time.monotonic() < deadline, "no records within 60 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = [line for line in out.read_text().splitlines(keepends=True)
              if line.endswith("\n")]
    assert 20 <= len(before) < total
    done = subprocess.run([*argv, "--resume"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    written = rows(out)
    assert sorted(row["index"] for row in written) == list(range(total))
    assert [row["output"] for row in sorted(written, key=lambda r: r["index"])] == [
        str(n) for n in range(total)]
    assert out.read_text().splitlines(keepends=True)[:len(before)] == before  # kept, not redone
