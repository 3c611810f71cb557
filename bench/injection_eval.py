"""Measure the prompt-injection detector on the labelled corpus in tests/data/injection.

Prints precision / recall / false-positive rate overall, per family and per signal (rules
alone, then rules + the embedding similarity signal), the misses and false positives, and
p50/p95 latency of normalize + rules for 1 KB and 10 KB inputs and of the embedding signal
(against the raw model call on the same windows, the baseline it must stay within 1 ms of).

    .venv/bin/python bench/injection_eval.py [--no-embeddings]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.guard.injection import InjectionDetector, InjectionResult
from engine.guard.normalize import fold, normalize

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "injection"


def load(name: str) -> list[dict[str, str]]:
    lines = (DATA / name).read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def evaluate(detector: InjectionDetector, label: str,
                   detail: bool = True) -> dict[str, int]:
    """Print the figures (per family, misses and false positives too with `detail`); return
    the counts, and how many attack / benign scans consulted the similarity signal."""
    attacks, benign = load("attacks.jsonl"), load("benign.jsonl")
    calls_before = detector.similarity_calls
    hits: dict[str, list[bool]] = defaultdict(list)
    signals: dict[str, int] = defaultdict(int)
    false_pos: list[tuple[dict[str, str], InjectionResult]] = []
    misses: list[tuple[dict[str, str], InjectionResult]] = []
    for row in attacks:
        result = await detector.scan(row["text"])
        hits[row["family"]].append(result.blocked)
        if result.blocked:
            signals[str(result.signal)] += 1
        else:
            misses.append((row, result))
    after_attacks = detector.similarity_calls
    flagged: dict[str, list[bool]] = defaultdict(list)
    for row in benign:
        result = await detector.scan(row["text"])
        flagged[row["family"]].append(result.blocked)
        if result.blocked:
            false_pos.append((row, result))
    sim_attacks = after_attacks - calls_before
    sim_benign = detector.similarity_calls - after_attacks
    tp = sum(sum(v) for v in hits.values())
    fp = len(false_pos)
    counts = {"attacks": len(attacks), "benign": len(benign), "tp": tp, "fp": fp,
              "sim_attacks": sim_attacks, "sim_benign": sim_benign,
              "by_similarity": signals.get("similarity", 0)}
    print(f"\n== {label}: {len(attacks)} attacks, {len(benign)} benign ==")
    print(f"recall    {tp / len(attacks):.3f}  ({tp}/{len(attacks)})")
    print(f"FPR       {fp / len(benign):.3f}  ({fp}/{len(benign)})")
    print(f"precision {tp / max(1, tp + fp):.3f}")
    if not detail:
        return counts
    print("per attack family (recall):")
    for family, values in sorted(hits.items()):
        print(f"  {family:<13} {sum(values) / len(values):.2f}  ({sum(values)}/{len(values)})")
    print("per benign family (FPR):")
    for family, values in sorted(flagged.items()):
        print(f"  {family:<13} {sum(values) / len(values):.3f}  ({sum(values)}/{len(values)})")
    print("blocked attacks by deciding signal:", dict(signals))
    print(f"similarity calls: {detector.similarity_calls}")
    for row, result in misses:
        print(f"  MISS [{row['family']}] {result.score:.2f} {row['text'][:90]!r}")
    for row, result in false_pos:
        names = [f.name for f in result.findings]
        print(f"  FP   {result.score:.2f} {names} {row['text'][:80]!r}")
    return counts


def latency_rules(detector: InjectionDetector) -> None:
    base = " ".join(r["text"] for r in load("benign.jsonl"))
    for size in (1024, 10240):
        text = (base * (size // len(base) + 1))[:size]
        for _ in range(50):
            detector.scan_rules(text)
        times = []
        for _ in range(300 if size < 5000 else 60):
            start = time.perf_counter()
            detector.scan_rules(text)
            times.append(time.perf_counter() - start)
        norm = []
        for _ in range(300 if size < 5000 else 60):
            start = time.perf_counter()
            normalize(text)
            norm.append(time.perf_counter() - start)
        print(f"normalize+rules {size // 1024:>2} KB: p50 {pct(times, .5):.3f} ms  "
              f"p95 {pct(times, .95):.3f} ms   (normalize alone p50 {pct(norm, .5):.3f} ms)")


async def latency_similarity(detector: InjectionDetector, embedder: Any) -> tuple[float, float]:
    """p50 ms of a similarity-path scan and of the raw model call on the same texts."""
    texts = [r["text"] for r in load("benign.jsonl")
             if detector.needs_similarity(detector.rule_score(detector.scan_rules(r["text"])))]
    signal, raw = [], []
    for text in texts * 3:
        start = time.perf_counter()
        await detector.scan(text)
        signal.append(time.perf_counter() - start)
        start = time.perf_counter()
        await embedder.embed([fold(text)])
        raw.append(time.perf_counter() - start)
    print(f"similarity-path scans ({len(texts)} benign texts x3): p50 {pct(signal, .5):.2f} ms  "
          f"p95 {pct(signal, .95):.2f} ms; raw model call p50 {pct(raw, .5):.2f} ms "
          f"p95 {pct(raw, .95):.2f} ms; overhead p50 {pct(signal, .5) - pct(raw, .5):+.2f} ms")
    return pct(signal, .5), pct(raw, .5)


async def embedder_throughput(embedder: Any) -> None:
    for concurrency in (1, 8, 32):
        start = time.perf_counter()
        before = embedder.forward_passes
        n = 96
        for i in range(0, n, concurrency):
            await asyncio.gather(*(embedder.embed([f"ticket {j} about a late parcel"])
                                   for j in range(i, i + concurrency)))
        elapsed = time.perf_counter() - start
        print(f"embedder concurrency {concurrency:>2}: {n / elapsed:7.1f} texts/s, "
              f"{embedder.forward_passes - before} passes for {n} calls")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-embeddings", action="store_true")
    args = parser.parse_args()
    rules_only = InjectionDetector()
    await evaluate(rules_only, "rules only")
    latency_rules(rules_only)
    if args.no_embeddings:
        return
    from engine.resources.embeddings import Embedder

    embedder = Embedder(recent=0)  # time the model: repeated texts must not hit the memo
    start = time.perf_counter()
    detector = InjectionDetector(embedder=embedder)
    await detector.warm_up()
    print(f"\nmodel load + reference corpus embedding: {time.perf_counter() - start:.2f} s")
    await evaluate(detector, "rules + similarity")
    await latency_similarity(detector, embedder)
    await embedder_throughput(embedder)


if __name__ == "__main__":
    asyncio.run(main())
