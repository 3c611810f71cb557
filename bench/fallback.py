"""Does the fallback pyramid answer everything under a 30 % fault mix? Prints, asserts nothing.

2,000 records (300 with --quick) at concurrency 50 through `run_batch` and a generate stage
with the pyramid [smart, cheap, fast, local] + static_response. The hosted tiers are models of
the chaos stub, each failing 30 % of calls with an even mix of hangs (a tier timeout of
400 ms), 429 (Retry-After 1 s) and 500, after 5-30 ms of latency; `local` is the offline
extractive model. The stub runs in a separate process, so that it does not compete with the
client for this process's CPU; it reports the requests it saw over a pipe.

Run: `.venv/bin/python bench/fallback.py [--quick] [--transport direct]` (bench/README.md).
"""

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection

from engine.compile import CompiledPipeline, compile_pipeline
from engine.providers.stub import StubProvider
from engine.providers.stub_config import FaultProfile, LatencyRange, StubConfig
from engine.registry import Registry
from engine.resources import Resources
from engine.results import RunResult
from engine.runtime.batch import InputRecord, run_batch
from engine.spec import parse_spec

HOSTED = ("smart", "cheap", "fast")
TIERS = (*HOSTED, "local", "static")
CONCURRENCY = 50
TIER_TIMEOUT = "400ms"  # what a hang costs
DEADLINE = "5s"  # the whole request
SKIPS = ("breaker_open", "no_time", "retry_budget", "retry_after_too_long", "not_configured")


def stub_config() -> StubConfig:
    faulty = FaultProfile(failure_rate=0.3, faults={"hang": 1, "429": 1, "500": 1})
    return StubConfig(seed=7, latency=LatencyRange(min=0.005, max=0.030), retry_after=1.0,
                      models={name: faulty for name in HOSTED})


# -- the stub in its own process ------------------------------------------------------------

def _serve_stub(config_json: str, conn: Connection) -> None:
    asyncio.run(_stub_main(StubConfig.model_validate_json(config_json), conn))


async def _stub_main(config: StubConfig, conn: Connection) -> None:
    """Serve until told "stop"; answer "counts" with a Counter of (model, outcome), "peak"
    with the most requests it answered at once."""
    async with StubProvider(config) as stub:
        profiles = {name: config.profile_for(name).describe() for name in config.models}
        conn.send((stub.base_url, profiles))  # the profiles as the child sees them
        loop = asyncio.get_running_loop()
        while (command := await loop.run_in_executor(None, conn.recv)) != "stop":
            if command == "peak":
                conn.send(stub.peak_in_flight)
                continue
            conn.send(Counter((r.model, r.outcome) for r in stub.requests))
            if command == "reset":
                stub.requests.clear()
                stub.peak_in_flight = 0


