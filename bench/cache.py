"""How fast, how big and how right is the response cache? Prints figures, asserts nothing.

A `MemoryCache` and GPTCache hold the same 1k / 10k / 100k entries; the same queries go to
both, interleaved. `.venv/bin/python bench/cache.py [--quick]`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cache_eval
import numpy as np
from report import Row, print_table

from engine.cache.canonical import canonical
from engine.cache.index import DEFAULT_HNSW_ABOVE
from engine.cache.keys import exact_key, key_text, partition, query_text
from engine.cache.near_miss import near_miss
from engine.cache.store import CacheEntry, MemoryCache
from engine.compile import CompiledPipeline, compile_pipeline
from engine.registry import Registry
from engine.resources import Resources
from engine.resources.embeddings import DIMENSIONS, Embedder
from engine.spec import parse_spec

PART = partition("bench", ["acme"], "fingerprint")
THRESHOLD = 0.80  # the stage's default. GPTCache scores 4 - L2² (L2² = 2 - 2 cos) against 4 t:
GPT_THRESHOLD = (4 - (2 - 2 * THRESHOLD)) / 4  # 0.9 is cosine 0.8
SIZES = (1_000, 10_000, 100_000)


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pcts(samples: list[float]) -> list[float]:
    return statistics.quantiles(samples, n=20)[9::9]  # p50, p95


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def open_gptcache(embedder: Embedder, folder: str) -> tuple[Any, Any] | str:
    """GPTCache's 'sqlite,faiss' data manager in `folder` and a Cache on it, or why not."""
    try:
        import gptcache.utils
        import gptcache.utils.dependency_control as control
        from gptcache import Cache, Config
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation
    except ImportError as error:
        return f"not installed ({error}): pip install gptcache"
    def refuse(package: str, warn: bool = False) -> None:  # it would run `pip install` itself
        raise RuntimeError(f"GPTCache tried to `pip install {package}` (network)")
    control.prompt_install = gptcache.utils.prompt_install = refuse
    try:
        manager = get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{folder}/gptcache.db"),
            VectorBase("faiss", dimension=DIMENSIONS, index_path=f"{folder}/faiss.index"),
            max_size=1_000_000)  # its default (1,000) would evict while we fill
    except Exception as error:
        return f"setup failed: {error!r}"
    manager.close = lambda: None  # its atexit hook would write into the deleted folder
    (cache := Cache()).init(
        pre_embedding_func=get_prompt, data_manager=manager,
        embedding_func=lambda text, **_: embedder._encode([text])[0],
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=GPT_THRESHOLD))
    return manager, cache


async def fill(store: MemoryCache, gpt: Any, real: tuple[list[str], Any], upto: int,
               rng: np.random.Generator) -> Any:
    """Grow both caches to `upto`, engine first; [engine s, RSS bytes, gpt s, gpt bytes]."""
    spent, (texts, vectors), chunks = np.zeros(4), real, []
    for n in range(len(store), upto, 10_000):
        count = min(10_000, upto - n)
        chunk = rng.standard_normal((count, DIMENSIONS)).astype(np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        mine = max(0, min(count, len(texts) - n))
        chunk[:mine] = vectors[n:n + mine]
        chunks.append((n, texts[n:n + mine] + [f"synthetic question {i}"
                                               for i in range(n + mine, n + count)], chunk))
    start, before = time.perf_counter(), rss()
    for n, queries, chunk in chunks:
        for i, query in enumerate(queries):
            await store.put(CacheEntry(
                key=exact_key(PART, query), partition=PART, pipeline="bench", scope=("acme",),
                query=query, answer=f"answer {n + i}", created=time.time(), ttl=86400.0,
                vector=chunk[i].copy()))  # its own buffer, like the stage's embedding
    spent[:2] = (time.perf_counter() - start, rss() - before)
    start, before = time.perf_counter(), rss()
    for n, queries, chunk in chunks if gpt is not None else []:
        answers = [f"answer {n + i}" for i in range(len(queries))]
        gpt[0].import_data(queries, answers, list(chunk), [None] * len(queries))
    spent[2:] = (time.perf_counter() - start, rss() - before)
    gc.freeze()  # the filled heap is permanent: keep full collections out of the timings
    return spent


async def semantic(store: MemoryCache, embedder: Embedder, text: str) -> str:
    """The stage's semantic lookup: embed, nearest, near-miss guards on the best candidate."""
    found = await store.nearest(PART, (await embedder.embed([canonical(text)]))[0])
    if not found:
        return "empty"
    entry, similarity = found[0]
    return "below" if similarity < THRESHOLD else "guard" if near_miss(text, entry.query) else "hit"


async def rate(store: MemoryCache, embedder: Embedder, queries: list[str], concurrency: int,
               count: int) -> tuple[float, float]:
    """Full semantic lookups per second with `concurrency` in flight; texts per forward pass."""
    todo = itertools.islice(itertools.cycle(queries), count)
    passes = embedder.forward_passes

    async def worker() -> None:
        for query in todo:
            await semantic(store, embedder, query)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start), count / (embedder.forward_passes - passes)


