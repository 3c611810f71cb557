"""What does observability cost per request? Prints figures, asserts nothing.

The 7-stage chain of trivial stages from bench/overhead.py runs one record at a time, in
interleaved rounds (medians of per-round means, as overhead.py does), in these variants:

- off:        `await pipeline.run(record)` and nothing else;
- metrics:    the same, then `Metrics.observe(...)` on the result (engine/observe/metrics.py);
- +tracing:   metrics and `Tracing.observe(...)` of every run, spans exported to an
              in-memory exporter (8 spans a record: the run and its 7 stages);
- +tracing@N: the same with N of the runs traced (`--trace-sample`);
- +otlp:      +tracing, the exporter also encoding each batch as OTLP protobuf with
              engine.observe.otlp (the CPU the engine's OTLP/HTTP exporter spends before it
              posts); +otlp(sdk): the same with the SDK's encoder, for comparison;
- +logs:      metrics, tracing and `JsonLogs.observe(...)` writing to os.devnull;
- baseline:   the hand-written coroutine of overhead.py (the same 7 awaits), for the engine's
              own overhead.

Tracing builds and exports spans on a worker thread: each round ends with `Tracing.flush()`
*inside* the timed span, so the round pays for all the work its records caused, wherever it
ran (the thread shares the GIL; on this machine it cannot run beside the loop for free); and a
round with every run traced must export exactly 8 spans a record, or the bench stops, so
dropped spans cannot flatter the figure. Tracing's own threads are idle between rounds.

Headline (the issue's target, ≤ 1.15): request time with metrics + tracing of every run,
exported as OTLP, on / off, on the production-shaped request of part (b) — the engine's
overhead on a request that does what requests do. Part (a) is printed beside it as the floor,
without a pass/fail: each variant's ratio on the trivial chain, its cost in µs per record,
and the stricter ratio of the engine's *overhead* (time minus the hand-written baseline) with
/ without observers. Tracing and logs are skipped (and said so) if engine/observe/tracing.py
or logs.py is absent.

The trivial chain is the worst case: its stages cost ~4 µs each, so observers that cost a
few µs a span dominate, whatever they are written in (the OpenTelemetry SDK's own span costs
more than a whole trivial stage). Part (b) measures the same variants on a production-shaped
request — guard (token limit, injection rules, PII) → cache lookup (a miss: `no-store`) → generate
against the chaos stub in its own process answering at once (direct transport) — where the
engine's overhead is the whole request time: what the guard, the cache, the model call and
the executor cost, plus the stub's reply on the other core (so the ratio there errs low by
that share). Its tracing variant encodes every span as OTLP protobuf, as production export
would.

Run: `.venv/bin/python bench/observe.py [--quick] [--part a|b]` (each part in a fresh
interpreter: run after (a), (b) read 1.20x where alone it reads 1.11x).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, TextIO

from overhead import CHAIN, Runner, baseline, chain_yaml, compile_text
from report import Row, print_table
from request import pipeline_yaml

from engine.compile import CompiledPipeline
from engine.observe.metrics import Metrics
from engine.results import RunResult

TARGET = 1.15
SAMPLED = (0.1, 0.01)
"""The shares of runs traced in the sampled variants."""
SPANS = CHAIN + 1
"""Spans a traced record makes: its run and each stage."""


class Consumer(Protocol):
    def observe(self, pipeline: str, record: Any, result: RunResult) -> None: ...

    def close(self) -> None: ...


class Deferred(Consumer, Protocol):
    def flush(self) -> None: ...


class Traced(NamedTuple):
    """A `Tracing` consumer, and a function that empties its exporter (returns how many
    spans it held)."""

    tracing: Deferred
    drain: Callable[[], int]


class Variant(NamedTuple):
    run: Runner
    consumers: list[Consumer]
    traced: Traced | None = None
    """The variant's tracing, flushed inside each timed round; None: nothing deferred."""
    full: bool = False
    """Every run traced: a round must export exactly `SPANS` spans a record."""

    def settle(self) -> None:
        if self.traced is not None:
            self.traced.tracing.flush()

    def drain(self) -> int:
        return 0 if self.traced is None else self.traced.drain()


def observed_runner(pipeline: CompiledPipeline, consumers: list[Consumer]) -> Runner:
    """The chain run as the run command's sink will: every consumer sees every result."""
    name = pipeline.name

    async def run(record: dict[str, int]) -> Any:
        result = await pipeline.run(record)
        for consumer in consumers:
            consumer.observe(name, record, result)
        return result.output

    return run


