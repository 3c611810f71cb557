"""`--trace`: one line per record telling its story, stage by stage."""

from __future__ import annotations

from engine.observe.summary import format_duration
from engine.results import RunResult, StageEvent

__all__ = ["timeline"]

_MARK = {"ok": "✓", "finished": "■", "skipped": "-", "error": "✗", "timeout": "⏱",
         "recovered": "↻", "cancelled": "⊘", "handoff": "↪"}


def timeline(result: RunResult) -> str:
    """`#3 id=T-17 · ok · 4.2 ms · guard ✓ 0.1 ms → triage ✓ 0.0 ms → human - (not selected)`"""
    head = f"#{result.index}"
    if result.id is not None:
        head += f" id={result.id}"
    parts = [head, result.status, format_duration(result.duration)]
    if result.finished_by:
        parts.append(f"finished by {result.finished_by}")
    steps = " → ".join(_step(event) for event in sorted(result.events, key=lambda e: e.start))
    line = " · ".join(parts)
    if steps:
        line += " · " + steps
    if result.error:
        line += f"\n    error: {result.error['message']}"
    return line


def _step(event: StageEvent) -> str:
    text = f"{event.stage} {_MARK[event.outcome]}"
    if event.outcome != "skipped":
        text += f" {format_duration(event.duration)}"
    if event.detail and event.outcome in ("skipped", "error", "timeout", "recovered"):
        text += f" ({event.detail})"
    return text
