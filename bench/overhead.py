"""How much does `engine` cost on top of the work it schedules? Prints figures, asserts nothing.

The machine running this is noisy, so every figure is a ratio against a baseline measured in the
same process, interleaved round by round, and summarised by medians:

(a) per-record overhead of a 7-stage linear chain of trivial stages vs a hand-written coroutine;
(b) 5,000 records x 200 ms at concurrency 64 through `run_batch` vs the ideal 5000*0.2/64 s;
(c) `engine validate` wall time (a real subprocess) on the largest example pipeline;
(d) the same chain as a Haystack pipeline: per-record latency and throughput at concurrency 64.

Run: `.venv/bin/python bench/overhead.py [--quick]` (see bench/README.md).
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from report import Row, print_table

from engine.compile import CompiledPipeline, compile_pipeline
from engine.registry import Registry
from engine.runtime.batch import InputRecord, run_batch
from engine.runtime.context import StageContext
from engine.spec import parse_spec
from engine.stages.base import Stage, StageConfig

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network from a benchmark

ROOT = Path(__file__).resolve().parent.parent
CHAIN = 7
CONCURRENCY = 64
Runner = Callable[[dict[str, int]], Awaitable[Any]]


class StepConfig(StageConfig):
    source: str | None = None
    """The upstream stage whose output this step adds 1 to; None reads `input.n`."""


class StepStage(Stage[StepConfig]):
    """Trivial on purpose: one yield to the loop and an addition, so engine's cost dominates.

    It reads upstream through `ctx.stages` rather than a template so that the figure is the
    executor's overhead, not Jinja's.
    """

    Config = StepConfig

    async def run(self, ctx: StageContext) -> Any:
        await asyncio.sleep(0)
        source = self.config.source
        return (ctx.input["n"] if source is None else ctx.stages[source]["output"]) + 1


class NapConfig(StageConfig):
    seconds: float = 0.2  # the stand-in model call's latency


class NapStage(Stage[NapConfig]):
    """A stand-in for a model call: all waiting, no CPU, so only scheduling can waste time."""

    Config = NapConfig

    async def run(self, ctx: StageContext) -> Any:
        await asyncio.sleep(self.config.seconds)
        return ctx.input["n"]


REGISTRY = Registry.of({"step": StepStage, "nap": NapStage})


def chain_yaml() -> str:
    lines = ["version: 1", "name: bench-chain", "stages:", "  s0: {type: step}"]
    lines += [f"  s{i}: {{type: step, needs: [s{i - 1}], with: {{source: s{i - 1}}}}}"
              for i in range(1, CHAIN)]
    return "\n".join(lines) + "\n"


def compile_text(text: str) -> CompiledPipeline:
    return compile_pipeline(parse_spec(text, "<bench>"), REGISTRY)


async def _plus_one(value: int) -> int:
    await asyncio.sleep(0)
    return value + 1


async def baseline(record: dict[str, int]) -> int:
    """What a person would write by hand: the same 7 awaits and additions, no framework."""
    value = record["n"]
    for _ in range(CHAIN):
        value = await _plus_one(value)
    return value


def engine_runner(pipeline: CompiledPipeline) -> Runner:
    async def run(record: dict[str, int]) -> Any:
        return (await pipeline.run(record)).output

    return run


def haystack_runner() -> Runner | None:
    """The chain as a Haystack pipeline, or None when haystack-ai is not installed."""
    try:
        import haystack
        from haystack import component
    except ImportError:
        return None

    @component
    class AddOne:
        @component.output_types(value=int)
        def run(self, value: int) -> dict[str, int]:
            return {"value": value + 1}

        @component.output_types(value=int)
        async def run_async(self, value: int) -> dict[str, int]:
            await asyncio.sleep(0)
            return {"value": value + 1}

    # Haystack 2.x has `AsyncPipeline`; 3.x folded `run_async` into `Pipeline`.
    pipe = getattr(haystack, "AsyncPipeline", None) or haystack.Pipeline
    pipe = pipe()
    for i in range(CHAIN):
        pipe.add_component(f"s{i}", AddOne())
    for i in range(1, CHAIN):
        pipe.connect(f"s{i - 1}.value", f"s{i}.value")

    async def run(record: dict[str, int]) -> Any:
        out = await pipe.run_async({"s0": {"value": record["n"]}})
        return out[f"s{CHAIN - 1}"]["value"]

    return run


async def per_record(run: Runner, records: list[dict[str, int]]) -> float:
    start = time.perf_counter()
    for record in records:
        await run(record)
    return (time.perf_counter() - start) / len(records)


async def latency_medians(runners: dict[str, Runner], rounds: int, size: int) -> dict[str, float]:
    """Median seconds per record for each runner; rounds interleave so noise hits all alike."""
    records = [{"n": i} for i in range(size)]
    for name, run in runners.items():
        got = await run({"n": 1})
        if got != 1 + CHAIN:  # a sanity check of the setup, not a timed assertion
            raise SystemExit(f"{name} computed {got!r}, expected {1 + CHAIN}")
        await per_record(run, records[:100])  # warm up
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(await per_record(run, records))
    return {name: statistics.median(s) for name, s in samples.items()}


async def batch_wall(pipeline: CompiledPipeline, count: int) -> tuple[float, int]:
    """Wall seconds for `count` records through `run_batch`, and how many results came back."""
    results: list[Any] = []  # the sink only counts; appending is the cheapest way to count
    items = (InputRecord(i, {"n": i}) for i in range(count))
    start = time.perf_counter()
    await run_batch(pipeline, items, results.append, concurrency=CONCURRENCY)
    return time.perf_counter() - start, len(results)


async def gated_rate(run: Runner, count: int) -> float:
    """Records/s with one task per record and at most CONCURRENCY in flight (a semaphore)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await run({"n": i})

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - start)


