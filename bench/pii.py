"""How fast and how complete is the PII pass? Prints figures, asserts nothing.

In one process, on the same texts (support-desk records from tests/data/pii/labelled.jsonl
joined into ~1 KB and ~10 KB documents), round by round interleaved:

- ours, patterns only: `PiiScanner([EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS])`;
- ours with NER: the same plus PERSON (`ner=True`, spaCy's en_core_web_sm);
- Presidio's default set-up, patterns only (the baseline): `AnalyzerEngine` over an NLP engine
  whose nlp is `spacy.blank("en")`, all predefined recognizers, the spaCy NER one removed;
- for information, that same engine asked only for our six entities.

Latency is per KB of text (p50/p95 over calls); the ratio is ours/Presidio at p50 (target
≤ 0.3). Recall per entity counts a planted value as found only with the exact span; Presidio is
scored the same way on its own entity names, at its default threshold (0).

Run: `.venv/bin/python bench/pii.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.guard.pii import ENTITIES, PiiScanner

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "pii"
STRUCTURED = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS"]
Spans = set[tuple[str, int, int]]


def load(name: str) -> list[dict[str, Any]]:
    with (DATA / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def documents(records: list[dict[str, Any]], size: int, count: int) -> list[str]:
    """`count` documents of about `size` characters, each a different run of records."""
    docs, i = [], 0
    for _ in range(count):
        parts: list[str] = []
        while sum(len(p) + 2 for p in parts) < size:
            parts.append(records[i % len(records)]["text"])
            i += 1
        docs.append("\n\n".join(parts)[:size])
    return docs


def presidio_default() -> Any:
    """The baseline the issue names, built the way OFFLINE.md says works offline."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "en_core_web_sm"}])
    nlp_engine.nlp = {"en": spacy.blank("en")}
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=nlp_engine)
    registry.remove_recognizer("SpacyRecognizer")
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def recall(find: Callable[[str], Spans], records: list[dict[str, Any]],
           entities: list[str]) -> dict[str, tuple[int, int]]:
    planted: Counter[str] = Counter()
    found: Counter[str] = Counter()
    for record in records:
        spans = find(record["text"])
        for e in record["entities"]:
            if e["entity"] in entities:
                planted[e["entity"]] += 1
                found[e["entity"]] += (e["entity"], e["start"], e["end"]) in spans
    return {entity: (found[entity], planted[entity]) for entity in entities}


def runners(ours: PiiScanner, ours_ner: PiiScanner | None,
            analyzer: Any) -> dict[str, Callable[[str], Any]]:
    """What `latency` times: ours (with NER unless None), Presidio default, Presidio on our 6."""
    presidio_entities = [ENTITIES[e] for e in STRUCTURED]
    named: dict[str, Callable[[str], Any]] = {"ours, patterns only": ours.find}
    if ours_ner is not None:
        named["ours + NER (PERSON)"] = ours_ner.find
    named["Presidio default, patterns only"] = lambda t: analyzer.analyze(t, language="en")
    named["Presidio, our 6 entities only"] = lambda t: analyzer.analyze(
        t, language="en", entities=presidio_entities)
    return named


def latency(runners: dict[str, Callable[[str], Any]], labelled: list[dict[str, Any]],
            rounds: int) -> dict[str, float]:
    """Per-KB latency of every runner on the same documents, rounds interleaved; returns the
    p50 ratio ours (patterns only) / Presidio default per document size."""
    sizes = {"1 KB": documents(labelled, 1024, 20), "10 KB": documents(labelled, 10240, 4)}
    for docs in sizes.values():  # warm-up: first calls load lazy state (tldextract, regexes)
        for run in runners.values():
            run(docs[0])
    per_kb: dict[tuple[str, str], list[float]] = {(r, s): [] for r in runners for s in sizes}
    for _ in range(rounds):
        for size, docs in sizes.items():
            for doc in docs:
                for name, run in runners.items():
                    start = time.perf_counter()
                    run(doc)
                    per_kb[name, size].append(
                        (time.perf_counter() - start) * 1000 / (len(doc.encode()) / 1024))

    def p50(name: str, size: str) -> float:
        return statistics.median(per_kb[name, size])

    print(f"\nlatency, ms per KB ({rounds} rounds, interleaved)")
    print(f"{'':34s}" + "".join(f"{s + ' p50':>11s}{s + ' p95':>11s}" for s in sizes))
    for name in runners:
        cells = "".join(f"{p50(name, s):11.2f}{percentile(per_kb[name, s], 0.95):11.2f}"
                        for s in sizes)
        print(f"{name:34s}{cells}")
    base, ours, ner = ("Presidio default, patterns only", "ours, patterns only",
                       "ours + NER (PERSON)")
    ratios = [p50(ours, s) / p50(base, s) for s in sizes]
    print("ratio ours (patterns only) / Presidio default, p50: "
          + ", ".join(f"{s} {r:.2f}x" for s, r in zip(sizes, ratios, strict=True))
          + f"  (target <= 0.3x: {'PASS' if max(ratios) <= 0.3 else 'FAIL'})")
    if ner in runners:
        print("cost of NER (PERSON) over patterns only, p50: "
              + ", ".join(f"{s} +{p50(ner, s) - p50(ours, s):.1f} ms/KB" for s in sizes))
    return dict(zip(sizes, ratios, strict=True))


