"""What does observability cost per request? Prints figures, asserts nothing.

The 7-stage chain of trivial stages from bench/overhead.py runs one record at a time, in
interleaved rounds (medians of per-round means, as overhead.py does), in these variants:

- off:        `await pipeline.run(record)` and nothing else;
- metrics:    the same, then `Metrics.observe(...)` on the result (engine/observe/metrics.py);
- +tracing:   metrics and `Tracing.observe(...)`, spans exported through a
              `SimpleSpanProcessor` to an in-memory exporter (emptied after each round);
- +logs:      metrics, tracing and `JsonLogs.observe(...)` writing to os.devnull;
- baseline:   the hand-written coroutine of overhead.py (the same 7 awaits), for the engine's
              own overhead.

Headline (the issue's target): engine time per record with metrics + tracing on / off,
≤ 1.15. Also printed: each variant's ratio, its cost in µs per record, and the stricter ratio
of the engine's *overhead* (time minus the hand-written baseline) with / without observers.
Tracing and logs are skipped (and said so) if engine/observe/tracing.py or logs.py is absent.

Run: `.venv/bin/python bench/observe.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
from collections.abc import Callable
from typing import IO, Any, Protocol

from overhead import CHAIN, Runner, baseline, chain_yaml, compile_text, per_record
from report import Row, print_table

from engine.compile import CompiledPipeline
from engine.observe.metrics import Metrics
from engine.results import RunResult

TARGET = 1.15
SAMPLED = (0.1, 0.01)
"""The shares of runs traced in the sampled variants."""


class Consumer(Protocol):
    def observe(self, pipeline: str, record: Any, result: RunResult) -> None: ...

    def close(self) -> None: ...


def observed_runner(pipeline: CompiledPipeline, consumers: list[Consumer]) -> Runner:
    """The chain run as the run command's sink will: every consumer sees every result."""
    name = pipeline.name

    async def run(record: dict[str, int]) -> Any:
        result = await pipeline.run(record)
        for consumer in consumers:
            consumer.observe(name, record, result)
        return result.output

    return run


def tracing_consumer(ratio: float = 1.0) -> tuple[Consumer, Callable[[], int]] | None:
    """`Tracing` over an SDK provider exporting each span to memory as it ends, and a function
    that empties the exporter (returns how many spans it held); None without tracing.py.

    Synchronous export on purpose: a `BatchSpanProcessor`'s thread would export during the
    other variants' rounds and bill them for tracing's work. `ratio` < 1 samples that share
    of runs (a head sampler on the run's random trace id; stages follow their run)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from engine.observe.tracing import Tracing
    except ImportError:
        return None
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)

    def drain() -> int:
        count = len(exporter.get_finished_spans())
        exporter.clear()
        return count

    return tracing, drain


def logs_consumer(sink: IO[str]) -> Consumer | None:
    try:
        from engine.observe.logs import JsonLogs
    except ImportError:
        return None
    return JsonLogs(sink, run_id="bench")


async def medians(runners: dict[str, Runner], rounds: int, size: int,
                  between: Callable[[], object]) -> dict[str, float]:
    """Median seconds per record for each runner, rounds interleaved; `between` runs after
    each round, untimed (draining the span exporter), then a full collection, so that one
    variant's garbage is not collected in another's round."""
    records = [{"n": i} for i in range(size)]
    for name, run in runners.items():
        got = await run({"n": 1})
        if got != 1 + CHAIN:  # a sanity check of the setup, not a timed assertion
            raise SystemExit(f"{name} computed {got!r}, expected {1 + CHAIN}")
        await per_record(run, records[:100])  # warm up
    between()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(await per_record(run, records))
            between()
            gc.collect()
    return {name: statistics.median(s) for name, s in samples.items()}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def build_runners(chain: CompiledPipeline, sink: IO[str]
                  ) -> tuple[dict[str, Runner], list[Consumer], Callable[[], int], list[str]]:
    """The variants that can run here, the consumers to close, the span drain, and what
    was left out. JSON logs go to `sink`."""
    metrics = Metrics()
    variants: dict[str, list[Consumer]] = {"off": [], "metrics": [metrics]}
    full: list[Consumer] = [metrics]
    drains: list[Callable[[], int]] = []
    missing: list[str] = []
    traced = tracing_consumer()
    sampled = [(ratio, tracing_consumer(ratio)) for ratio in SAMPLED]
    if traced is None:
        missing.append("tracing (engine/observe/tracing.py)")
    else:
        for ratio, consumer in sampled:
            if consumer is not None:
                variants[f"+tracing@{ratio:.0%}"] = [metrics, consumer[0]]
                drains.append(consumer[1])
        variants["+tracing"] = full = [metrics, traced[0]]
        drains.append(traced[1])
    logs = logs_consumer(sink)
    if logs is None:
        missing.append("JSON logs (engine/observe/logs.py)")
    else:
        variants["+logs"] = [*full, logs]
    runners: dict[str, Runner] = {"baseline": baseline}
    runners |= {name: observed_runner(chain, used) for name, used in variants.items()}
    consumers = list({id(c): c for used in variants.values() for c in used}.values())
    return runners, consumers, lambda: sum(drain() for drain in drains), missing


async def measure(quick: bool) -> list[Row]:
    chain = compile_text(chain_yaml())
    with open(os.devnull, "w", encoding="utf-8") as sink:
        return await _measure(chain, sink, quick)


async def _measure(chain: CompiledPipeline, sink: IO[str], quick: bool) -> list[Row]:
    runners, consumers, drain, missing = build_runners(chain, sink)
    rounds, size = (8, 300) if quick else (20, 500)
    print(f"{CHAIN}-stage linear chain, {rounds} rounds x {size} records, sequential; "
          f"variants: {', '.join(runners)}")
    for left_out in missing:
        print(f"    skipped: {left_out} is not there")
    spans = 0

    def between() -> None:
        nonlocal spans
        spans += drain()

    med = await medians(runners, rounds, size, between)
    for consumer in consumers:
        consumer.close()
    base, off = med["baseline"], med["off"]
    print(f"    hand-written {us(base)}/record   engine, observers off {us(off)}/record   "
          f"(engine overhead {us(off - base)})")
    rows: list[Row] = []
    for name in (n for n in runners if n not in ("baseline", "off")):
        on = med[name]
        ratio, over = on / off, (on - base) / (off - base)
        print(f"    {name:<12} {us(on)}/record   +{us(on - off)}   on/off {ratio:.3f}   "
              f"overhead on/off {over:.2f}")
        headline = name == "+tracing" or (name == "metrics" and "+tracing" not in runners)
        rows.append((f"{name}: engine time on / off", f"{ratio:.3f}x", f"<= {TARGET}x",
                     ratio <= TARGET if headline else None))
        rows.append((f"{name}: cost per record", us(on - off), "-", None))
    if spans:
        print(f"    ({spans} spans exported to memory)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller rounds")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    print_table(asyncio.run(measure(args.quick)))


if __name__ == "__main__":
    main()
