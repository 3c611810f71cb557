"""`engine report --by variant`: an A/B test from stored runs — a planted difference is called
significant and a null one is not; variants recorded by a weighted route reach the store."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.errors import SpecError
from engine.observe.store import RunStore, read_runs
from engine.quality.variants import read_feedback, variant_of, variant_reports
from engine.results import RunResult, StageEvent, Status
from engine.testing import compile_text


def routed(index: int, variant: str, *, seconds: float, status: Status = "ok",
           cost: float = 0.0) -> RunResult:
    """A record whose weighted route `split` took `variant`."""
    notes: dict[str, Any] = {"llm": [{"tier": "t", "model": "m", "input_tokens": 10,
                                      "output_tokens": 5, "cost_usd": cost,
                                      "attempts": [["t", "ok"]]}]}
    events = [StageEvent("split", 0.0, 0.0001, "ok", notes={"variant": variant}),
              StageEvent("answer", 0.0001, seconds, "ok", notes=notes)]
    error = {"stage": "answer", "type": "Boom", "message": "x"} if status == "error" else None
    return RunResult(index, None, status, error=error, duration=seconds,
                     events=events, started_at=1_700_000_000.0 + index,
                     trace_id=f"{variant}{index:031x}"[:32])


def write_ab_store(folder: Path) -> None:
    """300 records per variant. Planted: b is ~100 ms slower and passes fewer golden cases
    (180 vs 270 of 300). Null: the same error rate (3 %), cost, and feedback share (~70 %)."""
    rng = random.Random(1)
    store = RunStore(folder)
    store.open_run("shop")
    for i in range(600):
        variant = "a" if i % 2 == 0 else "b"
        slow = 0.1 if variant == "b" else 0.0
        result = routed(i, variant, seconds=rng.uniform(0.1, 0.3) + slow,
                        status="error" if (i // 2) % 33 == 0 else "ok", cost=0.001)
        passed = (i // 2) % 10 < (9 if variant == "a" else 6)
        store.observe("shop", None, result,
                      extra={"golden": {"dataset": "d", "case": str(i), "passed": passed}})
    store.close()
    feedback = folder / "feedback"
    feedback.mkdir()
    lines = [{"kind": "feedback", "trace_id": f"{'a' if i % 2 == 0 else 'b'}{i:031x}"[:32],
              "response_id": "x", "score": 1 if (i // 2) % 10 < 7 else -1, "time": 1.0}
             for i in range(0, 600, 3)]
    (feedback / "x-1.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_planted_difference_is_significant_and_null_one_is_not(tmp_path: Path) -> None:
    write_ab_store(tmp_path)
    [report] = variant_reports(read_runs(tmp_path), read_feedback(tmp_path / "feedback"))
    assert report.pipeline == "shop" and report.baseline == "a"
    assert [(arm.name, arm.records) for arm in report.arms] == [("a", 300), ("b", 300)]
    a, b = (arm.shares() for arm in report.arms)
    assert (a["golden pass rate"].hits, b["golden pass rate"].hits) == (270, 180)
    assert (a["error rate"].hits, b["error rate"].hits) == (10, 10)
    assert a["positive feedback"].of + b["positive feedback"].of == 200
    found = {m.name: m for m in report.measures["b"]}
    assert {name for name, m in found.items() if m.diff and m.diff.significant} == {
        "golden pass rate", "latency p50", "latency p95"}
    golden = found["golden pass rate"].diff
    assert golden is not None and golden.method == "newcombe"
    assert golden.estimate == pytest.approx(-0.3)
    assert found["latency p50"].diff is not None
    assert found["latency p50"].diff.low <= 0.1 <= found["latency p50"].diff.high
    assert report.warnings == []
    [verdict] = report.verdicts()
    assert verdict.startswith("shop: b vs a: significant at 95%: golden pass rate -30.0 pp")


def test_cli_by_variant_as_tables_and_json(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_ab_store(tmp_path)
    assert main(["report", str(tmp_path), "--by", "variant"]) == 0
    out = capsys.readouterr().out
    assert "shop by variant" in out and "shop: against a" in out
    assert "90.0% (270 of 300)" in out and "60.0% (180 of 300)" in out
    assert "shop: b vs a: significant at 95%" in out
    assert main(["report", str(tmp_path), "--by", "variant", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [variants] = data["by_variant"]
    flags = {m["measure"]: m["diff"]["significant"] for m in variants["versus_baseline"]["b"]}
    assert flags == {"error rate": False, "golden pass rate": True, "positive feedback": False,
                     "latency p50": True, "latency p95": True, "cost per request": False}
    assert data["reports"][0]["records"] == 600  # the usual report still comes along


def test_no_variant_exits_2_and_few_records_warn(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    store.open_run("plain")
    store.observe("plain", None, RunResult(0, None, "ok", duration=0.1, trace_id="0" * 32))
    store.close()
    assert main(["report", str(tmp_path), "--by", "variant"]) == 2
    assert "no stored record" in capsys.readouterr().err
    store = RunStore(tmp_path)
    store.open_run("tiny")
    for i in range(8):
        store.observe("tiny", None, routed(i, "ab"[i % 2], seconds=0.1))
    store.close()
    assert main(["report", str(tmp_path), "--by", "variant", "-p", "tiny"]) == 0
    assert "variant b has 4 records (fewer than 30)" in capsys.readouterr().err


def test_variant_of_prefers_the_lines_label_and_pairs_several_routes() -> None:
    trace = [{"stage": "tone", "start_ms": 2, "notes": {"variant": "formal"}},
             {"stage": "split", "start_ms": 1, "notes": {"variant": "b"}}]
    assert variant_of({"trace": trace}) == "split=b, tone=formal"
    assert variant_of({"trace": trace[1:]}) == "b"
    assert variant_of({"trace": trace, "variant": "v2"}) == "v2"
    assert variant_of({"trace": [{"stage": "x", "notes": {"llm": []}}]}) is None


def test_feedback_keeps_the_latest_score_per_answer(tmp_path: Path) -> None:
    lines = [{"kind": "feedback", "trace_id": "t1", "score": 1, "time": 2.0},
             {"kind": "feedback", "trace_id": "t1", "score": -1, "time": 1.0},
             {"kind": "feedback", "trace_id": "t2", "score": -0.5, "time": 1.0},
             {"kind": "feedback", "trace_id": "t2", "score": 0.5, "time": 3.0},
             {"kind": "other", "trace_id": "t3", "score": 1}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{cut")
    assert read_feedback(tmp_path) == {("t1", None): 1.0, ("t2", None): 0.5}


def test_feedback_counts_only_for_runs_of_the_tenant_that_sent_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open_run("shop")
    for i, variant in enumerate(("a", "b")):
        store.observe("shop", None, routed(i, variant, seconds=0.1, status="ok", cost=0.0),
                      extra={"tenant": "acme"})
    store.close()
    (tmp_path / "feedback").mkdir()
    lines = [{"kind": "feedback", "trace_id": f"a{0:031x}", "score": 1, "tenant": "acme"},
             {"kind": "feedback", "trace_id": f"b{1:031x}", "score": -1, "tenant": "rival"}]
    (tmp_path / "feedback" / "x.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    [report] = variant_reports(read_runs(tmp_path), read_feedback(tmp_path / "feedback"))
    a, b = (arm.shares()["positive feedback"] for arm in report.arms)
    assert (a.hits, a.of) == (1, 1)
    assert b.of == 0  # the rival's score for acme's answer is not joined


# -- a weighted route records its variant -----------------------------------------------------
WEIGHTED = """\
version: 1
name: ab
input:
  schema: {type: object, required: [user], properties: {user: {type: string}}}