def presidio_spans(analyzer: Any) -> Callable[[str], Spans]:
    """Presidio's findings as (our entity name, start, end)."""
    to_ours = {v: k for k, v in ENTITIES.items()}
    return lambda text: {(to_ours.get(r.entity_type, r.entity_type), r.start, r.end)
                         for r in analyzer.analyze(text, language="en")}


def our_spans(scanner: PiiScanner) -> Callable[[str], Spans]:
    return lambda text: {(f.entity, f.start, f.end) for f in scanner.find(text)}


def recall_table(ours: PiiScanner, ours_ner: PiiScanner, analyzer: Any,
                 labelled: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Print recall per entity for ours, ours + NER and Presidio default; return the table."""
    print("\nrecall per entity on tests/data/pii/labelled.jsonl (exact span; target >= 0.95)")
    table = {"ours, patterns only": recall(our_spans(ours), labelled, STRUCTURED),
             "ours + NER": recall(our_spans(ours_ner), labelled, [*STRUCTURED, "PERSON"]),
             "Presidio default": recall(presidio_spans(analyzer), labelled, STRUCTURED)}
    print(f"{'entity':12s}" + "".join(f"{k:>21s}" for k in table))
    for entity in [*STRUCTURED, "PERSON"]:
        cells = ""
        for result in table.values():
            hit, total = result.get(entity, (0, 0))
            cells += f"{f'{hit / total:.3f} ({hit}/{total})' if total else '-':>21s}"
        print(f"{entity:12s}{cells}")
    return table


def quiet_presidio_logs() -> None:
    # Presidio's EmailRecognizer asks tldextract for the public-suffix list online first;
    # offline that logs a failed fetch before falling back to the bundled copy. Ours doesn't.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (~20 s)")
    args = parser.parse_args()
    quiet_presidio_logs()
    labelled, lookalikes = load("labelled.jsonl"), load("lookalikes.jsonl")
    t0 = time.perf_counter()
    ours = PiiScanner(STRUCTURED)
    t1 = time.perf_counter()
    ours_ner = PiiScanner([*STRUCTURED, "PERSON"], ner=True)
    t2 = time.perf_counter()
    analyzer = presidio_default()
    t3 = time.perf_counter()
    print(f"build: ours {t1 - t0:.2f} s (incl. Presidio import), ours+NER {t2 - t1:.2f} s, "
          f"Presidio default {t3 - t2:.2f} s")

    latency(runners(ours, ours_ner, analyzer), labelled, rounds=3 if args.quick else 10)
    recall_table(ours, ours_ner, analyzer, labelled)
    presidio = presidio_spans(analyzer)

    fps = {"ours, patterns only": sum(len(ours.find(r["text"])) for r in lookalikes),
           "ours + NER": sum(len(ours_ner.find(r["text"])) for r in lookalikes),
           "Presidio default (our 6 entity types)": sum(
               e in STRUCTURED for r in lookalikes for e, _, _ in presidio(r["text"])),
           "Presidio default (all types, e.g. DATE_TIME, URL)": sum(
               len(analyzer.analyze(r["text"], language="en")) for r in lookalikes)}
    print(f"\nfindings on {len(lookalikes)} look-alike texts (no PII in them): "
          + ", ".join(f"{k} {v}" for k, v in fps.items()))


if __name__ == "__main__":
    main()
