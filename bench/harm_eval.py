"""Measure the local harm scorer and the candidates it was chosen over, on the labelled set.

    .venv/bin/python bench/harm_eval.py

The set is tests/data/harm/labelled.jsonl (customer-support answers and tickets, 40 %
harmful, hard negatives included). Candidates, each at the default threshold 0.7:

- `profanity-check, as shipped`: alt-profanity-check's probability of the whole text.
- `profanity (calibrated)`: the same model, max over sentences, cut at 0.9 (the `profanity`
  category of `LocalHarm`).
- `similarity`: the embedding margin against exemplars and contrasts (the other categories).
- `both (LocalHarm)`: the max of the two, the shipped default.

Also printed: the best F1 any cut reaches for plain max-cosine similarity (no contrasts, as
the injection guard does it) and for raw profanity-check, an upper bound for those; the
chosen scorer's figures when its cut is picked by 5-fold cross-validation instead of on the
whole set; per-kind rates; every miss and false positive; and p50 latency per text of each
signal, with the embedding memo off so every text pays for its forward pass. Prints, never
asserts.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.resources.embeddings import Embedder
from engine.validate.harm import EXEMPLARS, THRESHOLD, HarmVerdict, LocalHarm, pieces

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Row, print_table

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "harm" / "labelled.jsonl"


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text("utf-8").splitlines() if line.strip()]


def prf(flags: list[bool], labels: list[bool]) -> tuple[float, float, float]:
    tp = sum(f and y for f, y in zip(flags, labels, strict=True))
    fp = sum(f and not y for f, y in zip(flags, labels, strict=True))
    fn = sum(y and not f for f, y in zip(flags, labels, strict=True))
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return precision, recall, 2 * precision * recall / max(1e-9, precision + recall)


def best_cut(scores: list[float], labels: list[bool]) -> tuple[float, float]:
    """The cut with the highest F1 on these scores (an in-sample upper bound), and that F1."""
    return max(((cut, prf([s >= cut for s in scores], labels)[2]) for cut in sorted(set(scores))),
               key=lambda pair: pair[1])


def cross_validated(scores: list[float], labels: list[bool], folds: int = 5) -> list[bool]:
    """Flags when each fold's cut is chosen on the other folds only."""
    order = list(range(len(scores)))
    random.Random(0).shuffle(order)
    flags = [False] * len(scores)
    for k in range(folds):
        test = set(order[k::folds])
        train = [i for i in order if i not in test]
        cut, _ = best_cut([scores[i] for i in train], [labels[i] for i in train])
        for i in test:
            flags[i] = scores[i] >= cut
    return flags


async def plain_cosine(scorer: LocalHarm, text: str) -> float:
    """Max cosine of any piece to any exemplar: the similarity signal without contrasts."""
    _, exemplars, _ = await scorer._ready()
    vectors = await scorer._embedder().embed(pieces(text))
    return float((vectors @ exemplars.T).max())


def raw_profanity(scorer: LocalHarm, text: str) -> float:
    assert scorer._profanity is not None
    return float(scorer._profanity._slow([text])[0])


