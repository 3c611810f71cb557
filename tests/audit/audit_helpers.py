"""Helpers shared by the audit log tests: a clock the test moves, an entry factory, paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.audit import AuditEntry

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += days * DAY


def entry(user: str | None = "u-1", **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "user": user, "tenant": "acme", "pipeline": "support-triage", "version": "v1",
        "outcome": "ok", "tiers": ["cheap"], "tokens": {"input": 10, "output": 5},
        "cost_usd": 0.0001, "guard_findings": ["pii:email"], "request_id": "r",
        "input_text": f"ticket from {user}", "output_text": "an answer"}
    return AuditEntry(**{**values, **fields})


def segment(root: Path, writer: str = "main", number: int = 1) -> Path:
    return root / "audit" / writer / f"{number:08d}.jsonl"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
