"""The near-miss guards, and the semantic cache's evaluation with the real embedding model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.cache.near_miss import features, near_miss
from engine.resources.embeddings import Embedder

PAIRS = Path(__file__).resolve().parent.parent / "data" / "cache" / "pairs.jsonl"
THRESHOLD = 0.80  # the recommended default with the guards on (bench/cache_eval.py)

REFUSED = [
    # negation polarity
    ("Cancel my order", "Don't cancel my order", "negation"),
    ("The package was delivered", "The package was not delivered", "negation"),
    ("I can log in", "I cannot log in", "negation"),
    ("Send me updates by SMS", "Stop sending me updates by SMS", "negation"),
    ("Ship it with a signature", "Ship it without a signature", "negation"),
    ("The item is in stock", "The item is out of stock", "negation"),
    ("Subscribe me to the newsletter", "Unsubscribe me from the newsletter", "negation"),
    ("Turn on two-factor authentication", "Turn off two-factor authentication", "negation"),
    # numbers, ids, amounts, order of numbers
    ("Cancel order 48213", "Cancel order 48231", "numbers"),
    ("Refund $50 to my card", "Refund $500 to my card", "numbers"),
    ("Refund invoice INV-2041", "Refund invoice INV-2014", "numbers"),
    ("Two tickets please", "Three tickets please", "numbers"),
    ("My order 2231 is missing an item", "My order is missing an item", "numbers"),
    ("I paid $120 but the price was $100", "I paid $100 but the price was $120", "order"),
    # slots: distinct objects and actions
    ("How do I reset my password?", "How do I reset my username?", "concepts"),
    ("How do I update my billing address?", "How do I update my shipping address?", "concepts"),
    ("Where is my refund?", "Where is my order?", "concepts"),
    ("How do I cancel my subscription?", "How do I upgrade my subscription?", "concepts"),
    ("I want to keep my subscription", "I want to cancel my subscription", "concepts"),
    ("I was charged twice", "I was refunded twice", "concepts"),
    ("Deliver it tomorrow morning", "Deliver it tomorrow evening", "concepts"),
    ("Is the blue hoodie available?", "Is the red hoodie available?", "concepts"),
    # named entities
    ("Do you ship to Canada?", "Do you ship to Mexico?", "entities"),
    ("Can I pay with PayPal?", "Can I pay with Klarna?", "entities"),
    ("Can I ship with FedEx?", "Can I ship with UPS?", "entities"),
    ("Can I reschedule to Monday?", "Can I reschedule to Tuesday?", "entities"),
]

SERVED = [
    ("How do I reset my password?", "Could you please help me reset my password?"),
    ("I was charged $19.99 twice", "I got charged 19.99 USD two times"),
    ("Where is order #12345?", "Where is order number 12345?"),
    ("My order 55012 hasn't shipped", "Order no. 55012 has not shipped yet"),
    ("Can I return an item after 30 days?", "Can I return something after thirty days?"),
    ("Refund 1,200 dollars to my account", "Refund $1200 to my account"),
    ("Can I add twenty five licenses?", "Can I add 25 licenses?"),
    ("I can't log in", "I cant log in"),
    ("I don't want newsletters anymore", "I no longer want newsletters"),
    ("How do I unsubscribe from marketing emails?", "How can I stop getting promotional emails?"),
    ("I can't find the cancel button", "I'm unable to find the cancel button"),
    ("How do I change my shipping address?",
     "How can I update the delivery address on my account?"),
    ("Can I get a refund for my order?", "Is it possible to get my money back for my order?"),
    ("How do I reset my pasword?", "How do I reset my password?"),
    ("Do you ship to Canda?", "Do you ship to Canada?"),
    ("stop my subscription", "Please help me stop my subscription"),
    ("To Germany, do you ship?", "Do you ship to Germany?"),
]


@pytest.mark.parametrize(("query", "cached", "reason"), REFUSED)
def test_near_misses_are_refused(query: str, cached: str, reason: str) -> None:
    verdict = near_miss(query, cached)
    assert verdict is not None and verdict.startswith(reason), verdict
    assert near_miss(cached, query) is not None  # symmetric


@pytest.mark.parametrize(("query", "cached"), SERVED)
def test_paraphrases_pass(query: str, cached: str) -> None:
    assert near_miss(query, cached) is None
    assert near_miss(cached, query) is None


def test_features_are_cached_and_fast() -> None:
    features.cache_clear()
    pairs = [(q, c) for q, c, _ in REFUSED] + SERVED
    start = time.perf_counter()
    for _ in range(20):
        for query, cached in pairs:
            near_miss(query, cached)
    per_call = (time.perf_counter() - start) / (20 * len(pairs))
    assert per_call < 50e-6  # warm: the cached side's features are never parsed twice
    assert features.cache_info().hits > 0


# -- evaluation with the real model --------------------------------------------------------------
@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    yield Embedder()


@pytest.fixture(scope="module")
def pairs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines() if line.strip()]


def test_the_evaluation_set_is_well_formed(pairs: list[dict[str, Any]]) -> None:
    assert len(pairs) >= 300
    seen = {frozenset((p["a"].lower(), p["b"].lower())) for p in pairs}
    assert len(seen) == len(pairs)
    assert {p["label"] for p in pairs} == {"hit", "miss"}
    assert {p["split"] for p in pairs} == {"dev", "holdout"}
    kinds = {p["kind"] for p in pairs if p["label"] == "miss"}
    assert {"negation", "number", "amount", "object", "action", "product", "date"} <= kinds


def rates(rows: list[dict[str, Any]], guards: bool) -> tuple[float, float]:
    def served(row: dict[str, Any]) -> bool:
        return bool(row["sim"] >= THRESHOLD and not (guards and row["reason"]))
    return (float(np.mean([served(r) for r in rows if r["label"] == "hit"])),
            float(np.mean([served(r) for r in rows if r["label"] == "miss"])))


async def test_evaluation_with_the_real_embedder(
    embedder: Embedder, pairs: list[dict[str, Any]]
) -> None:
    """Measured (bench/cache_eval.py): at 0.80 with guards, dev 72.5 % hits / 0.0 % false
    hits; holdout (written after the guards, never tuned) 52.5 % / 6.8 % — the issue's target
    holds on the development split only; the holdout bounds below pin the measured figures so
    a regression fails."""
    first = await embedder.embed([p["a"] for p in pairs])
    second = await embedder.embed([p["b"] for p in pairs])
    rows = [dict(p, sim=s, reason=near_miss(p["b"], p["a"]))
            for p, s in zip(pairs, (first * second).sum(axis=1).tolist(), strict=True)]
    dev = [r for r in rows if r["split"] == "dev"]
    holdout = [r for r in rows if r["split"] == "holdout"]
    dev_hit, dev_false = rates(dev, guards=True)
    assert dev_hit >= 0.60 and dev_false <= 0.01
    raw_false = rates(rows, guards=False)[1]
    all_hit, all_false = rates(rows, guards=True)
    assert raw_false >= 0.5 and all_false <= raw_false / 10  # the guards do the work
    assert all_hit >= 0.60
    hold_hit, hold_false = rates(holdout, guards=True)
    assert hold_hit >= 0.50 and hold_false <= 0.07
