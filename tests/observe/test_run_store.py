"""The run store: one JSONL file per run, header first, no answers or inputs, crash-tolerant."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from engine.observe.store import RunStore, read_runs, stored_record
from engine.results import RunResult, StageEvent
from engine.spec.models import Slo

SECRET = "jane.doe@example.com"


def answered(index: int) -> RunResult:
    """A record whose output, id, notes and error all carry the user's data somewhere."""
    guard = StageEvent("guard", 0.0, 0.001, "ok", notes={
        "injection": {"score": 0.9, "blocked": False, "signal": "rule",
                      "findings": [{"signal": "rule", "name": "ignore", "score": 0.9,
                                    "snippet": f"ignore {SECRET}"}]},
        "pii": [{"entity": "EMAIL_ADDRESS", "start": 0, "end": 20}]})
    answer = StageEvent("answer", 0.001, 0.2, "ok", notes={
        "tier": "smart", "llm": [{"tier": "smart", "model": "openai/smart", "input_tokens": 7,
                                  "output_tokens": 3, "cost_usd": 0.002,
                                  "attempts": [["smart", "ok"]]}]})
    return RunResult(index, f"id-{SECRET}", "ok", output={"text": f"Hello {SECRET}"},
                     duration=0.25, events=[guard, answer], started_at=1_700_000_000.0 + index,
                     trace_id=f"{index:032x}")


def failed(index: int) -> RunResult:
    event = StageEvent("answer", 0.0, 0.1, "error", detail=f"StageError: cannot read {SECRET}")
    return RunResult(index, None, "error", duration=0.1, events=[event],
                     error={"stage": "answer", "type": "StageError",
                            "message": f"cannot read {SECRET}"},
                     started_at=1_700_000_000.0, trace_id="f" * 32)


def store_three(folder: Path) -> tuple[RunStore, Path]:
    store = RunStore(folder)
    run_id = store.open_run("triage", file="pipelines/triage.yaml",
                            slo=Slo(latency_p95="250ms", error_rate=0.01),
                            stages={"guard": "guard", "answer": "generate"})
    for result in (answered(0), answered(1), failed(2)):
        store.observe("triage", {"ticket": SECRET}, result)
    store.close()
    path = store.files["triage"]
    assert path.parent == folder / "triage" and path.name.endswith(f"-{run_id}.jsonl")
    return store, path


def test_a_run_is_a_header_then_one_line_per_record(tmp_path: Path) -> None:
    _, path = store_three(tmp_path)
    header, *lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert header["kind"] == "run" and header["pipeline"] == "triage"
    assert header["file"] == "pipelines/triage.yaml"
    assert header["slo"] == {"latency_p95": 0.25, "error_rate": 0.01}
    assert header["stages"] == {"guard": "guard", "answer": "generate"}
    assert len(header["run_id"]) == 16 and header["started"] > 1_600_000_000
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[0]["trace"][1]["notes"]["llm"][0]["cost_usd"] == 0.002
    assert lines[2]["error"] == {"stage": "answer", "type": "StageError"}
    assert lines[2]["trace"][0]["detail"] == "StageError"


def test_no_answer_input_or_personal_data_reaches_the_file(tmp_path: Path) -> None:
    _, path = store_three(tmp_path)
    text = path.read_text()
    assert SECRET not in text
    for line in text.splitlines()[1:]:
        assert not {"output", "id"} & json.loads(line).keys()
    kept = json.loads(text.splitlines()[1])["trace"][0]["notes"]
    assert kept["pii"] == [{"entity": "EMAIL_ADDRESS", "start": 0, "end": 20}]
    assert kept["injection"]["findings"] == [{"signal": "rule", "name": "ignore", "score": 0.9}]


def test_read_back_equals_what_was_stored(tmp_path: Path) -> None:
    _, path = store_three(tmp_path)
    [run] = read_runs(tmp_path)
    assert run.path == path and run.pipeline == "triage" and run.skipped == 0
    assert run.records == [stored_record(r) for r in (answered(0), answered(1), failed(2))]
    assert [r.records for r in read_runs(path)] == [run.records]  # a file works too


def test_every_line_is_on_disk_before_close(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open_run("triage")
    store.observe("triage", None, answered(0))
    path = store.files["triage"]
    assert len(path.read_text().splitlines()) == 2  # nothing buffered in the process
    store.close()


def test_a_line_cut_by_a_crash_is_skipped_and_counted(tmp_path: Path) -> None:
    _, path = store_three(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps(stored_record(answered(3))).encode()[:40])
    [run] = read_runs(tmp_path)
    assert [r["index"] for r in run.records] == [0, 1, 2]
    assert run.skipped == 1


def test_files_that_are_not_runs_are_ignored(tmp_path: Path) -> None:
    store_three(tmp_path)
    (tmp_path / "outputs.jsonl").write_text('{"index": 0, "status": "ok"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    assert [run.pipeline for run in read_runs(tmp_path)] == ["triage"]


def test_observe_without_open_run_still_writes_a_header(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.observe("adhoc", None, answered(0))
    store.close()
    [run] = read_runs(tmp_path)
    assert (run.header["pipeline"], run.header["file"], run.header["slo"]) == ("adhoc", None,
                                                                              None)
    assert len(run.records) == 1


def test_a_store_that_cannot_write_never_fails_the_run(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the folder should be")
    store = RunStore(blocker)
    with caplog.at_level(logging.WARNING, logger="engine.observe.store"):
        store.open_run("triage")
        store.observe("triage", None, answered(0))
        store.observe("triage", None, answered(1))
        store.close()
    assert store.dropped == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "disabled" in warnings[0] and "2 record(s)" in warnings[1]


def test_extra_measurements_join_the_record_s_line(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.observe("triage", {}, answered(0), extra={"golden": {"case": "c1", "passed": False}})
    store.observe("triage", {}, answered(1))
    store.close()
    _, first, second = map(json.loads, store.files["triage"].read_text().splitlines())
    assert first["golden"] == {"case": "c1", "passed": False} and first["index"] == 0
    assert "golden" not in second
