"""`engine run` feeds its results to the run store (by default), metrics, traces and JSON logs;
`engine report` reads what it stored."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from engine.cli import main
from engine.compile import compile_pipeline
from engine.observe.observers import ObserveOptions, Observers
from engine.registry import Registry
from engine.spec import parse_spec

PIPELINE = """\
version: 1
name: observed
stages:
  invert:
    type: template
    with: {output: "{{ 100 // input.n }}"}
output: "{{ stages.invert.output }}"
slo: {error_rate: 0.4}
"""


def write(tmp_path: Path, records: list[dict[str, object]]) -> tuple[Path, Path]:
    pipeline = tmp_path / "observed.yaml"
    pipeline.write_text(PIPELINE)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    return pipeline, source


def test_a_run_is_stored_and_reported_and_logged_as_json(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    pipeline, source = write(tmp_path, [{"n": 4, "user_id": "jane@example.com"}, {"n": 0},
                                        {"n": 5}])
    store, logs = tmp_path / "store", tmp_path / "log.jsonl"
    code = main(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "out.jsonl"),
                 "--store", str(store), "--log-json", str(logs)])
    assert code == 1  # 100 // 0 errors one record
    assert "stored as run" in capsys.readouterr().err
    [stored] = list((store / "observed").glob("*.jsonl"))
    header, *lines = [json.loads(line) for line in stored.read_text().splitlines()]
    assert header["pipeline"] == "observed" and header["slo"] == {"error_rate": 0.4}
    assert [line["status"] for line in lines] == ["ok", "error", "ok"]
    assert all("output" not in line for line in lines)
    logged = [json.loads(line) for line in logs.read_text().splitlines()]
    runs = [line for line in logged if line["event"] == "run"]
    assert len(runs) == 3 and {line["run_id"] for line in runs} == {header["run_id"]}
    assert "jane@example.com" not in logs.read_text()
    assert main(["report", str(store)]) == 0  # 1 error in 3 is within error_rate 0.4
    pipeline.write_text(PIPELINE.replace("error_rate: 0.4", "error_rate: 0.1"))
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "out.jsonl"),
                 "--store", str(store)]) == 1
    assert main(["report", str(store)]) == 1  # the newest run's slo is breached
    assert "error_rate" in capsys.readouterr().out


def test_no_store_stores_nothing(tmp_path: Path) -> None:
    pipeline, source = write(tmp_path, [{"n": 4}])
    store = tmp_path / "store"
    assert main(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "o.jsonl"),
                 "--store", str(store), "--no-store"]) == 0
    assert not store.exists()


async def test_metrics_are_served_while_the_run_goes_on() -> None:
    pipeline = compile_pipeline(parse_spec(PIPELINE), Registry.from_entry_points())
    observers = Observers(pipeline, ObserveOptions(metrics_port=0))
    try:
        for n in (4, 5):
            observers.observe(await pipeline.run({"n": n}))
        assert observers.metrics_port
        with urllib.request.urlopen(
                f"http://127.0.0.1:{observers.metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        observers.close()
    assert 'engine_requests_total{pipeline="observed",status="ok"} 2.0' in body
