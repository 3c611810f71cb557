"""What do the validate stage's checks catch, and what do they cost? Prints, asserts nothing.

(a) JSON repair: on bench/data/validate/damaged_json.jsonl (200 raw model outputs, 170 of
    them damaged but recoverable), how many parse to exactly the value meant with plain
    `json.loads` and with `engine.providers.structured.parse_json` (json_repair behind it),
    per damage kind; and how many of the 30 unrecoverable outputs (prose, empty, HTML error
    pages, ambiguous truncations, conflicting objects) `parse_json` wrongly turns into a
    non-empty value.
(b) Groundedness: precision / recall / F1 of `engine.validate.grounded.grounding` at
    *detecting unsupported sentences* on bench/data/validate/grounded.jsonl (100 labelled
    answers, 319 factual sentences, 37 % unsupported), at the default min_support 0.6, a
    sweep 0.40-0.80, each half of the set, and the candidate scorings the default was chosen
    from (the module's constants patched for the run).
(c) Latency: p50 / p95 of `grounding(...)` per answer — on first sight of its texts (the
    model warm; passages shared with earlier answers are already remembered, as in
    production) and with every text remembered (the same KB chunks retrieved again) — and of
    `parse_json` per output, against `json.loads` of the clean JSON of the same value.

Labelling rule for grounded.jsonl (one boolean per *factual* sentence, in order):

- The sentences are those `split_sentences(answer)` yields that `claim_free` does not skip
  (greetings, thanks, one-clause apologies, closings, questions, "Here is...:" lead-ins);
  the script checks that the counts agree and reports any row where they do not.
- true: everything the sentence states is said by, or directly follows from, the passages
  given with it — paraphrase allowed, number words equal digits ("five to seven" = "5-7").
  An instruction ("open Settings > Billing") is a claim that the step exists.
- false: any part of it is absent from those passages or contradicts them: an invented or
  changed number, day, price, limit, product, step or policy. A fact that is true in the
  full knowledge base but absent from the passages given is false: the check is about
  *these* passages. With no passages at all, every factual sentence is false.

The answers and labels were written by the same hands as the scorer (no sentence is
copied into any rule); the 13 hardest paraphrases were added before the constants were
chosen, but read the figures as optimistic all the same.

Run: `.venv/bin/python bench/validate.py [--quick] [--errors]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.compile import compile_pipeline
from engine.providers.structured import parse_json
from engine.providers.stub import StubProvider
from engine.providers.stub_config import StubConfig
from engine.registry import Registry
from engine.resources.embeddings import Embedder
from engine.spec import parse_spec
from engine.validate import grounded
from engine.validate.grounded import claim_free, grounding, split_sentences

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Row, print_table

DATA = Path(__file__).resolve().parent / "data" / "validate"
CUT = grounded.MIN_SUPPORT
SWEEP = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80)
EXTRA_KINDS = frozenset({"double_encoded"})
"""Recoverable damage added to the issue's list: JSON sent as a JSON string literal."""
Labelled = list[tuple[bool, float, str]]
"""(label, score, sentence) for every factual sentence of the set."""


