"""What does the guard stage cost, and what does it catch? Prints figures, asserts nothing.

One run, every ratio against a baseline measured in the same process:

(1) the guard STAGE (a one-stage pipeline, `await pipeline.run(record)`) on ~1 KB and ~10 KB
    support tickets, three configs interleaved round by round: `rules` (token count +
    injection rules), `+pii` (+ PII pattern pass, pseudonymize), `full` (+ the embedding
    signal); and its parts called directly: TokenCounter.count, normalize, scan_rules;
(2) detection precision/recall/FPR on tests/data/injection (bench/injection_eval.py) and PII
    recall per entity and per-KB cost vs Presidio's default set-up (bench/pii.py);
(3) the embedding signal's p50 vs the embedder's own p50 on the same texts;
(4) how often the embedding signal runs, and whether only on inconclusive rule scores.

Run: `.venv/bin/python bench/guard.py [--quick]` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.compile import CompiledPipeline, compile_pipeline
from engine.guard.injection import InjectionDetector
from engine.guard.normalize import normalize
from engine.guard.pii import PiiScanner
from engine.guard.tokens import TokenCounter
from engine.registry import Registry
from engine.spec import parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import injection_eval  # bench/ scripts: reused, not copied
import pii
from report import Row, print_table

PII, NO_EMBED = "pii: {action: pseudonymize}\n", "injection: {embeddings: false}"
CONFIGS = {"rules": NO_EMBED, "+pii": PII + NO_EMBED, "full": PII + "injection: {embeddings: true}"}
SIZES = {"1 KB": 1024, "10 KB": 10240}


class Replay:
    """The real embedder's vectors, replayed from memory: the similarity path minus the model."""

    def __init__(self, embedder: Any) -> None:
        self.embedder, self.seen = embedder, dict[tuple[str, ...], Any]()

    async def embed(self, texts: list[str]) -> Any:
        if tuple(texts) not in self.seen:
            self.seen[tuple(texts)] = await self.embedder.embed(texts)
        return self.seen[tuple(texts)]


async def non_model_ms(detector: Any, texts: list[str], rounds: int) -> float:
    """p50 ms of a similarity-path scan whose model call costs nothing (vectors replayed)."""
    replay = InjectionDetector(detector.threshold, Replay(detector.embedder))
    for text in texts:  # primes the replay with every window the scans will ask for
        await replay.scan(text)
    samples = []
    for text in texts * rounds:
        start = time.perf_counter()
        await replay.scan(text)
        samples.append(time.perf_counter() - start)
    return ms(samples)


def build(name: str, checks: str) -> CompiledPipeline:
    body = "\n".join(" " * 6 + line for line in
                     ['text: "{{ input.text }}"', "max_tokens: {limit: 8000, action: block}",
                      *checks.splitlines()])
    text = (f"version: 1\nname: bench-guard-{name.strip('+')}\nstages:\n  guard:\n"
            f"    type: guard\n    with:\n{body}\n")
    return compile_pipeline(parse_spec(text, "<bench>"), Registry.from_entry_points())


def guard_of(pipeline: CompiledPipeline) -> Any:
    return pipeline.stages["guard"].stage


def tickets() -> dict[str, list[str]]:
    """Support tickets: the benign support texts interleaved with the PII-labelled records."""
    support = [r for r in injection_eval.load("benign.jsonl") if r["family"] == "support"]
    labelled = pii.load("labelled.jsonl")
    mixed = [row for pair in zip(labelled, support * 2, strict=False) for row in pair]
    return {"1 KB": pii.documents(mixed, SIZES["1 KB"], 30),
            "10 KB": pii.documents(mixed, SIZES["10 KB"], 10)}


def ms(samples: list[float], q: float = 0.5) -> float:
    return pii.percentile(samples, q) * 1000