def tracing_consumer(ratio: float = 1.0, *, encode: str | None = None) -> Traced | None:
    """`Tracing` of `ratio` of the runs into an in-memory exporter; None without tracing.py.
    `encode`: the exporter first encodes each batch as OTLP protobuf — "engine" with
    engine.observe.otlp, as the engine's OTLP exporter does before it posts; "sdk" with the
    SDK's encoder, for comparison — so the figure includes the encoder's CPU."""
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import SpanExportResult
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from engine.observe.otlp import encode as engine_encode
        from engine.observe.tracing import Tracing
    except ImportError:
        return None

    class Encoding(InMemorySpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if encode == "sdk":
                encode_spans(spans).SerializePartialToString()
            else:
                engine_encode(spans)
            return super().export(spans)

    exporter = Encoding() if encode else InMemorySpanExporter()

    def drain() -> int:
        count = len(exporter.get_finished_spans())
        exporter.clear()
        return count

    return Traced(Tracing(exporter, sample=ratio), drain)


def logs_consumer(sink: TextIO) -> Consumer | None:
    try:
        from engine.observe.logs import JsonLogs
    except ImportError:
        return None
    return JsonLogs(sink, run_id="bench")


async def timed(variant: Variant, records: list[dict[str, int]]) -> float:
    """Seconds per record, the deferred work it caused included."""
    start = time.perf_counter()
    for record in records:
        await variant.run(record)
    variant.settle()
    return (time.perf_counter() - start) / len(records)


class Workload(NamedTuple):
    """What the variants run: the records of a round, a check of one output (the setup's
    sanity, not a timed assertion), and the spans a traced record makes."""

    records: list[dict[str, Any]]
    expect: Callable[[Any], bool]
    spans: int


CHAIN_LOAD = Workload([{"n": i} for i in range(1, 501)], lambda got: got == 1 + CHAIN, SPANS)


async def medians(variants: dict[str, Variant], rounds: int, load: Workload
                  ) -> dict[str, float]:
    """Median seconds per record for each variant, rounds interleaved; after each round,
    untimed, its exporter is emptied and checked, then a full collection, so that one
    variant's garbage is not collected in another's round."""
    records = load.records
    for name, variant in variants.items():
        got = await variant.run(records[0])
        if not load.expect(got):
            raise SystemExit(f"{name} computed {got!r}: the setup is wrong")
        await timed(variant, records[:100])  # warm up
        variant.drain()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            samples[name].append(await timed(variant, records))
            spans, want = variant.drain(), load.spans * len(records)
            if variant.full and spans != want:
                raise SystemExit(f"{name} exported {spans} spans, expected {want}")
            gc.collect()
    return {name: statistics.median(s) for name, s in samples.items()}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def build_variants(chain: CompiledPipeline, sink: TextIO
                   ) -> tuple[dict[str, Variant], list[str]]:
    """The variants that can run here, and what was left out. JSON logs go to `sink`."""
    metrics = Metrics()
    variants: dict[str, Variant] = {"baseline": Variant(baseline, []),
                                    "off": Variant(observed_runner(chain, []), []),
                                    "metrics": Variant(observed_runner(chain, [metrics]),
                                                       [metrics])}
    missing: list[str] = []

    def add(name: str, traced: Traced | None, *more: Consumer, full: bool = False) -> None:
        used: list[Consumer] = [metrics, *([traced.tracing] if traced else []), *more]
        variants[name] = Variant(observed_runner(chain, used), used, traced, full)

    traced = tracing_consumer()
    if traced is None:
        missing.append("tracing (engine/observe/tracing.py)")
    else:
        for ratio in SAMPLED:
            add(f"+tracing@{ratio:.0%}", tracing_consumer(ratio))
        add("+tracing", traced, full=True)
        add("+otlp", tracing_consumer(encode="engine"), full=True)
        add("+otlp(sdk)", tracing_consumer(encode="sdk"), full=True)
    logs = logs_consumer(sink)
    if logs is None:
        missing.append("JSON logs (engine/observe/logs.py)")
    else:
        traced = tracing_consumer()
        add("+logs", traced, logs, full=traced is not None)
    return variants, missing


async def measure(quick: bool) -> list[Row]:
    chain = compile_text(chain_yaml())
    with open(os.devnull, "w", encoding="utf-8") as sink:
        return await _measure(chain, sink, quick)


async def _measure(chain: CompiledPipeline, sink: TextIO, quick: bool) -> list[Row]:
    variants, missing = build_variants(chain, sink)
    rounds, size = (8, 300) if quick else (20, 500)
    print(f"(a) {CHAIN}-stage linear chain, {rounds} rounds x {size} records, sequential; "
          f"variants: {', '.join(variants)}")
    for left_out in missing:
        print(f"    skipped: {left_out} is not there")
    med = await medians(variants, rounds, CHAIN_LOAD._replace(records=CHAIN_LOAD.records[:size]))
    for consumer in {id(c): c for v in variants.values() for c in v.consumers}.values():
        consumer.close()
    base, off = med["baseline"], med["off"]
    print(f"    hand-written {us(base)}/record   engine, observers off {us(off)}/record   "
          f"(engine overhead {us(off - base)})")
    rows: list[Row] = []
    for name in (n for n in variants if n not in ("baseline", "off")):
        on = med[name]
        ratio, over = on / off, (on - base) / (off - base)
        print(f"    {name:<12} {us(on)}/record   +{us(on - off)}   on/off {ratio:.3f}   "
              f"overhead on/off {over:.2f}")
        rows.append((f"(a) {name}: engine time on / off", f"{ratio:.3f}x", "floor", None))
        rows.append((f"(a) {name}: cost per record", us(on - off), "-", None))
    if "+tracing" in med:
        print(f"    tracing every run: {us((med['+tracing'] - med['metrics']) / SPANS)} a span "
              f"({SPANS} a record), built, exported and flushed")
    return rows


REQUEST_SPANS = 5
"""The run, its three stages and the model call."""


async def request_part(quick: bool) -> list[Row]:
    """(b): the variants on a production-shaped request (see the module docstring)."""
    from fallback import StubProcess

    from engine.compile import compile_pipeline
    from engine.providers.stub_config import StubConfig
    from engine.registry import Registry
    from engine.spec import parse_spec

    stub = StubProcess(StubConfig(seed=1))
    try:
        text = pipeline_yaml(stub.base_url, name="bench-observe-request", control="no-store")
        pipeline = compile_pipeline(parse_spec(text, "<bench>"),
                                    Registry.from_entry_points())
        await pipeline.warm_up()
        metrics, size = Metrics(), 100 if quick else 200
        load = Workload([{"question": f"My invoice {i} shows a charge I do not recognise, "
                               "please check it."} for i in range(size)],
                        lambda got: isinstance(got, dict)
                        and str(got.get("reply")).startswith("echo:"),
                        REQUEST_SPANS)
        variants = {"off": Variant(observed_runner(pipeline, []), []),
                    "metrics": Variant(observed_runner(pipeline, [metrics]), [metrics])}
        traced = tracing_consumer(encode="engine")
        if traced is not None:
            used: list[Consumer] = [metrics, traced.tracing]
            variants["+tracing+otlp"] = Variant(observed_runner(pipeline, used), used, traced,
                                                True)
        rounds = 5 if quick else 9
        print(f"(b) guard → cache miss → generate (stub in its own process, direct), "
              f"{rounds} rounds x {size} records, sequential")
        med = await medians(variants, rounds, load)
        await pipeline.resources.aclose()
    finally:
        stub.close()
    off, rows = med["off"], []
    for name in (n for n in variants if n != "off"):
        print(f"    {name:<14} {us(med[name])}/record   +{us(med[name] - off)}   "
              f"on/off {med[name] / off:.3f}")
        headline = name == "+tracing+otlp" or (name == "metrics" and len(variants) == 2)
        rows.append((f"(b) {name}: request time on / off", f"{med[name] / off:.3f}x",
                     f"<= {TARGET}x" if headline else "-",
                     med[name] / off <= TARGET if headline else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller rounds")
    parser.add_argument("--part", choices=["a", "b"],
                        help="one part, in this process (default: each in a process of its own)")
    args = parser.parse_args()
    if args.part is None:  # a fresh interpreter each: (a)'s heap and threads slowed (b) ~10 %
        for part in ("a", "b"):
            subprocess.run([sys.executable, __file__, "--part", part,
                            *(["--quick"] if args.quick else [])], check=True)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    print_table(asyncio.run(measure(args.quick) if args.part == "a"
                            else request_part(args.quick)))


if __name__ == "__main__":
    main()