def pipeline(res: Resources, mode: str) -> CompiledPipeline:
    """`lookup` (a cache stage in `mode`) then `answer`; mode "none": `answer` alone."""
    lookup = ('  lookup: {type: cache, with: {resource: responses, key: "{{ input.q }}", '
              'scope: ["{{ input.tenant }}"], mode: MODE}}\n').replace("MODE", mode)
    text = ("version: 1\nname: bench-cache\nresources:\n  responses: {type: cache}\nstages:\n"
            + (lookup if mode != "none" else "") + "  answer: {type: template, needs: NEEDS, "
            'with: {output: "answer to {{ input.q }}"}}\noutput: "{{ stages.answer.output }}"\n')
    spec = parse_spec(text.replace("NEEDS", "[]" if mode == "none" else "[lookup]"), "<bench>")
    return compile_pipeline(spec, Registry.from_entry_points(), resources=res)


async def critical_path(queries: list[str], rounds: int) -> dict[str, list[float]]:
    """Per mode: median run s, entries stored when run() returned, and after settle()."""
    res = Resources()
    pipes = {mode: pipeline(res, mode) for mode in ("none", "exact", "semantic")}
    await asyncio.gather(*(pipe.warm_up() for pipe in pipes.values()))
    store = res.cache("responses", pipes["exact"].loaded.spec.resources["responses"])
    tenants, found = itertools.count(), {mode: [[], 0, 0] for mode in pipes}
    for _ in range(rounds + 1):  # the first round warms up
        for mode, pipe in pipes.items():
            runs: list[float] = []
            for query in queries:
                before, start = len(store), time.perf_counter()
                await pipe.run({"q": query, "tenant": f"t{next(tenants)}"})  # always a miss
                runs.append(time.perf_counter() - start)
                found[mode][1] += len(store) - before
                await res.settle()  # the background store, outside the timed window
                found[mode][2] += len(store) - before
            found[mode][0].append(statistics.mean(runs))
    await res.aclose()
    return {mode: [statistics.median(v[0][1:]), v[1], v[2]] for mode, v in found.items()}