class StubProcess:
    """The chaos stub served by a child process; `counts()` returns what it has seen."""

    def __init__(self, config: StubConfig) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # exclude_unset: a per-model profile overrides only the fields it sets
        self.proc = ctx.Process(target=_serve_stub, daemon=True,
                                args=(config.model_dump_json(exclude_unset=True), child))
        self.proc.start()
        self.base_url, self.profiles = self.conn.recv()

    def counts(self, reset: bool = False) -> Counter[tuple[str, str]]:
        self.conn.send("reset" if reset else "counts")
        counts: Counter[tuple[str, str]] = self.conn.recv()
        return counts

    def peak(self) -> int:
        """The most requests the stub was answering at once, so far."""
        self.conn.send("peak")
        peak: int = self.conn.recv()
        return peak

    def cpu(self) -> float:
        """CPU seconds the stub process has used (Linux /proc; 0 elsewhere)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


# -- the pipeline ---------------------------------------------------------------------------

def pipeline_yaml(base_url: str, transport: str, breaker: str | None) -> str:
    hosted = "".join(
        f'  {name}: {{model: openai/{name}, api_base: "{base_url}", api_key: stub, '
        f"timeout: {TIER_TIMEOUT}, transport: {transport}}}\n" for name in HOSTED)
    return (
        "version: 1\nname: bench-fallback\nmodels:\n" + hosted
        + "  local: {model: local/kb}\n"
        + f"defaults: {{timeout: {DEADLINE}, retry: {{attempts: 3, backoff: 50ms}}"
        + (f", breaker: {breaker}" if breaker else "") + "}\n"
        + "stages:\n  answer:\n    type: generate\n    with:\n"
        + "      models: [smart, cheap, fast, local]\n"
        + '      messages: [{role: user, content: "{{ input.q }}"}]\n'
        + '      static_response: "We will reply by email."\n')


def build(base_url: str, transport: str, breaker: str | None
          ) -> tuple[CompiledPipeline, Resources]:
    resources = Resources()
    spec = parse_spec(pipeline_yaml(base_url, transport, breaker), "<bench-fallback>")
    return compile_pipeline(spec, Registry.from_entry_points(), resources=resources), resources


# -- the report -----------------------------------------------------------------------------

def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def report(results: list[RunResult], count: int, wall: float,
           stub_counts: Counter[tuple[str, str]]) -> None:
    errors = [r for r in results if r.status == "error"]
    answered = len(results) - len(errors)
    indices = {r.index for r in results}
    lost = count - len(indices)
    print(f"  wall {wall:.2f} s ({count / wall:.0f} records/s)")
    print(f"  answered {answered}/{count} = {pct(answered, count)} (target 100 %)   "
          f"results {len(results)}   lost {lost}   status error {len(errors)}   "
          f"(target: 0 lost, 0 errors)")
    for r in errors[:3]:
        print(f"    error #{r.index}: {r.error}")
    durations = [r.duration for r in results]
    print(f"  latency p50 {quantile(durations, 0.5) * 1000:.0f} ms   "
          f"p95 {quantile(durations, 0.95) * 1000:.0f} ms   "
          f"p99 {quantile(durations, 0.99) * 1000:.0f} ms   max {max(durations) * 1000:.0f} ms")

    answers = Counter(r.output["tier"] for r in results if r.status != "error")
    print("  answers per tier: " + "   ".join(
        f"{t} {answers[t]} ({pct(answers[t], count)})" for t in TIERS))

    attempts = [a for r in results if r.status != "error" for a in r.output["attempts"]]
    calls = Counter(a["tier"] for a in attempts if a["outcome"] not in SKIPS)
    firsts = Counter(a["tier"] for a in attempts
                     if a["outcome"] not in SKIPS and a["attempt"] == 1)
    outcomes = Counter((a["tier"], a["outcome"]) for a in attempts)
    print(f"  {'tier':<6} {'stub calls':>10} {'engine calls':>12} {'first':>6} "
          f"{'retries':>7} {'retry ratio':>11}   stub outcomes | engine attempts")
    for tier in (*HOSTED, "local"):
        seen = {o: n for (m, o), n in sorted(stub_counts.items()) if m == tier}
        stub_calls = sum(seen.values()) if tier in HOSTED else calls[tier]
        retries = calls[tier] - firsts[tier]
        mix = " ".join(f"{o}:{n}" for o, n in seen.items()) or "(in process)"
        kinds = " ".join(f"{o}:{n}" for (t, o), n in sorted(outcomes.items()) if t == tier)
        print(f"  {tier:<6} {stub_calls:>10} {calls[tier]:>12} {firsts[tier]:>6} "
              f"{retries:>7} {pct(retries, firsts[tier]):>11}   {mix} | {kinds or '-'}")
    hosted_stub = sum(n for (m, _), n in stub_counts.items() if m in HOSTED)
    hosted_calls = sum(calls[t] for t in HOSTED)
    hosted_firsts = sum(firsts[t] for t in HOSTED)
    print(f"  hosted: {hosted_stub} calls at the stub for {count} records = "
          f"{hosted_stub / count:.2f} calls/record; retry ratio (retries / first calls) "
          f"{pct(hosted_calls - hosted_firsts, hosted_firsts)}")
    if hosted_stub != hosted_calls:
        print(f"  NOTE: the stub saw {hosted_stub} calls, the engine's attempts record "
              f"{hosted_calls}")


def watch_breakers(pipeline: CompiledPipeline, moves: list[str], start: list[float]) -> None:
    """Log every breaker transition of the hosted tiers, with seconds since the batch began."""
    pyramid = pipeline.stages["answer"].stage.pyramid  # type: ignore[attr-defined]
    for name, tier in pyramid.tiers:
        if name in HOSTED:
            def log(_: str, old: str, new: str, at: float, name: str = name) -> None:
                moves.append(f"{name} {old}->{new} at {time.perf_counter() - start[0]:.1f} s")

            pyramid.resources.breaker(tier.model, pyramid.breaker_spec).on_transition(log)


async def measure(stub: StubProcess, count: int, transport: str, breaker: str | None) -> None:
    pipeline, resources = build(stub.base_url, transport, breaker)
    moves: list[str] = []
    start = [time.perf_counter()]
    watch_breakers(pipeline, moves, start)
    results: list[RunResult] = []
    items = (InputRecord(i, {"q": f"question {i}"}) for i in range(count))
    try:
        await pipeline.warm_up()  # run_batch warms up too; done here to keep it out of `wall`
        stub.counts(reset=True)
        start[0] = time.perf_counter()
        await run_batch(pipeline, items, results.append, concurrency=CONCURRENCY)
        wall = time.perf_counter() - start[0]
    finally:
        await resources.aclose()
    report(results, count, wall, stub.counts())
    print(f"  breaker transitions ({breaker or 'default breaker'}): "
          + ("; ".join(moves) if moves else "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 records instead of 2,000")
    parser.add_argument("--transport", choices=["litellm", "direct"], default="litellm",
                        help="how the hosted tiers are called (default: litellm)")
    parser.add_argument("--breaker", metavar="YAML",
                        help='defaults.breaker, e.g. "{window: 100, min_calls: 50}"')
    args = parser.parse_args()
    count = 300 if args.quick else 2000
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    config = stub_config()
    stub = StubProcess(config)
    try:
        print(f"stub (separate process) at {stub.base_url}: hosted tiers "
              f"{stub.profiles['smart']}, Retry-After {config.retry_after:g} s")
        print(f"{count} records, concurrency {CONCURRENCY}, pyramid {'/'.join(TIERS)}, "
              f"transport {args.transport}, tier timeout {TIER_TIMEOUT}, deadline {DEADLINE}, "
              "retry 3 attempts, backoff 50 ms (full jitter)")
        asyncio.run(measure(stub, count, args.transport, args.breaker))
    finally:
        stub.close()


if __name__ == "__main__":
    main()
