"""`engine compare`: two versions on the same records — planted disagreements found and
counted exactly, deltas measured, both runs stored as variants, broken inputs exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.observe.store import read_runs
from engine.quality.compare import Pair, compare_pairs, fields_of, pair_lines, value_of

V1 = """\
version: 1
name: triage
input:
  schema: {type: object, required: [n], properties: {n: {type: integer}}}
stages:
  label:
    type: template
    with:
      output:
        category: "{{ 'even' if input.n % 2 == 0 else 'odd' }}"
        urgency: "{{ 'high' if input.n > THRESHOLD else 'low' }}"
output: "{{ stages.label.output }}"
"""


def write_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """v2 moves the urgency threshold from 5 to 7: records 6 and 7 change, nothing else."""
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(V1.replace("THRESHOLD", "5"))
    v2.write_text(V1.replace("THRESHOLD", "7"))
    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps({"id": f"t{n}", "n": n}) + "\n" for n in range(10)))
    return v1, v2, records


def test_cli_finds_the_planted_disagreements_and_stores_both_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2, records = write_pair(tmp_path)
    out, store = tmp_path / "cmp.json", tmp_path / "runs"
    code = main(["compare", str(v1), str(v2), "-i", str(records), "-c", "3", "--json", str(out),
                 "--store", str(store)])
    assert code == 0
    data = json.loads(out.read_text())
    assert (data["a"], data["b"], data["pairs"]) == ("A:v1", "B:v2", 10)
    assert {f["field"]: (f["agree"], f["of"]) for f in data["fields"]} == {
        "category": (10, 10), "urgency": (8, 10)}
    assert [(d["key"], d["id"], d["field"], d["a"], d["b"]) for d in data["disagreements"]] == [
        (6, "t6", "urgency", "high", "low"), (7, "t7", "urgency", "high", "low")]
    printed = capsys.readouterr().out
    assert "6 (t6)" in printed and "7 (t7)" in printed
    assert "B:v2 agrees with A:v1 on 100.0% of category, 80.0% of urgency" in printed
    runs = list(read_runs(store))
    assert sorted(len(run.records) for run in runs) == [10, 10]
    assert sorted({r["variant"] for run in runs for r in run.records}) == ["A:v1", "B:v2"]
    assert {run.pipeline for run in runs} == {"triage"}  # one pipeline, two variants
    assert all("output" not in r for run in runs for r in run.records)  # the store's rule


def test_min_agreement_and_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2, records = write_pair(tmp_path)
    base = ["compare", str(v1), str(v2), "-i", str(records), "--no-store"]
    assert main([*base, "--min-agreement", "0.9"]) == 1
    assert "agreement below 90.0%: urgency 80.0%" in capsys.readouterr().err
    assert main([*base, "--min-agreement", "0.8"]) == 0
    out = tmp_path / "only.json"
    assert main([*base, "--fields", "category", "--json", str(out),
                 "--min-agreement", "1"]) == 0
    assert [f["field"] for f in json.loads(out.read_text())["fields"]] == ["category"]
    capsys.readouterr()
    assert main([*base, "--fields", "category,urgencey"]) == 2  # a typo, not 100 % agreement
    assert "--fields: no output has urgencey" in capsys.readouterr().err


def test_a_broken_pipeline_or_input_exits_2_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1, _, records = write_pair(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text(V1.replace("THRESHOLD", "5").replace("type: template", "type: nope"))
    assert main(["compare", str(v1), str(broken), "-i", str(records), "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml:" in err and "nope" in err
    missing = tmp_path / "missing.jsonl"
    assert main(["compare", str(v1), str(v1), "-i", str(missing), "--no-store"]) == 2
    assert f"cannot read --input {missing}" in capsys.readouterr().err


def line(index: int, output: Any = None, *, error: str | None = None, ms: float = 10.0,
         cost: float = 0.0, tokens: int = 0) -> dict[str, Any]:
    call = {"tier": "t", "model": "m", "input_tokens": tokens, "output_tokens": 0,
            "cost_usd": cost, "attempts": [["t", "ok"]]}
    out: dict[str, Any] = {"index": index, "id": None, "duration_ms": ms,
                           "trace": [{"stage": "answer", "start_ms": 0, "duration_ms": ms,
                                      "outcome": "ok", "notes": {"llm": [call]}}]}
    if error:
        return {**out, "status": "error", "error": {"stage": "answer", "type": error}}
    return {**out, "status": "ok", "output": output}


def test_errors_missing_fields_and_whole_outputs_count_as_values() -> None:
    pairs = [
        Pair(0, line(0, {"a": 1, "b": [1, 2]}), line(0, {"b": [1, 2], "a": 1.0})),  # agree
        Pair(1, line(1, {"a": 1}), line(1, {"a": 1, "b": 2})),          # b missing in A
        Pair(2, line(2, {"a": 1, "b": 2}), line(2, error="Timeout")),   # B failed
        Pair(3, line(3, error="Timeout"), line(3, error="Timeout")),    # both failed alike
    ]
    assert fields_of(pairs) == ["a", "b"]
    result = compare_pairs(pairs)
    assert [(f.field, f.agree, f.of) for f in result.fields] == [("a", 3, 4), ("b", 2, 4)]
    assert [(d.key, d.field, str(d.a), str(d.b)) for d in result.disagreements] == [
        (1, "b", "(missing)", "2"), (2, "a", "1", "error (Timeout)"),
        (2, "b", "2", "error (Timeout)")]
    assert result.errors == (1, 2)
    whole = [Pair(i, line(i, f"answer {i % 3}"), line(i, f"answer {i % 2}")) for i in range(6)]
    assert fields_of(whole) == ["output"]
    assert value_of(whole[0].a, "output") == "answer 0"
    assert compare_pairs(whole).fields[0].agree == 2  # i = 0 and 1


def test_paired_deltas_measure_cost_latency_and_tokens() -> None:
    """B halves the cost and adds 50 ms to every record: both significant, tokens the same."""
    pairs = [Pair(i, line(i, "x", ms=100 + i, cost=0.002, tokens=300),
                  line(i, "x", ms=150 + i, cost=0.001, tokens=300)) for i in range(60)]
    result = compare_pairs(pairs, labels=("v1", "v2"))
    measures = {m.name: m for m in result.measures}
    cost = measures["cost per record"]
    assert (cost.a, cost.b) == pytest.approx((0.002, 0.001))
    assert cost.diff is not None and cost.diff.significant
    assert cost.diff.estimate == pytest.approx(-0.001)
    p95 = measures["latency p95"]
    assert p95.diff is not None and p95.diff.significant
    assert p95.diff.estimate == pytest.approx(0.05)
    assert measures["tokens per record"].same
    assert ("cost per record -$0.001000 (-50%; 95% CI -$0.001000 … -$0.001000, significant)"
            in result.verdict())


def test_pair_lines_joins_by_any_key_and_counts_the_unmatched() -> None:
    a = [{"trace_id": "x", "n": 1}, {"trace_id": "y", "n": 2}]
    b = [{"trace_id": "y", "n": 3}, {"trace_id": "z", "n": 4}]
    pairs, unmatched = pair_lines(a, b, key="trace_id")
    assert [(p.key, p.a["n"], p.b["n"]) for p in pairs] == [("y", 2, 3)]
    assert unmatched == 2