async def eval_rates() -> list[Row]:
    """Hit / false-hit rates (guards on) at the stage's default, on the text the stage uses:
    per split, and the target checked on all pairs and on the last holdout alone (the one
    no rule was tuned on; see bench/cache_eval.py)."""
    rows: list[Row] = []
    pairs = [{**r, "a": query_text(r["a"]), "b": query_text(r["b"])} for r in cache_eval.load()]
    await cache_eval.score(pairs)
    for split in (*cache_eval.SPLITS, "all"):
        chosen = [r for r in pairs if split in ("all", r["split"])]
        hit, false = cache_eval.rates(chosen, THRESHOLD, True)
        print(f"    {split:8} {f'({len(chosen)} pairs)':>11} @{THRESHOLD:.2f} hit {hit:6.1%} "
              f"false {false:5.1%}")
        if split in ("all", cache_eval.SPLITS[-1]):
            rows += [(f"paraphrase hit @{THRESHOLD}, {split}", f"{hit:.1%}", ">= 60%",
                      hit >= 0.6),
                     (f"false hit @{THRESHOLD}, {split}", f"{false:.1%}", "<= 1%", false <= 0.01)]
    return rows


async def by_size(store: MemoryCache, embedder: Embedder, gpt: Any, data: dict[str, Any],
                  size: int, memory: Any) -> list[Row]:
    """Grow to `size`, then time exact lookups, and the semantic runners query by query."""
    spent = await fill(store, gpt, data["real"], size, data["rng"])
    memory += spent
    samples: dict[str, list[float]] = {"exact": [], "embed": [], "engine": [], "gptcache": []}
    for text in data["real"][0] * data["rounds"]:  # stored texts: all hits
        start = time.perf_counter()
        await store.get(exact_key(PART, key_text(query_text(text))))
        samples["exact"].append(time.perf_counter() - start)
    runners: dict[str, Any] = {"embed": lambda q: embedder.embed([q]),
                               "engine": lambda q: semantic(store, embedder, q)}
    if gpt is not None:
        from gptcache.adapter.api import get
        runners["gptcache"] = lambda q: asyncio.sleep(0, get(q, cache_obj=gpt[1]) is not None)
        gpt[1].report = type(gpt[1].report)()  # GPTCache's own per-step timings, this size
    outcomes = []
    for i, query in enumerate(data["queries"]):  # the order rotates query by query
        for name in itertools.islice(itertools.cycle(runners), i % 3, i % 3 + len(runners)):
            start = time.perf_counter()
            outcomes.append((name, await runners[name](query)))
            samples[name].append(time.perf_counter() - start)
    p = {name: pcts(values) for name, values in samples.items() if values}
    extra = p["engine"][0] - p["embed"][0]
    print(f"\n== {size:,} entries ({'flat' if size <= DEFAULT_HNSW_ABOVE else 'HNSW'}), filled "
          f"in {spent[0]:.1f} s (GPTCache import_data {spent[2]:.1f} s); p50 / p95\n"
          f"    exact    {p['exact'][0] * 1e6:.1f} µs / {p['exact'][1] * 1e6:.1f} µs (key_text + "
          "exact_key + get)\n" + "".join(f"    {name:8} {ms(p50)} / {ms(p95)}\n"
                                         for name, (p50, p95) in list(p.items())[1:])
          + f"    semantic - embed at p50: {ms(extra)}; outcomes engine "
          f"{ {o: outcomes.count(('engine', o)) for o in ('hit', 'guard', 'below')} }, "
          f"GPTCache hits {outcomes.count(('gptcache', True))}")
    rows = [(f"exact p50 @{size:,}", f"{p['exact'][0] * 1e6:.1f} µs", "<= 20 µs",
             p["exact"][0] <= 20e-6),
            (f"semantic - embed p50 @{size:,}", ms(extra), "<= 1 ms", extra <= 1e-3)]
    if gpt is not None:
        report, ratio = gpt[1].report, p["engine"][0] / p["gptcache"][0]
        print(f"    GPTCache's own means: embedding {ms(report.average_embedding_time())}, search"
              f" {ms(report.average_search_time())}, sqlite {ms(report.average_data_time())};"
              f" engine / GPTCache at p50 {ratio:.3f}")
        rows.append((f"engine / GPTCache p50 @{size:,}", f"{ratio:.3f}x", "<= 0.85x",
                     ratio <= 0.85))
    return rows


