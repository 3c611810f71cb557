"""What does `engine serve` add to a model call, and how does it behave past its capacity?
Prints figures, asserts nothing.

The chaos stub (20 ms latency, no faults) runs in its own process (`StubProcess` of
bench/fallback.py) and `engine serve` in another (the console script, one worker, an API key,
rate limits too high to bite, the run store on) on a free 127.0.0.1 port, serving a pipeline
this script writes: guard (token limit, PII, injection) → cache (exact; every question is new,
so every request misses, and the cache is full and evicting before anything is measured) →
generate (`transport: direct`: a plain HTTP POST to the stub, the path the docs recommend
for OpenAI-compatible endpoints). This process's aiohttp client, on kept-alive connections:

(a) the same chat completion sent to the stub directly (the baseline), to the stub through
    the openai SDK (what a typical client costs, for reference), and through serve, in rounds
    that rotate the three, at concurrency 1, 8 and 32: p50/p99 latency, serve's added latency
    and ratio against the baseline, requests/s, and serve's CPU per request (from /proc);
(b) overload: bursts of 8 x `--max-inflight` requests in flight: 200s vs 503s (each 503 with
    `Retry-After`), then the process alive and `/healthz` 200;
(c) memory: serve's RSS after warm-up, after a soak at `--max-inflight`, after the bursts.

Every loop is bounded in count and in time, and talks to 127.0.0.1 only.

Run: `.venv/bin/python bench/serve.py [--quick]` (bench/README.md).
"""

import argparse
import asyncio
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from fallback import StubProcess  # the sibling script: python puts bench/ on sys.path
from report import Row, print_table
from request import pipeline_yaml

from engine.providers.stub_config import StubConfig
from engine.serve.keys import hash_key

LATENCY = 0.020  # the stub's, per call
LEVELS = (1, 8, 32)  # concurrency levels of (a)
MAX_INFLIGHT = 32  # serve's --max-inflight; (a) stays within it, (b) goes far past it
BURST = 8 * MAX_INFLIGHT
KEY = "sk-bench-0123456789abcdef"
PIPELINE = "bench-serve"
CACHE_ENTRIES = 1000  # the cache is full (and evicting) before RSS is first read
TARGET_MS = 3.0  # p50 added latency at concurrency 1


def question(n: int) -> str:
    """A new, benign support question each time (no PII, no injection cue: the common case)."""
    return f"How long does delivery take for order number {n} to the Lisbon warehouse?"


# -- engine serve in its own process ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_stat(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


