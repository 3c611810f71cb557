"""Reading JSON out of model replies: repaired when the damage is mechanical, refused when
the answer is ambiguous or cut off (a re-ask beats a guess)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.providers.structured import parse_json

OBJECT = {"category": "billing", "urgency": "low"}


@pytest.mark.parametrize(("text", "expected"), [
    ('{"category": "billing", "urgency": "low"}', OBJECT),
    ('\ufeff  {"category": "billing", "urgency": "low"}\n', OBJECT),
    ('```json\n{"category": "billing", "urgency": "low"}\n```', OBJECT),
    ('Based on passage [2], here it is:\n{"category": "billing", "urgency": "low"}', OBJECT),
    ("{'category': 'billing', 'urgency': 'low',}", OBJECT),
    ('{category: "billing", urgency: "low"} // done', OBJECT),
    ('{"category": "billing", "urgency": "low"}\n{"category": "billing", "urgency": "low"}',
     OBJECT),
    ('"{\\"category\\": \\"billing\\", \\"urgency\\": \\"low\\"}"', OBJECT),
    ('{"category": "billing", "urgency": "low"', OBJECT),  # cut after a whole member
    ('[{"id": 1}, {"id": 2}, {"id": 3', [{"id": 1}, {"id": 2}, {"id": 3}]),
    ('Sure: [1, 2, 3]', [1, 2, 3]),
])
def test_mechanical_damage_is_repaired(text: str, expected: Any) -> None:
    assert parse_json(text) == expected


@pytest.mark.parametrize("text", [
    "",
    "I think this ticket is about billing.",
    '{"category": "billing"}\n{"category": "technical"}',  # which one?
    '{"category": "billing", "urgency": "hi',              # cut inside a string
    '{"category": "billing", "urgency":',                  # cut after a key
    "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
    "<html><script>var cfg = {\"retry\": true};</script></html>",
    "{ ... }",
])
def test_no_answer_or_an_ambiguous_one_is_none(text: str) -> None:
    assert parse_json(text) is None