async def measure(quick: bool) -> list[Row]:
    pairs = cache_eval.load()
    texts = list(dict.fromkeys(query_text(r["a"]) for r in pairs))  # as the stage reads them
    sizes = SIZES[:2] if quick else SIZES
    embedder = Embedder(recent=0)  # time the model: repeated texts must not hit the memo
    await embedder.warm_up()
    vectors = await embedder.embed([canonical(text) for text in texts])  # as the stage stores
    data = {"real": (texts, vectors), "rng": np.random.default_rng(7),
            "queries": [query_text(r["b"]) for r in pairs][:120 if quick else None],
            "rounds": 5 if quick else 20}
    folder = tempfile.TemporaryDirectory(prefix="bench-gptcache-")
    gpt: Any = open_gptcache(embedder, folder.name)
    print(f"GPTCache skipped: {gpt}" if isinstance(gpt, str) else
          f"GPTCache {version('gptcache')}: sqlite + faiss IDMap,Flat (L2) in a temp dir, top_k "
          f"1, similarity_threshold {GPT_THRESHOLD:.3f} (= cosine {THRESHOLD})")
    gpt = None if isinstance(gpt, str) else gpt
    print(f"{len(texts)} texts stored, {len(data['queries'])} queries, 1 FAISS thread")
    store, memory, rows = MemoryCache(max_entries=sizes[-1]), np.zeros(4), []
    for size in sizes:
        rows += await by_size(store, embedder, gpt, data, size, memory)
    count, ones, many = 60 if quick else 150, [], []
    print(f"\n== lookups/s at {len(store):,} entries: concurrency 1 ({count} lookups) vs 64 "
          f"({count * 8}), 3 interleaved rounds, median")
    for _ in range(3):
        ones.append(await rate(store, embedder, data["queries"], 1, count))
        many.append(await rate(store, embedder, data["queries"], 64, count * 8))
    one, c64 = statistics.median(r[0] for r in ones), statistics.median(r[0] for r in many)
    print(f"    c=1 {one:,.0f}/s   c=64 {c64:,.0f}/s ({statistics.median(r[1] for r in many):.1f}"
          f" texts per forward pass)   gain {c64 / one:.2f}x")
    rows.append(("lookups/s c=64 / c=1", f"{c64 / one:.2f}x", ">= 3x", c64 / one >= 3))
    scale = 100_000 / sizes[-1] / 2**20
    print(f"\n== memory per 100k entries (RSS growth while each store filled, MiB): engine "
          f"{memory[1] * scale:,.0f} ({memory[1] / sizes[-1]:,.0f} B/entry; the float32 vectors"
          f" alone are {1e5 * DIMENSIONS * 4 / 2**20:,.0f}, held twice: CacheEntry.vector and "
          "FAISS)" + (f"; GPTCache {memory[3] * scale:,.0f} + a sqlite file of "
                      f"{os.path.getsize(folder.name + '/gptcache.db') * scale:,.0f}"
                      if gpt else ""))
    rows.append(("engine RSS per 100k entries", f"{memory[1] * scale:,.0f} MiB", "-", True))
    folder.cleanup()
    print("\n== hit / false-hit rates, guards on (cache_eval.py), as the stage compares")
    rows += await eval_rates()

    print("\n== pipeline.run on misses (a new tenant each record), median of per-round means")
    path = await critical_path(data["queries"][:40 if quick else 100], 3 if quick else 5)
    for mode, (run, at_return, after) in path.items():
        print(f"    cache {mode:8} run {ms(run)} (+{ms(run - path['none'][0])})   entries "
              f"stored when run() returned {at_return:.0f}, after settle() {after:.0f}")
    waited = path["exact"][1] + path["semantic"][1]
    return [*rows, ("entries stored before run() returned", f"{waited:.0f}", "0", waited == 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k entries, 120 queries")
    quick = parser.parse_args().quick
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    print_table(asyncio.run(measure(quick)))


if __name__ == "__main__":
    main()
