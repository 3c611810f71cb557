"""`--trace`: each record's story in one line, then its stages one by one.

    #7 id=T-17 · ok · req 7f3a · cache miss · reply: smart timeout → cheap 340 tok in ·
        125 tok out · valid · 6.8 s · $0.000800                 (one line, wrapped here)
        guard ✓ 0.4 ms → lookup ✓ 12 ms → reply ✓ 6.7 s → check ✓ 80 ms
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from engine.observe.summary import format_duration
from engine.results import RunResult, StageEvent

__all__ = ["story", "timeline"]

_MARK = {"ok": "✓", "finished": "■", "skipped": "-", "error": "✗", "timeout": "⏱",
         "recovered": "↻", "cancelled": "⊘", "handoff": "↪"}


def timeline(result: RunResult) -> str:
    """The story line, the stages under it, and the error when there is one."""
    steps = " → ".join(_step(event) for event in _ordered(result))
    line = story(result) + (f"\n    {steps}" if steps else "")
    if result.error:
        line += f"\n    error: {result.error['message']}"
    return line


def story(result: RunResult) -> str:
    """What happened to the request, from its stages' notes: cache, guard, model calls (the
    tiers that failed and why, the one that answered and its tokens), validation, who ended
    it, how long it took and what it cost."""
    parts = [f"#{result.index}" + (f" id={result.id}" if result.id is not None else ""),
             result.status]
    if result.trace_id:
        parts.append(f"req {result.trace_id[:4]}")
    cost = 0.0
    for event in _ordered(result):
        notes = event.notes or {}
        parts += _facts(event.stage, notes)
        cost += sum(float(call.get("cost_usd") or 0) for call in notes.get("llm", ()))
    if result.finished_by:
        parts.append(f"finished by {result.finished_by}")
    parts += [format_duration(result.duration), f"${cost:.6f}"]
    return " · ".join(parts)


def _facts(stage: str, notes: Mapping[str, Any]) -> Iterator[str]:
    if "cache" in notes:
        hit = notes["cache"]
        yield "cache miss" if hit == "miss" else f"cache {hit} hit"
    if notes.get("blocked"):
        yield f"blocked: {notes['blocked']}"
    for call in notes.get("llm", ()):
        yield f"{stage}: {_call(call)}"
    if "parse" in notes:
        yield _validation(notes)


def _call(call: Mapping[str, Any]) -> str:
    """`smart timeout → cheap 340 tok in · 125 tok out` (a tier's last failure only)."""
    failed: dict[str, str] = {}
    for tier, outcome in call.get("attempts", ()):
        if outcome != "ok":
            failed[tier] = outcome
    hops = [f"{tier} {outcome}" for tier, outcome in failed.items() if tier != call["tier"]]
    if call.get("tier") is None:
        return " → ".join(hops) or "no tier answered"
    answer = (f"{call['tier']} {call.get('input_tokens', 0)} tok in · "
              f"{call.get('output_tokens', 0)} tok out")
    return " → ".join([*hops, answer])


def _validation(notes: Mapping[str, Any]) -> str:
    text = "valid" if notes.get("parse") == "ok" else f"valid ({notes.get('parse')})"
    if notes.get("reasks"):
        text += f" after {notes['reasks']} re-ask(s)"
    if notes.get("filters"):
        text += f", {'/'.join(notes['filters'])} fired"
    return text


def _ordered(result: RunResult) -> list[StageEvent]:
    return sorted(result.events, key=lambda e: e.start)


def _step(event: StageEvent) -> str:
    text = f"{event.stage} {_MARK[event.outcome]}"
    if event.outcome != "skipped":
        text += f" {format_duration(event.duration)}"
    if event.detail and event.outcome in ("skipped", "error", "timeout", "recovered"):
        text += f" ({event.detail})"
    return text
