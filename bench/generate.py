"""What does the generate stage cost on top of the SDK it calls? Prints figures, asserts nothing.

All against one chaos stub (no faults, 1 ms latency) served from a separate process (the
`StubProcess` of bench/fallback.py), so it does not compete with the client for this CPU:

(a) calls/s at concurrency 50, p50 latency at concurrency 1: bare `litellm.acompletion`, a
    litellm `Router` with a fallback, the engine's generate stage through litellm and with
    `transport: direct`, the raw `openai` SDK; rounds interleave, figures are medians;
(b) a fallback hop (tier 1 always answers 500): added p50 latency, engine vs Router;
(c) 10,000 records (2,000 with --quick) at 200 ms stub latency, concurrency 64, `run_batch`
    on the direct path, vs the ideal 10000 * 0.2 / 64 s.

Run: `.venv/bin/python bench/generate.py [--quick]` (see bench/README.md).
"""

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fallback import StubProcess  # the sibling script: python puts bench/ on sys.path
from report import Row, print_table

from engine.compile import CompiledPipeline, compile_pipeline
from engine.providers.client import load_litellm
from engine.providers.stub_config import FaultProfile, StubConfig
from engine.registry import Registry
from engine.resources import Resources
from engine.runtime.batch import InputRecord, run_batch
from engine.spec import parse_spec

CONCURRENCY = 50
BATCH_CONCURRENCY = 64
SLOW = 0.2  # stub latency of model `slow`, for (c)
MESSAGES = [{"role": "user", "content": "hello"}]
EXPECTED = "echo: hello"
Runner = Callable[[], Awaitable[str]]


def stub_config() -> StubConfig:
    broken = FaultProfile(failure_rate=1.0, faults={"500": 1})
    return StubConfig(seed=1, latency=0.001, models={
        "bad_engine": broken, "bad_direct": broken, "bad_router": broken, "bad_bare": broken,
        "slow": FaultProfile(latency=SLOW)})


# -- the five clients and the two hops --------------------------------------------------------

def engine_pipeline(url: str, models: list[str], transport: str = "litellm",
                    breaker: str = "") -> tuple[CompiledPipeline, Resources]:
    tiers = "".join(f'  {m}: {{model: openai/{m}, api_base: "{url}", api_key: x, '
                    f"timeout: 10s, transport: {transport}}}\n" for m in models)
    text = (f"version: 1\nname: bench-generate\nmodels:\n{tiers}"
            f"defaults: {{timeout: 30s, retry: {{attempts: 1}}{breaker}}}\n"
            "stages:\n  answer:\n    type: generate\n    with:\n"
            f"      models: [{', '.join(models)}]\n"
            '      messages: [{role: user, content: "{{ input.q }}"}]\n')
    resources = Resources()
    spec = parse_spec(text, "<bench-generate>")
    return compile_pipeline(spec, Registry.from_entry_points(), resources=resources), resources


# A breaker that never stops calling the failing tier (half-open for ever, every call a trial):
# a hop must include the failed call, as Router's does (it never cools down a lone deployment).
CALL_ALWAYS = ", breaker: {cooldown: 0, half_open_calls: 1000000000}"


def engine_runner(pipeline: CompiledPipeline, tier: str) -> Runner:
    async def run() -> str:
        output = (await pipeline.run({"q": "hello"})).output
        return str(output["text"]) if output["tier"] == tier else f"answered by {output['tier']}"

    return run


def router(litellm: Any, url: str, first: str) -> Any:
    deployments = [{"model_name": name, "litellm_params": {"model": f"openai/{model}",
                    "api_base": url, "api_key": "x", "max_retries": 0}}
                   for name, model in (("primary", first), ("backup", "x"))]
    return litellm.Router(model_list=deployments, fallbacks=[{"primary": ["backup"]}],
                          num_retries=0)


