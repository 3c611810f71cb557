"""Batch throughput: records through one model call each, the stub provider answering in
200 ms — a local asyncio run against `--on ray` with 2 workers, on this machine.

Each runner is held to C calls in flight (local: `--concurrency`; Ray: that per worker),
so no runner can beat the bound N x 0.2 s / C: the figure is each run's time against the
bound for its C. The provider, not the CPU, is the limit when the bound is met: then more
workers (more C) scale throughput linearly until the provider's own limit — the README's
scaling section.

The third run is that limit: the model declares `limits: {concurrency: C}` and the Ray
workers share it through a throwaway redis-server (`--redis`), so together they keep C
calls in flight, not C per worker; its bound is the local run's. The stub reports the most
requests it answered at once in each run: the limit held if that is at most C.

    .venv/bin/python bench/batch.py [--records 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from fallback import StubProcess  # the sibling script: python puts bench/ on sys.path
from report import print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_server import start_redis  # the tests' throwaway redis-server

from engine.compile import compile_file
from engine.providers.stub_config import StubConfig
from engine.results import RunResult
from engine.runtime.batch import InputRecord, run_batch
from engine.runtime.ray_runner import run_on_ray

LATENCY = 0.2
PIPELINE = """\
version: 1
name: bench-batch
models:
  stub: {{model: openai/stub, api_base: "{base}", api_key: stub, timeout: 10s,
         transport: direct{limits}}}
defaults: {{timeout: 30s, retry: {{attempts: 1}}}}
stages:
  answer:
    type: generate
    with: {{models: [stub], messages: [{{role: user, content: "ticket {{{{ input.n }}}}"}}]}}
output: "{{{{ stages.answer.output.text }}}}"
"""


def records(n: int) -> list[InputRecord]:
    return [InputRecord(i, {"n": i}, i) for i in range(n)]


async def local(file: Path, n: int, concurrency: int) -> tuple[float, list[RunResult]]:
    pipeline = compile_file(file)
    results: list[RunResult] = []
    start = time.perf_counter()
    await run_batch(pipeline, records(n), results.append, concurrency)
    elapsed = time.perf_counter() - start
    await pipeline.resources.aclose()
    return elapsed, results


async def on_ray(file: Path, n: int, concurrency: int, workers: int,
                 redis_url: str | None = None) -> tuple[float, float, list[RunResult]]:
    """Seconds for the records (from the first result's block on: Ray's start-up is timed
    apart), and the start-up."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ready = time.perf_counter()
    results: list[RunResult] = []
    await run_on_ray(file, None, records(n), results.append, address="auto",
                     workers=workers, concurrency=concurrency, redis_url=redis_url)
    elapsed = time.perf_counter() - ready
    ray.shutdown()
    return elapsed, ready - started, results


def check(results: list[RunResult], n: int) -> int:
    if sorted(r.index for r in results) != list(range(n)):
        raise SystemExit("a runner lost or duplicated records")
    return sum(not r.ok for r in results)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n, c, w = args.records, args.concurrency, args.workers
    stub, redis = StubProcess(StubConfig(seed=1, latency=LATENCY)), start_redis()
    peaks = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            free, limited = Path(folder) / "batch.yaml", Path(folder) / "limited.yaml"
            free.write_text(PIPELINE.format(base=stub.base_url, limits=""))
            limited.write_text(PIPELINE.format(base=stub.base_url,
                                               limits=f", limits: {{concurrency: {c}}}"))
            local_s, local_results = await local(free, n, c)
            peaks.append(stub.peak())
            stub.counts(reset=True)
            ray_s, startup, ray_results = await on_ray(free, n, c, w)
            peaks.append(stub.peak())
            stub.counts(reset=True)
            shared_s, _, shared_results = await on_ray(limited, n, c, w, redis.url)
            peaks.append(stub.peak())
    finally:
        stub.close()
        redis.stop()
    report(n, c, w, startup, (local_s, ray_s, shared_s), peaks,
           [check(results, n) for results in (local_results, ray_results, shared_results)])


def report(n: int, c: int, w: int, startup: float, seconds: tuple[float, float, float],
           peaks: list[int], errors: list[int]) -> None:
    local_s, ray_s, shared_s = seconds
    bound_local, bound_ray = n * LATENCY / c, n * LATENCY / (c * w)
    print(f"{n:,} records, {LATENCY * 1000:.0f} ms per call; local: {c} in flight, "
          f"Ray: {w} workers x {c}, then {w} workers under one shared limit of {c}; "
          f"Ray start-up {startup:.1f} s (not counted)")
    print_table([
        ("errors local / ray / ray+limit", " / ".join(map(str, errors)), "0 / 0 / 0",
         not any(errors)),
        ("local records/s", f"{n / local_s:,.0f}", "", None),
        ("local time / bound", f"{local_s / bound_local:.2f}x", "", None),
        ("ray records/s", f"{n / ray_s:,.0f}", "", None),
        ("ray time / bound", f"{ray_s / bound_ray:.2f}x", "", None),
        ("ray / local throughput", f"{local_s / ray_s:.2f}x", f"<= {w}x", None),
        ("ray+limit records/s", f"{n / shared_s:,.0f}", "", None),
        ("ray+limit time / bound", f"{shared_s / bound_local:.2f}x", "", None),
        ("provider peak in flight: local / ray / ray+limit", " / ".join(map(str, peaks)),
         f"ray+limit <= {c}", peaks[2] <= c),
    ])


if __name__ == "__main__":
    asyncio.run(main())