stages:
  split:
    type: route
    with:
      key: "{{ input.user }}"
      routes: [{weight: 1, to: old, name: control}, {weight: 1, to: new}]
  old: {type: template, needs: [split], with: {output: old}}
  new: {type: template, needs: [split], with: {output: new}}
output: "{{ stages.old.output or stages.new.output }}"
"""


def test_weighted_route_variants_reach_the_store_and_the_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline, records = tmp_path / "ab.yaml", tmp_path / "in.jsonl"
    pipeline.write_text(WEIGHTED)
    records.write_text("".join(json.dumps({"user": f"u{i}"}) + "\n" for i in range(40)))
    out, store = tmp_path / "out.jsonl", tmp_path / "runs"
    assert main(["run", str(pipeline), "-i", str(records), "-o", str(out),
                 "--store", str(store)]) == 0
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    routes = [next(e for e in r["trace"] if e["stage"] == "split") for r in answers]
    taken = {r["index"]: e["notes"]["variant"] for r, e in zip(answers, routes, strict=True)}
    assert set(taken.values()) == {"control", "new"}  # the default name: the targets
    assert all((r["output"] == "old") == (taken[r["index"]] == "control") for r in answers)
    [run] = read_runs(store)
    assert {r["index"]: variant_of(r) for r in run.records} == taken
    capsys.readouterr()
    assert main(["report", str(store), "--by", "variant", "--json"]) == 0
    [variants] = json.loads(capsys.readouterr().out)["by_variant"]
    counts = {v["variant"]: v["records"] for v in variants["variants"]}
    assert counts == {name: list(taken.values()).count(name) for name in ("control", "new")}


async def test_route_output_says_the_variant() -> None:
    pipeline = compile_text(WEIGHTED.replace('output: "{{ stages.old.output or stages.new.output '
                                             '}}"', 'output: "{{ stages.split.output }}"'))
    result = await pipeline.run({"user": "ann"})
    assert result.output["variant"] in ("control", "new")
    assert result.output["to"] == ["old" if result.output["variant"] == "control" else "new"]


@pytest.mark.parametrize(("routes", "message"), [
    ("[{when: 'true', to: old, name: x}]", "`name` names a variant of a weighted route"),
    ("[{weight: 1, to: old, name: x}, {weight: 1, to: new, name: x}]",
     "two weighted rules are the same variant"),
])
def test_variant_names_are_checked(routes: str, message: str) -> None:
    text = WEIGHTED.replace(
        "routes: [{weight: 1, to: old, name: control}, {weight: 1, to: new}]",
        f"routes: {routes}")
    if "when" in routes:
        text = text.replace('key: "{{ input.user }}"\n      ', "")
    with pytest.raises(SpecError) as caught:
        compile_text(text)
    assert any(message in d.message for d in caught.value.diagnostics)
