"""The near-miss guards, and the semantic cache's evaluation with the real embedding model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.cache.canonical import canonical
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
    # who does what, which way, which edition
    ("Move $300 from checking to savings", "Move $300 from savings to checking", "direction"),
    ("I want to port my number to you", "I want to port my number away from you", "direction"),
    ("I hit another car, what now?", "Another car hit me, what now?", "who does what"),
    ("How much is Premium per month?", "How much is Premium Family per month?", "tier"),
    ("Does economy include a meal?", "Does basic economy include a meal?", "tier"),
    ("Are incoming calls free?", "Are outgoing calls free?", "concepts"),
    ("Can I open a joint account online?", "Can I close a joint account online?", "concepts"),
    ("Can I check in online?", "Can I check out online?", "concepts"),
    ("I was charged last night", "I was charged this morning", "concepts"),
    ("Show my history from last year", "Show my history from last week", "concepts"),
    ("Is the setup fee refundable?", "Is the setup fee non-refundable?", "negation"),
    ("My card is working", "My card is not working", "concepts"),
    ("Does it cover a second vehicle?", "Does it cover a third vehicle?", "numbers"),
    ("Can I get 5GB more data?", "Can I get 5TB more data?", "entities"),
    # what the canonical form must not blur
    ("Hide my profile", "Show my profile", "concepts"),
    ("$50 refund is missing", "€50 refund is missing", "concepts"),
    ("unlist my item", "list my item", "negation"),
    ("I have 2 accounts, how do I merge them", "I have accounts, how do I merge them",
     "numbers"),
    ("What time is checkin?", "What time is checkout?", "concepts"),
    ("Go back to the last page", "Go back to the previous page", "time"),
    ("I have no 2fa on my account", "I have 2fa on my account", "negation"),
    ("Can anyone see my order history?", "Can I see my order history?", "who is asked"),
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
    ("What's the status of claim CLM-20931?", "status of claim clm 20931?"),
    ("Can I change my delivery time to 10:30 AM?", "can i change my delivery time to 10.30am"),
    ("My plan is 100 Mbps but I only get 20", "my plan is 100Mbps but I only get 20"),
    ("How do I transfer money to another account?", "how 2 transfer money to another account"),
    ("My wifi isn't working", "wifi not working"),
    ("Give me a refund for order 5531", "could I get a refund for order 5531?"),
    ("How do I pause my subscription?", "Hi! Would you mind telling me how to pause my sub?"),
    ("How do I enable 2FA?", "How do I enable two-factor?"),
    ("Show my past orders", "Show my previous orders"),
    ("What is the proper setup?", "What is the setup?"),  # "proper" is no tier "pro"
    ("Discounts for businesses?", "Discounts for business?"),  # a tier's plural is the tier
    ("Plans for families", "Plans for family"),
    ("Show last week's orders", "Show previous week's orders"),
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


def test_features_are_parsed_once_per_text() -> None:
    """The cached side is compared again and again: its features are extracted once."""
    features.cache_clear()
    pairs = [(q, c) for q, c, _ in REFUSED] + SERVED
    for _ in range(3):
        for query, cached in pairs:
            near_miss(query, cached)
    texts = {canonical(text) for pair in pairs for text in pair}
    assert features.cache_info().misses == len(texts)


# -- evaluation with the real model --------------------------------------------------------------
@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    yield Embedder()


@pytest.fixture(scope="module")
def pairs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines() if line.strip()]


def test_the_evaluation_set_is_well_formed(pairs: list[dict[str, Any]]) -> None:
    assert len(pairs) >= 1000
    seen = {frozenset((p["a"].lower(), p["b"].lower())) for p in pairs}
    assert len(seen) == len(pairs)
    assert {p["label"] for p in pairs} == {"hit", "miss"}
    assert {p["split"] for p in pairs} == {"dev", "holdout", "holdout2", "holdout3",
                                           "holdout4"}
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
    """Measured (bench/cache_eval.py) at 0.80 with guards, as the stage compares (canonical
    forms): dev 80.3 % hits / 0.0 % false hits, holdout 72.5 / 0.0, holdout2 50.0 / 2.1,
    holdout3 57.3 / 7.3 (12.7 % false on its first look), holdout4 51.3 / 9.3 (its first
    look). The issue's target (≤ 1 % false hits with ≥ 60 % hits) holds on the splits the
    rules were developed on, not on pairs written independently; the bounds below pin the
    measured figures so a regression fails."""
    first = await embedder.embed([canonical(p["a"]) for p in pairs])
    second = await embedder.embed([canonical(p["b"]) for p in pairs])
    rows = [dict(p, sim=s, reason=near_miss(p["b"], p["a"]))
            for p, s in zip(pairs, (first * second).sum(axis=1).tolist(), strict=True)]
    bounds = {"dev": (0.78, 0.0), "holdout": (0.70, 0.0), "holdout2": (0.48, 0.025),
              "holdout3": (0.55, 0.08), "holdout4": (0.49, 0.10)}
    for split, (least_hits, most_false) in bounds.items():
        hit, false = rates([r for r in rows if r["split"] == split], guards=True)
        assert hit >= least_hits and false <= most_false, (split, hit, false)
    raw_false = rates(rows, guards=False)[1]
    all_hit, all_false = rates(rows, guards=True)
    assert raw_false >= 0.5 and all_false <= raw_false / 10  # the guards do the work
    assert all_hit >= 0.58