async def p50_ms(texts: list[str], call: Callable[[str], Awaitable[Any]]) -> float:
    times = []
    for text in texts:
        start = time.perf_counter()
        await call(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def similarity_score(verdict: HarmVerdict) -> float:
    assert verdict.categories is not None
    return max(verdict.categories[name] for name in EXEMPLARS)


def per_kind(rows: list[dict[str, Any]], flags: list[bool]) -> None:
    kinds: dict[str, list[bool]] = defaultdict(list)
    for row, flag in zip(rows, flags, strict=True):
        kinds[f"{'harmful' if row['harmful'] else 'benign'}/{row['kind']}"].append(flag)
    print("\nflagged at 0.7, per kind (recall for harmful, false-positive rate for benign):")
    for kind, values in sorted(kinds.items()):
        print(f"  {kind:<26} {sum(values) / len(values):.2f}  ({sum(values)}/{len(values)})")


def errors(rows: list[dict[str, Any]], verdicts: list[HarmVerdict]) -> None:
    for row, verdict in zip(rows, verdicts, strict=True):
        if (verdict.score >= THRESHOLD) != row["harmful"]:
            label = "FP  " if not row["harmful"] else "MISS"
            cats = verdict.categories or {}
            top = max(cats, key=lambda name: cats[name])
            print(f"  {label} {verdict.score:.2f} {top:<10} [{row['kind']}] {row['text'][:80]!r}")


async def main() -> None:
    rows = load()
    labels = [bool(row["harmful"]) for row in rows]
    texts = [str(row["text"]) for row in rows]
    start = time.perf_counter()
    scorer = LocalHarm(Embedder(recent=0))  # time the model: no text may hit the memo
    await scorer.warm_up()
    print(f"{len(rows)} texts, {sum(labels)} harmful; warm-up {time.perf_counter() - start:.1f} s")

    verdicts = [await scorer.score(text) for text in texts]
    both = [v.score for v in verdicts]
    similarity = [similarity_score(v) for v in verdicts]
    profanity = [(v.categories or {})["profanity"] for v in verdicts]
    shipped = [raw_profanity(scorer, text) for text in texts]
    cosine = [await plain_cosine(scorer, text) for text in texts]

    candidates = {"profanity-check, as shipped": shipped, "profanity (calibrated)": profanity,
                  "similarity": similarity, "both (LocalHarm)": both}
    rows_out: list[Row] = []
    print("\ncandidate                     cut   precision  recall   F1")
    for name, scores in candidates.items():
        p, r, f = prf([s >= THRESHOLD for s in scores], labels)
        print(f"{name:<28} {THRESHOLD:.2f}   {p:.3f}      {r:.3f}    {f:.3f}")
        rows_out.append((f"F1 {name} @0.7", f"{f:.3f}", "", None))
    bounds = {name: best_cut(scores, labels) for name, scores in
              {"raw profanity-check": shipped, "plain max-cosine": cosine,
               "both (LocalHarm)": both}.items()}
    for name, (cut, f) in bounds.items():
        print(f"{name + ', best cut':<28} {cut:.2f}   (in-sample upper bound)    {f:.3f}")
    for cut in (0.5, 0.9):
        p, r, f = prf([s >= cut for s in both], labels)
        print(f"{'both (LocalHarm)':<28} {cut:.2f}   {p:.3f}      {r:.3f}    {f:.3f}")
    p_cv, r_cv, f_cv = prf(cross_validated(both, labels), labels)
    print(f"{'both, cut by 5-fold CV':<28}  -     {p_cv:.3f}      {r_cv:.3f}    {f_cv:.3f}")

    per_kind(rows, [s >= THRESHOLD for s in both])
    print("\nerrors of LocalHarm at 0.7:")
    errors(rows, verdicts)

    latency = {
        "similarity": await p50_ms(texts, scorer.similarity),
        "profanity": await p50_ms(texts, scorer.profanity),
        "both (score)": await p50_ms(texts, scorer.score),
    }
    shipped_ms = await p50_ms(texts, lambda text: asyncio.to_thread(raw_profanity, scorer, text))
    print("\np50 ms per text: " + ", ".join(f"{k} {v:.2f}" for k, v in latency.items())
          + f", profanity-check predict_prob as shipped {shipped_ms:.2f}")

    p, r, f = prf([s >= THRESHOLD for s in both], labels)
    hard = [s for s, row in zip(both, rows, strict=True) if row["kind"] == "hard_negative"]
    print_table([
        ("LocalHarm precision @0.7", f"{p:.3f}", ">= 0.85", p >= 0.85),
        ("LocalHarm recall @0.7", f"{r:.3f}", ">= 0.80", r >= 0.80),
        ("LocalHarm F1 @0.7", f"{f:.3f}", "", None),
        ("LocalHarm F1, cut by 5-fold CV", f"{f_cv:.3f}", "", None),
        *rows_out[:-1],
        ("F1 plain max-cosine, best cut", f"{bounds['plain max-cosine'][1]:.3f}", "", None),
        ("hard negatives flagged", f"{sum(s >= THRESHOLD for s in hard)}/{len(hard)}", "0",
         not any(s >= THRESHOLD for s in hard)),
        ("p50 ms / text, LocalHarm.score", f"{latency['both (score)']:.1f}", "", None),
        ("p50 ms / text, similarity only", f"{latency['similarity']:.1f}", "", None),
        ("p50 ms / text, profanity only", f"{latency['profanity']:.2f}", "", None),
        ("p50 ms / text, predict_prob as shipped", f"{shipped_ms:.2f}", "", None),
    ])


if __name__ == "__main__":
    asyncio.run(main())