def load(name: str) -> list[dict[str, Any]]:
    with (DATA / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- (a) JSON repair ----------------------------------------------------------------------------
def plain(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def empty(value: Any) -> bool:
    return value is None or value in ("", {}, [])


def repair_part(rows: list[dict[str, Any]]) -> list[Row]:
    print("(a) JSON repair: parsed value == expected (recoverable) / non-empty (unrecoverable)")
    print(f"{'damage':<26}{'n':>4}{'json.loads':>12}{'parse_json':>12}")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        kinds.setdefault(row["damage"], []).append(row)
    totals: Counter[str] = Counter()
    failing: list[str] = []
    for kind, group in kinds.items():
        n = len(group)
        recoverable = group[0]["recoverable"]
        if recoverable:
            before = sum(plain(r["text"]) == r["expected"] for r in group)
            after = sum(parse_json(r["text"]) == r["expected"] for r in group)
            totals.update(recoverable=n, before=before, after=after)
            if kind not in EXTRA_KINDS:
                totals.update(listed=n, listed_after=after)
            if after < n:
                failing.append(f"{kind} ({n - after}/{n})")
        else:
            before = sum(not empty(plain(r["text"])) for r in group)
            after = sum(not empty(parse_json(r["text"])) for r in group)
            totals.update(unrecoverable=n, wrong=after)
        tag = "" if recoverable else "  (unrecoverable: non-empty)"
        print(f"{kind:<26}{n:>4}{before:>12}{after:>12}{tag}")
    return repair_rows(totals, failing)


def repair_rows(totals: Counter[str], failing: list[str]) -> list[Row]:
    n = totals["recoverable"]
    after = totals["after"] / n
    print("recoverable kinds parse_json gets wrong:", ", ".join(failing) or "none")
    print(f"on the issue's damage kinds only (without {', '.join(sorted(EXTRA_KINDS))}): "
          f"{totals['listed_after']}/{totals['listed']} = "
          f"{totals['listed_after'] / totals['listed']:.1%}")
    return [
        ("repair: recoverable parsed, json.loads", f"{totals['before'] / n:.1%}", "-", None),
        ("repair: recoverable parsed, parse_json", f"{after:.1%}", ">= 98%", after >= 0.98),
        ("repair: unrecoverable -> non-empty value",
         f"{totals['wrong']}/{totals['unrecoverable']}", "report", None),
    ]


# -- (b) groundedness ------------------------------------------------------------------------------
async def score_all(rows: list[dict[str, Any]], embedder: Embedder) -> tuple[Labelled, int]:
    """Every factual sentence's (label, score, text); rows whose sentences and labels do not
    line up are left out and counted."""
    scored: Labelled = []
    misaligned = 0
    for row in rows:
        result = await grounding(row["answer"], row["passages"], embedder)
        if len(result.sentences) != len(row["labels"]):
            misaligned += 1
            continue
        scored += [(label, s.score, s.text)
                   for label, s in zip(row["labels"], result.sentences, strict=True)]
    return scored, misaligned


def prf(scored: Labelled, cut: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of flagging unsupported sentences (score < cut)."""
    tp = sum(1 for label, score, _ in scored if not label and score < cut)
    fp = sum(1 for label, score, _ in scored if label and score < cut)
    fn = sum(1 for label, score, _ in scored if not label and score >= cut)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_cut(scored: Labelled) -> tuple[float, float]:
    """The cut in 0.20..0.94 with the best F1, and that F1."""
    return max(((cut / 100, prf(scored, cut / 100)[2]) for cut in range(20, 95)),
               key=lambda item: item[1])


@contextmanager
def patched(**constants: float) -> Iterator[None]:
    """Run with some of the scorer's calibration constants changed (a candidate scoring)."""
    saved = {name: getattr(grounded, name) for name in constants}
    for name, value in constants.items():
        setattr(grounded, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(grounded, name, value)


CANDIDATES: dict[str, dict[str, float]] = {
    "semantic only": {"W_SEMANTIC": 1.0, "MISSING_CAP": 1.0, "MOVED_CAP": 1.0},
    "lexical only": {"W_SEMANTIC": 0.0, "MISSING_CAP": 1.0, "MOVED_CAP": 1.0},
    "semantic + specifics caps": {"W_SEMANTIC": 1.0},
    "lexical + specifics caps": {"W_SEMANTIC": 0.0},
    "blend, no caps": {"MISSING_CAP": 1.0, "MOVED_CAP": 1.0},
    "blend + caps (default)": {},
    "blend 0.3 semantic + caps": {"W_SEMANTIC": 0.3},
}


async def candidates_part(rows: list[dict[str, Any]], embedder: Embedder) -> None:
    print(f"\ncandidate scorings{'':<17}{'P@0.6':>7}{'R@0.6':>7}{'F1@0.6':>8}"
          f"{'best cut':>10}{'best F1':>9}")
    for name, constants in CANDIDATES.items():
        with patched(**constants):
            scored, _ = await score_all(rows, embedder)
        precision, recall, f1 = prf(scored, CUT)
        cut, top = best_cut(scored)
        print(f"  {name:<33}{precision:>7.3f}{recall:>7.3f}{f1:>8.3f}{cut:>10.2f}{top:>9.3f}")


def grounded_rows(scored: Labelled, misaligned: int, rows: list[dict[str, Any]],
                  halves: tuple[Labelled, Labelled]) -> list[Row]:
    unsupported = sum(1 for label, _, _ in scored if not label)
    print(f"\n(b) groundedness: {len(scored)} factual sentences, {unsupported} unsupported "
          f"({unsupported / len(scored):.0%}); misaligned rows: {misaligned}/{len(rows)}")
    print(f"{'min_support':>12}{'precision':>11}{'recall':>8}{'F1':>7}")
    for cut in SWEEP:
        precision, recall, f1 = prf(scored, cut)
        print(f"{cut:>12.2f}{precision:>11.3f}{recall:>8.3f}{f1:>7.3f}")
    for name, half in zip(("even rows", "odd rows"), halves, strict=True):
        print(f"  {name} at {CUT}: P/R/F1 = " + " / ".join(f"{x:.3f}" for x in prf(half, CUT)))
    precision, recall, f1 = prf(scored, CUT)
    cut, top = best_cut(scored)
    return [
        ("grounded: precision (unsupported) @0.6", f"{precision:.3f}", "-", None),
        ("grounded: recall (unsupported) @0.6", f"{recall:.3f}", "-", None),
        ("grounded: F1 @0.6", f"{f1:.3f}", "-", None),
        ("grounded: best cut (F1)", f"{cut:.2f} ({top:.3f})", "~0.6", abs(cut - CUT) <= 0.05),
        ("grounded: rows misaligned with labels", str(misaligned), "0", misaligned == 0),
    ]


def print_errors(scored: Labelled) -> None:
    print("\nmisjudged at 0.6 (FN: hallucination passed; FP: supported sentence flagged)")
    for label, score, text in scored:
        if label != (score >= CUT):
            print(f"  {'FP' if label else 'FN'} {score:.2f}  {text}")


# -- (c) latency ------------------------------------------------------------------------------
async def grounding_latency(rows: list[dict[str, Any]], embedder: Embedder) -> list[float]:
    times = []
    for row in rows:
        start = time.perf_counter()
        await grounding(row["answer"], row["passages"], embedder)
        times.append((time.perf_counter() - start) * 1000)
    return times


def parse_latency(rows: list[dict[str, Any]], rounds: int) -> tuple[list[float], list[float]]:
    """parse_json per damaged output, and json.loads of the clean JSON of the same value."""
    clean = [json.dumps(row["expected"]) for row in rows if row["recoverable"]]
    repaired = [timed(parse_json, row["text"]) for _ in range(rounds) for row in rows]
    baseline = [timed(json.loads, text) for _ in range(rounds) for text in clean]
    return repaired, baseline


def timed(function: Callable[[str], Any], text: str) -> float:
    start = time.perf_counter()
    function(text)
    return (time.perf_counter() - start) * 1000


def latency_rows(cold: list[float], warm: list[float], repaired: list[float],
                 baseline: list[float]) -> list[Row]:
    def ms(values: list[float]) -> str:
        return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.95):.1f} ms"

    def us(values: list[float]) -> str:
        return f"{percentile(values, 0.5) * 1000:.0f} / {percentile(values, 0.95) * 1000:.0f} µs"

    return [
        ("latency: grounding, first sight p50 / p95", ms(cold), "-", None),
        ("latency: grounding, texts remembered p50 / p95", ms(warm), "-", None),
        ("latency: parse_json p50 / p95", us(repaired), "-", None),
        ("latency: json.loads of clean JSON p50 / p95", us(baseline), "-", None),
    ]


STAGE_PIPELINE = """\
version: 1
name: bench-validate
models:
  echo: {model: openai/echo, api_base: "%s", api_key: stub, timeout: 5s}
stages:
  answer:
    type: generate
    with: {models: [echo], messages: [{role: user, content: "{{ input.answer }}"}]}
  check:
    type: validate
    needs: [answer]
    with:
      max_length: 2000
      pii: redact
      harm: {action: flag, threshold: 0.7}
      grounded: {passages: "{{ input.passages }}", min_support: 0.6, action: flag}
"""


async def stage_latency(rows: list[dict[str, Any]]) -> list[float]:
    """The whole validate stage per answer (length, PII, harm, groundedness), as a pipeline
    runs it: the stub echoes each labelled answer back as the model's reply."""
    async with StubProvider(StubConfig(echo_prefix="")) as stub:
        pipeline = compile_pipeline(parse_spec(STAGE_PIPELINE % stub.base_url),
                                    Registry.from_entry_points())
        await pipeline.warm_up()
        durations = []
        for row in rows:
            result = await pipeline.run({"answer": row["answer"], "passages": row["passages"]})
            durations += [event.duration * 1000 for event in result.events
                          if event.stage == "check" and event.outcome == "ok"]
        await pipeline.resources.aclose()
    return durations


async def main(quick: bool, errors: bool) -> None:
    damaged, labelled = load("damaged_json.jsonl"), load("grounded.jsonl")
    check_labels(labelled)
    rows = repair_part(damaged)
    embedder = Embedder()
    await embedder.warm_up()
    cold = await grounding_latency(labelled, embedder)
    warm = await grounding_latency(labelled, embedder)
    scored, misaligned = await score_all(labelled, embedder)
    halves = ((await score_all(labelled[0::2], embedder))[0],
              (await score_all(labelled[1::2], embedder))[0])
    rows += grounded_rows(scored, misaligned, labelled, halves)
    await candidates_part(labelled, embedder)
    if errors:
        print_errors(scored)
    repaired, baseline = parse_latency(damaged, 3 if quick else 20)
    rows += latency_rows(cold, warm, repaired, baseline)
    stage = await stage_latency(labelled)
    rows.append(("latency: the validate stage p50 / p95 (pii, harm, grounded)",
                 f"{percentile(stage, 0.5):.1f} / {percentile(stage, 0.95):.1f} ms", "-",
                 None))
    print(f"\n(c) latency: grounding over {len(labelled)} answers (median "
          f"{statistics.median(len(r['passages']) for r in labelled)} passages each); "
          f"parse_json over {len(repaired)} calls")
    print_table(rows)


def check_labels(rows: list[dict[str, Any]]) -> None:
    """Report rows whose factual-sentence count disagrees with their labels (no model)."""
    for index, row in enumerate(rows, 1):
        claims = [s for s in split_sentences(row["answer"]) if not claim_free(s)]
        if len(claims) != len(row["labels"]):
            print(f"grounded.jsonl:{index}: {len(claims)} factual sentences, "
                  f"{len(row['labels'])} labels")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer parse_json rounds")
    parser.add_argument("--errors", action="store_true", help="list misjudged sentences")
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.errors))
