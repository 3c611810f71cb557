"""Batches on Ray: one result per input index, equal to a local run, even when a worker dies.

One local Ray (2 CPUs) serves the whole module: starting Ray costs seconds. `run_on_ray`
finds it already running, so it neither starts nor shuts it down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from engine.compile import compile_file
from engine.results import RunResult
from engine.runtime import ray_runner
from engine.runtime.batch import InputRecord, run_batch
from engine.runtime.ray_runner import WORKER_PREFIX, run_on_ray

PIPELINE = """
version: 1
name: ray-batch
input:
  schema:
    type: object
    properties: {n: {type: integer}}
    required: [n]
stages:
  work:
    type: template
    with:
      output: "WORK"
  answer:
    type: template
    needs: [work]
    with: {output: {n: "{{ input.n * 2 }}", spun: "{{ stages.work.output }}"}}
output: "{{ stages.answer.output }}"
"""

WORK = ("{% set ns = namespace(t=0) %}{% for i in range(SPIN) %}{% set ns.t = ns.t + i %}"
        "{% endfor %}{{ ns.t }}")
"""Sums range(SPIN): a template stage that takes a while, so a worker dies mid-block."""


def _pipeline(tmp_path: Path, spin: int = 1) -> Path:
    """A template-only pipeline; `spin` loop rounds per record make blocks take a while."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(PIPELINE).replace("WORK", WORK.replace("SPIN", str(spin))))
    return path


def _records(count: int) -> Iterator[InputRecord]:
    """Valid records, with a malformed line at index 7 and an invalid record at index 11."""
    for index in range(count):
        if index == 7:
            yield InputRecord(index, problem="<input>:8:1: invalid JSON: Expecting value")
        elif index == 11:
            yield InputRecord(index, {"n": "eleven"}, "r11")
        else:
            yield InputRecord(index, {"n": index}, f"r{index}")


@pytest.fixture(scope="module", autouse=True)
def _ray() -> Iterator[None]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()


def _on_ray(path: Path, items: Iterator[InputRecord], **options: Any) -> list[RunResult]:
    results: list[RunResult] = []
    asyncio.run(run_on_ray(path, None, items, results.append, address=None, **options))
    return results


def _by_index(results: list[RunResult], count: int) -> dict[int, RunResult]:
    """Results keyed by index, after checking there is exactly one per index."""
    indices = sorted(result.index for result in results)
    assert indices == list(range(count)), "a missing or duplicated index"
    return {result.index: result for result in results}


def test_same_results_as_a_local_run(tmp_path: Path) -> None:
    path = _pipeline(tmp_path)
    on_ray = _by_index(_on_ray(path, _records(300), block_size=16, concurrency=8), 300)
    local: list[RunResult] = []
    asyncio.run(run_batch(compile_file(path), _records(300), local.append))
    assert [(on_ray[r.index].status, on_ray[r.index].output) for r in local] == [
        (r.status, r.output) for r in local
    ]
    assert on_ray[0].output == {"n": 0, "spun": "0"}


def test_bad_records_are_error_results(tmp_path: Path) -> None:
    results = _by_index(_on_ray(_pipeline(tmp_path), _records(20)), 20)
    errored = {index for index, result in results.items() if result.status == "error"}
    assert errored == {7, 11}
    assert results[7].error is not None and "invalid JSON" in results[7].error["message"]
    assert results[11].error is not None and results[11].error["type"] == "InvalidInput"


def _killing_one_worker(tmp_path: Path, count: int) -> tuple[list[RunResult], list[str]]:
    """Run `count` slow records, killing one worker when the first result arrives."""
    results: list[RunResult] = []
    killed: list[str] = []

    def sink(result: RunResult) -> None:
        results.append(result)
        if not killed:
            name = next(n for n in ray.util.list_named_actors() if n.startswith(WORKER_PREFIX))
            ray.kill(ray.get_actor(name), no_restart=False)
            killed.append(name)

    items = (InputRecord(i, {"n": i}, f"r{i}") for i in range(count))
    asyncio.run(run_on_ray(_pipeline(tmp_path, spin=3000), None, items, sink, address=None,
                           block_size=10, concurrency=4))
    return results, killed


def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Kill one worker when the first results arrive: Ray restarts it and retries its blocks;
    every index still comes out once, and ok."""
    results, killed = _killing_one_worker(tmp_path, 400)
    by_index = _by_index(results, 400)
    assert killed
    assert all(result.status == "ok" for result in by_index.values())
    assert by_index[399].output == {"n": 798, "spun": str(3000 * 2999 // 2)}


def test_a_block_lost_for_good_is_error_results(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without restarts, the killed worker's blocks fail: their records are counted as
    errors (so the exit code says so), never dropped."""
    monkeypatch.setattr(ray_runner, "_RETRIES", 0)
    results, _ = _killing_one_worker(tmp_path, 100)
    lost = [r for r in _by_index(results, 100).values() if r.status == "error"]
    assert lost
    assert all(r.error is not None and r.error["type"] == "WorkerLost" for r in lost)


def test_a_pipeline_workers_cannot_compile_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ray_runner.ClusterError, match="a Ray worker could not compile"):
        _on_ray(tmp_path / "missing.yaml", _records(3))


def test_a_block_is_delivered_once_per_index() -> None:
    """Duplicates in a block's results are dropped; a record it did not answer is an error."""
    block = [InputRecord(i, {"n": i}, f"r{i}") for i in range(3)]
    first, again = RunResult(0, "r0", "ok", output=1), RunResult(0, "r0", "ok", output=2)
    delivered: list[RunResult] = []

    async def deliver() -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result([first, again, RunResult(2, "r2", "ok")])
        ray_runner._deliver(block, future, delivered.append)

    asyncio.run(deliver())
    assert [(r.index, r.status) for r in delivered] == [(0, "ok"), (2, "ok"), (1, "error")]
    assert delivered[0] is first


LIMITED = """
version: 1
name: ray-limited
models:
  stub: {{model: openai/stub, api_base: "{base}", api_key: stub, timeout: 10s,
         limits: {{concurrency: 3, max_wait: 20s}}}}
stages:
  answer:
    type: generate
    with: {{models: [stub], messages: [{{role: user, content: "ticket {{{{ input.n }}}}"}}]}}
output: "{{{{ stages.answer.output.text }}}}"
"""


@pytest.mark.parametrize("shared", [True, False])
def test_a_model_s_concurrency_limit_holds_across_workers_through_redis(
        tmp_path: Path, redis_url: str, shared: bool) -> None:
    from engine.providers.stub import StubProvider
    from engine.providers.stub_config import StubConfig

    with StubProvider(StubConfig(seed=1, latency=0.1)) as stub:
        path = tmp_path / "limited.yaml"
        path.write_text(LIMITED.format(base=stub.base_url))
        items = (InputRecord(n, {"n": n}, n) for n in range(36))
        results = _on_ray(path, items, workers=2, concurrency=8, block_size=6,
                          redis_url=redis_url if shared else None)
    assert all(result.ok for result in _by_index(results, 36).values())
    if shared:
        assert stub.peak_in_flight == 3  # one limit for both workers
    else:
        assert stub.peak_in_flight > 3  # each worker kept its own 3 in flight


def test_an_unreachable_cluster_is_one_clear_error() -> None:
    class Unreachable:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(address: str) -> None:
            raise ConnectionError("ray client connection timeout")

    with pytest.raises(ray_runner.ClusterError, match=r"cannot reach the Ray cluster at "
                       r"ray://head:10001: ray client connection timeout; .*RAY_AUTH_MODE"):
        ray_runner._init(Unreachable, "ray://head:10001", 2)