async def clients(url: str) -> tuple[dict[str, Runner], list[Resources], Callable[[], Any]]:
    litellm = load_litellm()
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    routers = {first: router(litellm, url, first) for first in ("x", "bad_router")}
    engine, via_litellm = engine_pipeline(url, ["x"])
    direct, via_sdk = engine_pipeline(url, ["x"], "direct")
    hop, via_hop = engine_pipeline(url, ["bad_engine", "x"], breaker=CALL_ALWAYS)
    hop_d, via_hop_d = engine_pipeline(url, ["bad_direct", "x"], "direct", CALL_ALWAYS)
    for pipeline in (engine, direct, hop, hop_d):
        await pipeline.warm_up()

    async def bare() -> str:
        response = await litellm.acompletion(model="openai/x", messages=MESSAGES, api_base=url,
                                             api_key="x", max_retries=0)
        return str(response.choices[0].message.content)

    async def bare_500() -> str:  # one failing call: what litellm's error path costs
        try:
            await litellm.acompletion(model="openai/bad_bare", messages=MESSAGES, api_base=url,
                                      api_key="x", max_retries=0)
        except litellm.InternalServerError:
            return EXPECTED
        return "no error"

    def via_router(first: str) -> Runner:
        async def run() -> str:
            response = await routers[first].acompletion(model="primary", messages=MESSAGES)
            return str(response.choices[0].message.content)

        return run

    async def raw() -> str:
        response = await sdk.chat.completions.create(model="x", messages=MESSAGES)
        return str(response.choices[0].message.content)

    runners = {"bare litellm": bare, "litellm Router": via_router("x"),
               "engine (litellm)": engine_runner(engine, "x"),
               "engine (direct)": engine_runner(direct, "x"), "raw openai SDK": raw,
               "engine hop": engine_runner(hop, "x"), "Router hop": via_router("bad_router"),
               "engine direct hop": engine_runner(hop_d, "x"), "bare litellm 500": bare_500}
    return runners, [via_litellm, via_sdk, via_hop, via_hop_d], sdk.close


# -- measuring --------------------------------------------------------------------------------

FULL_GC: list[float] = []  # durations of full (generation 2) collections; [-1] while one runs


def _watch_gc(phase: str, info: dict[str, int]) -> None:
    if info["generation"] == 2:
        FULL_GC.append(time.perf_counter() if phase == "start" else time.perf_counter()
                       - FULL_GC.pop())


def gc_line() -> str:
    done, _ = list(FULL_GC), FULL_GC.clear()
    return (f"{len(done)} full GCs, {sum(done) * 1000:.0f} ms in all, max "
            f"{max(done, default=0) * 1000:.0f} ms")