class ServeProcess:
    """`engine serve` (the console script) on a free loopback port, in a temp folder."""

    def __init__(self, base_url: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
        text = pipeline_yaml(base_url, name=PIPELINE, cache_entries=CACHE_ENTRIES)
        (self.folder / "pipeline.yaml").write_text(text)
        (self.folder / "keys.yaml").write_text(
            f"keys:\n  - sha256: {hash_key(KEY)}\n    user: bench\n    tenant: bench\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        engine = Path(sys.executable).with_name("engine")
        with open(self.folder / "serve.log", "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [str(engine), "serve", str(self.folder / "pipeline.yaml"), "--port",
                 str(self.port), "--keys", str(self.folder / "keys.yaml"), "--max-inflight",
                 str(MAX_INFLIGHT), "--rate-per-key", "1000000/s", "--rate-per-ip",
                 "1000000/s", "--store", str(self.folder / "runs")],
                stdout=log, stderr=subprocess.STDOUT)

    async def ready(self, session: aiohttp.ClientSession, limit: float = 120) -> None:
        """Wait (at most `limit` s) until `/readyz` says ready: compiled and warmed up."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                async with session.get(f"{self.url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
        log = (self.folder / "serve.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"engine serve did not become ready; its log ends:\n{log}")

    def stat(self) -> tuple[float, int]:
        return proc_stat(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the load ---------------------------------------------------------------------------------

@dataclass
class Load:
    """What one bounded load loop saw."""

    latencies: list[float] = field(default_factory=list)  # of the 200s, seconds
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no HTTP answer at all
    retry_after: Counter[str | None] = field(default_factory=Counter)  # on the 503s
    wall: float = 0.0


class Client:
    """One request shape, sent to the stub directly (aiohttp, or the openai SDK as the
    generate stage does) or through serve."""

    def __init__(self, session: aiohttp.ClientSession, stub_url: str, serve_url: str) -> None:
        from openai import AsyncOpenAI

        self.session = session
        self.sdk = AsyncOpenAI(base_url=stub_url, api_key="stub", max_retries=0)
        self.urls = {"direct": (f"{stub_url}/chat/completions", "fast", {}),
                     "serve": (f"{serve_url}/v1/chat/completions", PIPELINE,
                               {"Authorization": f"Bearer {KEY}"})}
        self.sent = 0

    async def call(self, target: str) -> tuple[int, str | None]:
        """One request: its status and, for a 503, its Retry-After."""
        self.sent += 1
        messages = [{"role": "user", "content": question(self.sent)}]
        if target == "sdk":
            await self.sdk.chat.completions.create(model="fast", messages=messages)
            return 200, None
        url, model, headers = self.urls[target]
        async with self.session.post(url, json={"model": model, "messages": messages},
                                     headers=headers) as response:
            await response.read()
            return response.status, response.headers.get("Retry-After")

    async def load(self, target: str, count: int, concurrency: int, limit: float) -> Load:
        """`count` calls with `concurrency` in flight, stopping early after `limit` s."""
        seen = Load()
        left = [count]
        deadline = time.perf_counter() + limit

        async def worker() -> None:
            while left[0] > 0 and time.perf_counter() < deadline:
                left[0] -= 1
                start = time.perf_counter()
                try:
                    status, after = await self.call(target)
                except (aiohttp.ClientError, OSError):
                    seen.statuses[0] += 1
                    continue
                seen.statuses[status] += 1
                if status == 200:
                    seen.latencies.append(time.perf_counter() - start)
                elif status == 503:
                    seen.retry_after[after] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seen.wall = time.perf_counter() - start
        return seen


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# -- the parts --------------------------------------------------------------------------------

TARGETS = ("direct", "sdk", "serve")


async def added_latency(client: Client, serve: ServeProcess, level: int, rounds: int,
                        count: int) -> dict[str, float]:
    """Rounds at one concurrency, the targets' order rotated each round; prints and returns
    serve's figures against the direct call."""
    lat: dict[str, list[float]] = {t: [] for t in TARGETS}
    rates: dict[str, list[float]] = {t: [] for t in TARGETS}
    cpu: list[float] = []
    bad: Counter[int] = Counter()
    for r in range(rounds):
        for target in TARGETS[r % 3:] + TARGETS[:r % 3]:
            cpu0 = serve.stat()[0]
            seen = await client.load(target, count, level, limit=60)
            if target == "serve":
                cpu.append((serve.stat()[0] - cpu0) / max(1, len(seen.latencies)))
            bad.update({s: n for s, n in seen.statuses.items() if s != 200})
            lat[target] += seen.latencies
            rates[target].append(len(seen.latencies) / seen.wall)
    p50 = {t: quantile(v, 0.5) * 1000 for t, v in lat.items()}
    p99 = {t: quantile(v, 0.99) * 1000 for t, v in lat.items()}
    rate = {t: statistics.median(v) for t, v in rates.items()}
    cpu_ms = statistics.median(cpu) * 1000
    print(f"  c={level}" + (f"   non-200 through serve: {dict(bad)}" if bad else ""))
    for t, label in (("direct", "direct (aiohttp)"), ("sdk", "direct (openai SDK)"),
                     ("serve", "through serve")):
        print(f"    {label:<20} p50 {p50[t]:6.2f} ms   p99 {p99[t]:6.2f} ms   "
              f"{rate[t]:5.0f} req/s" + (f"   serve CPU {cpu_ms:.2f} ms/req" if t == "serve"
                                         else ""))
    print(f"    added by serve       p50 {p50['serve'] - p50['direct']:+6.2f} ms "
          f"(x{p50['serve'] / p50['direct']:.3f})   p99 {p99['serve'] - p99['direct']:+6.2f} ms "
          f"(x{p99['serve'] / p99['direct']:.3f})" + (  # past c=1 the SDK is CPU-bound here
              f"   p50 beyond the SDK's own {p50['serve'] - p50['sdk']:+.2f} ms" if level == 1
              else ""))
    return {"added_p50": p50["serve"] - p50["direct"], "added_p99": p99["serve"] - p99["direct"],
            "ratio_p50": p50["serve"] / p50["direct"], "beyond_sdk": p50["serve"] - p50["sdk"],
            "rate": rate["serve"], "direct_rate": rate["direct"], "cpu": cpu_ms}


async def overload(client: Client, bursts: int) -> tuple[Counter[int], bool]:
    """`bursts` rounds of BURST requests in flight at once (4 x BURST requests each): the
    statuses, and whether every 503 said Retry-After."""
    statuses: Counter[int] = Counter()
    retry_ok = True
    for _ in range(bursts):
        seen = await client.load("serve", BURST * 4, BURST, limit=30)
        statuses.update(seen.statuses)
        retry_ok &= None not in seen.retry_after
        print(f"  {BURST} in flight, {sum(seen.statuses.values())} requests in {seen.wall:.1f} s: "
              + ", ".join(f"{s}: {n}" for s, n in sorted(seen.statuses.items()))
              + f"; Retry-After on the 503s: {dict(seen.retry_after)}")
    return statuses, retry_ok


async def alive(session: aiohttp.ClientSession, serve: ServeProcess) -> bool:
    if serve.proc.poll() is not None:
        return False
    async with session.get(f"{serve.url}/healthz") as response:
        return response.status == 200


async def measure(stub: StubProcess, quick: bool) -> list[Row]:
    serve = ServeProcess(stub.base_url)
    connector = aiohttp.TCPConnector(limit=BURST)  # keep-alive connections, reused
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            return await run_parts(session, stub, serve, quick)
        finally:
            serve.close()


async def run_parts(session: aiohttp.ClientSession, stub: StubProcess, serve: ServeProcess,
                    quick: bool) -> list[Row]:
    start = time.perf_counter()
    await serve.ready(session)
    print(f"engine serve ready in {time.perf_counter() - start:.1f} s (pid {serve.proc.pid}, "
          f"{serve.url}, one worker, --max-inflight {MAX_INFLIGHT})")
    client = Client(session, stub.base_url, serve.url)
    try:
        return await measured(client, session, serve, quick)
    finally:
        await client.sdk.close()


async def measured(client: Client, session: aiohttp.ClientSession, serve: ServeProcess,
                   quick: bool) -> list[Row]:
    for target in TARGETS:  # warm-up: connections, and the cache filled to its bound
        await client.load(target, CACHE_ENTRIES + 500, 32, limit=60)
    gc.collect()
    gc.freeze()  # the client's own collections out of the timings
    rss0 = serve.stat()[1]
    rounds = 3 if quick else 6
    print(f"\n(a) latency: {rounds} rounds per level, targets interleaved; stub latency "
          f"{LATENCY * 1000:.0f} ms")
    figures = {level: await added_latency(client, serve, level, rounds,
                                          count=50 if level == 1 else 150 * level)
               for level in LEVELS}
    soak = 3000 if quick else 20000
    seen = await client.load("serve", soak, MAX_INFLIGHT, limit=120)
    rss1 = serve.stat()[1]
    print(f"\n(c) soak: {sum(seen.statuses.values())} requests at c={MAX_INFLIGHT} in "
          f"{seen.wall:.1f} s ({dict(seen.statuses)})")
    print(f"\n(b) overload: --max-inflight {MAX_INFLIGHT}")
    statuses, retry_ok = await overload(client, 2 if quick else 4)
    ok = await alive(session, serve)
    rss2 = serve.stat()[1]
    growth = rss2 / rss0 - 1
    print(f"  afterwards: process alive and /healthz 200: {ok}")
    print(f"\n(c) serve's RSS: after warm-up {rss0 / 2**20:.1f} MiB, after the soak "
          f"{rss1 / 2**20:.1f} MiB, after the bursts {rss2 / 2**20:.1f} MiB ({growth:+.1%})")
    return table(figures, statuses, retry_ok, ok, growth)


def table(figures: dict[int, dict[str, float]], statuses: Counter[int], retry_ok: bool,
          ok: bool, growth: float) -> list[Row]:
    one, top = figures[1], figures[LEVELS[-1]]
    others = sum(n for s, n in statuses.items() if s not in (200, 503))
    return [
        ("p50 added latency, c=1", f"{one['added_p50']:.2f} ms", f"≤ {TARGET_MS:g} ms",
         one["added_p50"] <= TARGET_MS),
        ("p50 serve / direct, c=1", f"{one['ratio_p50']:.3f}", "-", None),
        ("p50 beyond the openai SDK's own, c=1", f"{one['beyond_sdk']:.2f} ms", "-", None),
        *((f"p50 / p99 added latency, c={lvl}",
           f"{f['added_p50']:.2f} / {f['added_p99']:.2f} ms", "-", None)
          for lvl, f in figures.items()),
        *((f"req/s through serve (direct), c={lvl}",
           f"{f['rate']:.0f} ({f['direct_rate']:.0f})", "-", None)
          for lvl, f in figures.items()),
        ("serve CPU per request, c=1 / c=" + str(LEVELS[-1]),
         f"{one['cpu']:.2f} / {top['cpu']:.2f} ms", "-", None),
        ("overload: 200 / 503 / other", f"{statuses[200]} / {statuses[503]} / {others}",
         "no other", others == 0),
        ("every 503 has Retry-After", str(retry_ok), "True", retry_ok),
        ("alive, /healthz 200 after", str(ok), "True", ok),
        ("RSS growth (soak + bursts)", f"{growth:+.1%}", "within ±5 %", abs(growth) <= 0.05),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a shorter soak")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    stub = StubProcess(StubConfig(seed=1, latency=LATENCY))
    try:
        print(f"stub (separate process) at {stub.base_url}: latency {LATENCY * 1000:.0f} ms")
        rows = asyncio.run(measure(stub, args.quick))
    finally:
        stub.close()
    print_table(rows)


if __name__ == "__main__":
    main()
