"""Hit rate and false-hit rate of the semantic cache on the labelled pairs, with the real model.

For each pair in tests/data/cache/pairs.jsonl the cached query is `a` and the new query `b`:
a "hit" pair should be served from the cache (cosine ≥ threshold and no near-miss guard
fires), a "miss" pair must not be. Both are compared as the cache stage compares them: their
canonical forms (engine/cache/canonical.py). Prints, for thresholds 0.70 to 0.97 (the issue
asks for 0.85 to 0.97; lower ones show what the guards allow), the paraphrase hit rate and
the false-hit rate with and without the guards, per split, then the guard's refusals of true
paraphrases, the near-misses that got through, the per-kind breakdown at the stage's
default threshold, and the guard's latency.

The splits, and how much each figure can be trusted:
- "dev" (321 pairs): the pairs the guards were developed against.
- "holdout" (84): written after the first guards by the same hands, evaluated once
  (52.5 % hits / 6.8 % false hits at 0.80), then developed against.
- "holdout2" (296), "holdout3" (300) and "holdout4" (300): written by helpers that saw
  neither the rules nor the other pairs. holdout2's first look (before canonical forms and
  the rules for directions, tiers, persons): 38.0 % / 20.0 % at 0.80; it was then developed
  against. holdout3's first look, with everything but the prefix-negation and time rules:
  58.0 % / 12.7 % (the old code: 49.3 % / 23.3 %); those two rules came after it.
  holdout4's first look, with all the rules: 51.3 % / 9.3 % — the honest figure of this
  version (fixes made after a review since then changed none of its pairs). The next
  change to the rules needs a new independent split for its honest figure.

    .venv/bin/python bench/cache_eval.py [--threshold 0.80] [--split all|dev|holdout|...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.cache.canonical import canonical
from engine.cache.near_miss import features, near_miss
from engine.resources.embeddings import Embedder

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "cache" / "pairs.jsonl"
THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97)
RECOMMENDED = 0.80  # the cache stage's default threshold
SPLITS = ("dev", "holdout", "holdout2", "holdout3", "holdout4")


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines() if line.strip()]


async def score(rows: list[dict[str, Any]]) -> None:
    """Add each pair's cosine similarity and the guard's verdict to the rows: of the
    canonical forms, as the cache stage embeds and guards them."""
    embedder = Embedder()
    first = await embedder.embed([canonical(row["a"]) for row in rows])
    second = await embedder.embed([canonical(row["b"]) for row in rows])
    for row, similarity in zip(rows, (first * second).sum(axis=1).tolist(), strict=True):
        row["sim"] = similarity
        row["reason"] = near_miss(row["b"], row["a"])


def rates(rows: list[dict[str, Any]], threshold: float, guards: bool) -> tuple[float, float]:
    """(paraphrase hit rate, false-hit rate) at `threshold`."""
    def served(row: dict[str, Any]) -> bool:
        return bool(row["sim"] >= threshold and not (guards and row["reason"]))
    hits = [served(r) for r in rows if r["label"] == "hit"]
    misses = [served(r) for r in rows if r["label"] == "miss"]
    return float(np.mean(hits)) if hits else 0.0, float(np.mean(misses)) if misses else 0.0


def table(rows: list[dict[str, Any]], title: str) -> None:
    n_hit = sum(r["label"] == "hit" for r in rows)
    print(f"\n== {title}: {len(rows)} pairs ({n_hit} paraphrases, {len(rows) - n_hit} near-misses)")
    print(f"{'threshold':>9} | {'hit (no guard)':>14} | {'false (no guard)':>16} | "
          f"{'hit (guards)':>12} | {'false (guards)':>14}")
    for threshold in THRESHOLDS:
        raw, guarded = rates(rows, threshold, False), rates(rows, threshold, True)
        print(f"{threshold:>9.2f} | {raw[0]:>14.1%} | {raw[1]:>16.1%} | {guarded[0]:>12.1%} | "
              f"{guarded[1]:>14.1%}")


def details(rows: list[dict[str, Any]], threshold: float) -> None:
    print("\n-- paraphrases the guards refuse (any similarity):")
    for r in rows:
        if r["label"] == "hit" and r["reason"]:
            print(f"   {r['sim']:.3f} [{r['split']}/{r['kind']}] {r['a']!r} / {r['b']!r}: "
                  f"{r['reason']}")
    print(f"-- near-misses served at {threshold} with guards:")
    for r in rows:
        if r["label"] == "miss" and not r["reason"] and r["sim"] >= threshold:
            print(f"   {r['sim']:.3f} [{r['split']}/{r['kind']}] {r['a']!r} / {r['b']!r}")
    print(f"-- per kind at {threshold} with guards (served / pairs):")
    kinds: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for r in rows:
        kinds[(r["label"], r["kind"])].append(r["sim"] >= threshold and not r["reason"])
    for (label, kind), served in sorted(kinds.items()):
        print(f"   {label:4} {kind:18} {sum(served):>3} / {len(served)}")


def latency(rows: list[dict[str, Any]]) -> None:
    """µs per near_miss call: cold (features extracted) and warm (cached features)."""
    texts = [(r["b"], r["a"]) for r in rows]
    features.cache_clear()
    canonical.cache_clear()
    start = time.perf_counter()
    for query, cached in texts:
        near_miss(query, cached)
    cold = (time.perf_counter() - start) / len(texts) * 1e6
    start = time.perf_counter()
    for _ in range(20):
        for query, cached in texts:
            near_miss(query, cached)
    warm = (time.perf_counter() - start) / len(texts) / 20 * 1e6
    print(f"\nnear_miss latency: {cold:.1f} µs per pair cold (both texts parsed), "
          f"{warm:.1f} µs warm (features cached)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=float, default=RECOMMENDED)
    parser.add_argument("--split", default="all", choices=["all", *SPLITS])
    args = parser.parse_args()
    rows = load()
    asyncio.run(score(rows))
    for split in SPLITS:
        if args.split in (split, "all"):
            table([r for r in rows if r["split"] == split], split)
    if args.split == "all":
        table(rows, "all")
    chosen = rows if args.split == "all" else [r for r in rows if r["split"] == args.split]
    details(chosen, args.threshold)
    latency(rows)


if __name__ == "__main__":
    main()