async def stage_latency(pipes: dict[str, CompiledPipeline], docs: dict[str, list[str]],
                        rounds: int) -> tuple[dict[tuple[str, str], list[float]], dict[str, int]]:
    """Seconds per call per config and part, interleaved; `full` runs on the similarity path."""
    rules = guard_of(pipes["rules"]).injection_detector()
    scanner, full = guard_of(pipes["+pii"]).pii_scanner(), guard_of(pipes["full"])
    tokens = TokenCounter("gpt-4o")  # the stage's counter with no tier named

    def both(text: str) -> None:
        tokens.count(text)
        rules.scan_rules(text)  # normalizes internally: normalize is counted once

    parts: dict[str, Callable[[str], Any]] = {
        "token count": tokens.count, "normalize": normalize,
        "scan_rules (incl. normalize)": rules.scan_rules,
        "token count + normalize + rules": both, "PII pass (patterns)": scanner.find}
    samples: dict[tuple[str, str], list[float]] = {}
    took = dict.fromkeys(docs, 0)
    for texts in docs.values():  # warm-up, and a sanity check of the set-up
        for name, pipe in pipes.items():
            result = await pipe.run({"text": texts[0]})
            if result.status == "error":
                raise SystemExit(f"{name} failed: {result.error}")
    for _ in range(rounds):
        for size, texts in docs.items():
            for text in texts:
                for name, pipe in pipes.items():
                    calls = full.injection_detector().similarity_calls
                    start = time.perf_counter()
                    await pipe.run({"text": text})
                    samples.setdefault((name, size), []).append(time.perf_counter() - start)
                    took[size] += full.injection_detector().similarity_calls - calls
                for name, part in parts.items():
                    start = time.perf_counter()
                    part(text)
                    samples.setdefault((name, size), []).append(time.perf_counter() - start)
    return samples, took