async def rate(run: Runner, count: int) -> float:
    """Calls/s with one task per call and at most CONCURRENCY in flight."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with gate:
            await run()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - start)


async def latencies(run: Runner, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        await run()
        out.append(time.perf_counter() - start)
    return out


async def interleaved(runners: dict[str, Runner], stub: StubProcess, rounds: int, calls: int,
                      sequential: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median calls/s at c=50 (hops excluded) and p50 latency at c=1; prints CPU per call."""
    rates: dict[str, list[float]] = {n: [] for n in runners if "hop" not in n and "500" not in n}
    cpu, stub_cpu = {n: list[float]() for n in rates}, {n: list[float]() for n in rates}
    lat: dict[str, list[float]] = {n: [] for n in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            if name in rates:
                cpu0, stub0 = time.process_time(), stub.cpu()
                rates[name].append(await rate(runners[name], calls))
                cpu[name].append((time.process_time() - cpu0) / calls * 1000)
                stub_cpu[name].append((stub.cpu() - stub0) / calls * 1000)
            lat[name] += await latencies(runners[name], sequential)
    for name in rates:
        print(f"    {name:<17} {statistics.median(rates[name]):>7,.0f} calls/s   client CPU "
              f"{statistics.median(cpu[name]):.2f} ms/call   stub CPU "
              f"{statistics.median(stub_cpu[name]):.2f} ms/call   p50 (c=1) "
              f"{statistics.median(lat[name]) * 1000:.2f} ms")
    return ({n: statistics.median(v) for n, v in rates.items()},
            {n: statistics.median(v) for n, v in lat.items()})


async def batch(url: str, count: int) -> tuple[float, int, int]:
    """Wall seconds for `count` records at SLOW latency via run_batch, results, errors."""
    pipeline, resources = engine_pipeline(url, ["slow"], "direct")
    results: list[Any] = []
    items = (InputRecord(i, {"q": f"hello {i}"}) for i in range(count))
    try:
        await pipeline.warm_up()
        start = time.perf_counter()
        await run_batch(pipeline, items, results.append, concurrency=BATCH_CONCURRENCY)
        wall = time.perf_counter() - start
    finally:
        await resources.aclose()
    return wall, len(results), sum(r.status == "error" for r in results)


async def measure(stub: StubProcess, quick: bool) -> list[Row]:
    url = stub.base_url
    runners, resources, close_sdk = await clients(url)
    rows: list[Row] = []
    try:
        for name, run in runners.items():  # first calls: imports, connections, caches
            got = await run()
            if got != EXPECTED:
                raise SystemExit(f"{name} answered {got!r}, expected {EXPECTED!r}")
            await rate(run, 100)
        stub.counts(reset=True)
        FULL_GC.clear()
        rounds, calls, sequential = (2, 300, 50) if quick else (5, 1000, 100)
        print(f"(a) {rounds} interleaved rounds: {calls} calls at concurrency {CONCURRENCY}, "
              f"then {sequential} one at a time (c=1); medians")
        rates, lat = await interleaved(runners, stub, rounds, calls, sequential)
        seen = stub.counts()
        print(f"    garbage collector during (a) and (b): {gc_line()}")
        thr_l = rates["engine (litellm)"] / rates["bare litellm"]
        thr_d = rates["engine (direct)"] / rates["raw openai SDK"]
        print(f"    engine (litellm) / bare litellm {thr_l:.2f}x (target >= 0.85)   "
              f"engine (direct) / raw SDK {thr_d:.2f}x (target >= 0.85)")
        rows += [("(a) engine litellm / bare calls/s", f"{thr_l:.2f}x", ">= 0.85x", thr_l >= 0.85),
                 ("(a) engine direct / SDK calls/s", f"{thr_d:.2f}x", ">= 0.85x", thr_d >= 0.85)]

        hop_e = lat["engine hop"] - lat["engine (litellm)"]
        hop_r = lat["Router hop"] - lat["litellm Router"]
        ratio = hop_e / hop_r
        print(f"(b) fallback hop, tier 1 always 500, p50 at c=1: engine +{hop_e * 1000:.2f} ms "
              f"({lat['engine hop'] * 1000:.2f} vs {lat['engine (litellm)'] * 1000:.2f})   "
              f"Router +{hop_r * 1000:.2f} ms ({lat['Router hop'] * 1000:.2f} vs "
              f"{lat['litellm Router'] * 1000:.2f})")
        hop_d = lat["engine direct hop"] - lat["engine (direct)"]
        print(f"    engine hop / Router hop {ratio:.2f} (target <= 0.85)   one failing bare "
              f"litellm call alone: {lat['bare litellm 500'] * 1000:.2f} ms   engine hop with "
              f"transport direct: +{hop_d * 1000:.2f} ms")
        print(f"    the failing tier was called {seen['bad_engine', '500']} (engine), "
              f"{seen['bad_router', '500']} (Router), {seen['bad_direct', '500']} (direct) times "
              f"for {rounds * sequential} requests each")
        rows.append(("(b) engine hop / Router hop", f"{ratio:.2f}x", "<= 0.85x", ratio <= 0.85))
    finally:
        for resource in resources:
            await resource.aclose()
        await close_sdk()

    count = 2000 if quick else 10_000
    ideal = count * SLOW / BATCH_CONCURRENCY
    print(f"(c) {count} records x {SLOW * 1000:.0f} ms stub latency, run_batch at concurrency "
          f"{BATCH_CONCURRENCY}, transport direct")
    cpu0, _ = time.process_time(), FULL_GC.clear()
    wall, done, errors = await batch(url, count)
    print(f"    wall {wall:.2f} s   ideal {ideal:.2f} s   ratio {wall / ideal:.3f} (target <= "
          f"1.10)   results {done}/{count}, {errors} errors   client CPU "
          f"{(time.process_time() - cpu0) / count * 1000:.2f} ms/record")
    print(f"    garbage collector: {gc_line()}")
    rows.append((f"(c) batch {count} / ideal", f"{wall / ideal:.3f}x", "<= 1.10x",
                 wall / ideal <= 1.10 and done == count and not errors))
    return rows




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 300 calls, and 2,000 records for (c)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    gc.callbacks.append(_watch_gc)
    stub = StubProcess(stub_config())
    try:
        print(f"stub in a separate process (pid {stub.proc.pid}) at {stub.base_url}: latency "
              f"1 ms, no faults; bad_*: {stub.profiles['bad_engine']}; slow: "
              f"{stub.profiles['slow']}")
        print_table(asyncio.run(measure(stub, args.quick)))
    finally:
        stub.close()


if __name__ == "__main__":
    main()