async def throughputs(pipeline: CompiledPipeline, hay: Runner, count: int) -> tuple[float, float]:
    """Median records/s over 3 interleaved rounds: engine via run_batch, Haystack via tasks."""
    engine_rates: list[float] = []
    hay_rates: list[float] = []
    for _ in range(3):
        wall, _ = await batch_wall(pipeline, count)
        engine_rates.append(count / wall)
        hay_rates.append(await gated_rate(hay, count))
    return statistics.median(engine_rates), statistics.median(hay_rates)


def largest_pipeline() -> tuple[Path, int]:
    """The example pipeline with the most stages: the worst case a user meets in `validate`."""
    sizes = []
    for path in sorted(ROOT.joinpath("pipelines").rglob("*.y*ml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("stages"), dict):
            sizes.append((len(data["stages"]), path))
    count, path = max(sizes)
    return path, count


def validate_seconds(path: Path, runs: int = 5) -> float:
    """Median wall time of the real console script; one unmeasured run warms the file cache."""
    script = Path(sys.executable).with_name("engine")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "engine"]
    cmd += ["validate", str(path)]
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def measure(quick: bool) -> list[Row]:
    rows: list[Row] = []
    chain = compile_text(chain_yaml())
    hay = haystack_runner()
    runners = {"baseline": baseline, "engine": engine_runner(chain)}
    if hay is not None:
        runners["haystack"] = hay
    rounds, size = (8, 300) if quick else (20, 500)
    print(f"(a) {CHAIN}-stage linear chain, {rounds} rounds x {size} records, sequential")
    med = await latency_medians(runners, rounds, size)
    over, ratio = med["engine"] - med["baseline"], med["engine"] / med["baseline"]
    print(f"    baseline {ms(med['baseline'])}/record   engine {ms(med['engine'])}/record")
    print(f"    overhead {ms(over)}/record (target <= 0.3 ms)   ratio {ratio:.2f} (target <= 2)")
    rows += [("(a) overhead per record", ms(over), "<= 0.300 ms", over <= 0.0003),
             ("(a) engine / hand-written", f"{ratio:.2f}x", "<= 2x", ratio <= 2)]

    count = 1000 if quick else 5000
    ideal = count * 0.2 / CONCURRENCY
    print(f"(b) {count} records x 200 ms at concurrency {CONCURRENCY} through run_batch")
    wall, done = await batch_wall(compile_text(
        "version: 1\nname: bench-nap\nstages:\n  nap: {type: nap}\n"), count)
    print(f"    wall {wall:.3f} s   ideal {ideal:.3f} s   ratio {wall / ideal:.3f} "
          f"(target <= 1.10)   results {done}/{count}")
    rows.append((f"(b) batch {count} / ideal", f"{wall / ideal:.3f}x", "<= 1.10x",
                 wall / ideal <= 1.10 and done == count))

    path, stages = largest_pipeline()
    print(f"(c) engine validate {path.relative_to(ROOT)} ({stages} stages), median of 5 runs")
    secs = validate_seconds(path)
    print(f"    {secs:.3f} s (target <= 0.6 s)")
    rows.append(("(c) engine validate", f"{secs:.3f} s", "<= 0.600 s", secs <= 0.6))

    if hay is None:
        print("(d) skipped: haystack-ai is not installed (pip install -e '.[bench]')")
        return rows
    lat = med["engine"] / med["haystack"]
    print("(d) Haystack, the same chain with Pipeline.run_async, in this process")
    print(f"    haystack {ms(med['haystack'])}/record   engine/haystack {lat:.3f} (target <= 0.5)")
    rows.append(("(d) latency engine / haystack", f"{lat:.3f}x", "<= 0.5x", lat <= 0.5))
    count = 600 if quick else 2000
    eng_rate, hay_rate = await throughputs(chain, hay, count)
    thr = eng_rate / hay_rate
    print(f"    {count} records, {CONCURRENCY} in flight: engine {eng_rate:,.0f} rec/s   "
          f"haystack {hay_rate:,.0f} rec/s   engine/haystack {thr:.2f} (target >= 1.5)")
    rows.append(("(d) throughput engine / haystack", f"{thr:.2f}x", ">= 1.5x", thr >= 1.5))
    return rows




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="scale (b) to 1,000 records and (a)/(d) down, for a fast check")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    print_table(asyncio.run(measure(args.quick)))


if __name__ == "__main__":
    main()