async def measure(quick: bool) -> list[Row]:
    rows: list[Row] = []
    rounds = 3 if quick else 10
    start = time.perf_counter()
    pipes = {name: build(name, checks) for name, checks in CONFIGS.items()}
    for pipe in pipes.values():
        await pipe.warm_up()
    print(f"compile + warm_up of 3 pipelines (Presidio, model load): "
          f"{time.perf_counter() - start:.2f} s")
    docs = tickets()
    print(f"\n(1) guard stage on support tickets ({len(docs['1 KB'])} x 1 KB, "
          f"{len(docs['10 KB'])} x 10 KB), {rounds} rounds interleaved, ms per call")
    samples, took = await stage_latency(pipes, docs, rounds)
    print(f"    {'':34s}" + "".join(f"{s + ' p50':>11s}{s + ' p95':>11s}" for s in SIZES))
    names = [*pipes, "token count", "normalize", "scan_rules (incl. normalize)",
             "token count + normalize + rules", "PII pass (patterns)"]
    for name in names:
        label = f"stage '{name}'" if name in pipes else f"  {name}"
        print(f"    {label:34s}" + "".join(
            f"{ms(samples[name, s]):11.3f}{ms(samples[name, s], .95):11.3f}" for s in SIZES))
        for size in SIZES if name in pipes else ():
            rows.append((f"stage '{name}' {size} p50 / p95",
                         f"{ms(samples[name, size]):.2f} / {ms(samples[name, size], .95):.2f} ms",
                         "-", None))
    for size in SIZES:
        over = ms(samples["rules", size]) - ms(samples["token count + normalize + rules", size])
        runs = rounds * len(docs[size])
        print(f"    {size}: stage 'rules' minus its parts called directly (executor, template, "
              f"findings): {over:+.3f} ms p50; 'full' took the similarity path in "
              f"{took[size]}/{runs} runs")
    for size in SIZES:
        core = ms(samples["token count + normalize + rules", size])
        rows.append((f"tokens + normalize + rules {size} p50", f"{core:.3f} ms",
                     *(("<= 1.000 ms", core <= 1.0) if size == "1 KB" else ("-", None))))

    print("\n(2) detection on tests/data/injection, with the stages' own detectors")
    rules = guard_of(pipes["rules"]).injection_detector()
    detector = guard_of(pipes["full"]).injection_detector()
    cheap = await injection_eval.evaluate(rules, "stage 'rules': rules only", detail=False)
    got = await injection_eval.evaluate(detector, "stage 'full': rules + similarity",
                                        detail=False)
    print(f"    the similarity signal decided {got['by_similarity']} blocks; vs rules only: "
          f"{got['tp'] - cheap['tp']:+d} attacks caught, {got['fp'] - cheap['fp']:+d} false "
          "positives (per-family detail: bench/injection_eval.py)")
    recall, fpr = got["tp"] / got["attacks"], got["fp"] / got["benign"]
    rows += [("injection recall (full)", f"{recall:.3f}", ">= 0.90", recall >= 0.90),
             ("injection FPR on benign (full)", f"{fpr:.3f}", "<= 0.02", fpr <= 0.02),
             ("injection precision (full)", f"{got['tp'] / max(1, got['tp'] + got['fp']):.3f}",
              "-", None)]

    print("\n    PII: the stage's scanner vs Presidio's default set-up on the same documents")
    pii.quiet_presidio_logs()
    labelled, scanner = pii.load("labelled.jsonl"), guard_of(pipes["+pii"]).pii_scanner()
    ner, analyzer = PiiScanner([*pii.STRUCTURED, "PERSON"], ner=True), pii.presidio_default()
    ratios = pii.latency(pii.runners(scanner, ner, analyzer), labelled, rounds)
    table = pii.recall_table(scanner, ner, analyzer, labelled)
    for entity, (hit, total) in [*table["ours, patterns only"].items(),
                                 ("PERSON", table["ours + NER"]["PERSON"])]:
        ok = hit / total >= 0.95 if entity != "PERSON" else None
        rows.append((f"PII recall {entity}" + (" (NER)" if ok is None else ""),
                     f"{hit / total:.3f}", ">= 0.95" if ok is not None else "-", ok))
    rows += [(f"PII pass / Presidio default {size} p50", f"{ratio:.2f}x", "<= 0.3x", ratio <= 0.3)
             for size, ratio in ratios.items()]

    print("\n(3) the embedding signal vs the embedder's own call on the same texts")
    signal, raw = await injection_eval.latency_similarity(detector, detector.embedder)
    rows.append(("similarity scan p50 vs model p50", f"{signal:.2f} vs {raw:.2f} ms",
                 "<= model + 1 ms", signal <= raw + 1))  # two noisy p50s: see the next rows
    for label, texts in [("corpus", [r["text"] for r in injection_eval.load("benign.jsonl")]),
                         *docs.items()]:
        path = [t for t in texts if detector.needs_similarity(
            detector.rule_score(detector.scan_rules(t)))]
        if not path:
            print(f"    no {label} text takes the similarity path")
            continue
        work = await non_model_ms(detector, path, rounds)
        print(f"    the same path with the model's vectors replayed (rules, fold, windows, "
              f"cosine, awaits), {len(path)} {label} texts: p50 {work:.3f} ms")
        rows.append((f"similarity path minus model, {label}", f"{work:.3f} ms",
                     *(("<= 1 ms", work <= 1) if label == "corpus" else ("-", None))))

    print("\n(4) when the embedding signal runs (rule score in [low_band, threshold) only)")
    expected = {}
    for kind in ("attacks", "benign"):
        texts = [r["text"] for r in injection_eval.load(f"{kind}.jsonl")]
        scores = [detector.rule_score(detector.scan_rules(t)) for t in texts]
        expected[kind] = sum(detector.needs_similarity(s) for s in scores)
        silent = sum(s == 0 for s in scores)
        decisive = sum(s >= detector.threshold for s in scores)
        share = got[f"sim_{kind}"] / got[kind]
        print(f"    {kind:8s}: {got[f'sim_{kind}']}/{got[kind]} ({share:.0%}) took the "
              f"similarity path (in band: {expected[kind]}); no rule hit {silent}, "
              f"decided by rules {decisive}")
        rows.append((f"similarity path share, {kind}", f"{share:.1%}", "-", None))
    only = expected["attacks"] == got["sim_attacks"] and expected["benign"] == got["sim_benign"]
    rows.append(("similarity only when rules inconclusive", "yes" if only else "no", "yes", only))
    return rows




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    print_table(asyncio.run(measure(args.quick)))


if __name__ == "__main__":
    main()
