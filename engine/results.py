"""What a run produces: plain data, written to sinks as JSON lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Outcome", "RunResult", "StageEvent", "Status"]

Status = Literal["ok", "finished", "error"]
"""ok: the pipeline ran to its end; finished: a stage ended it early (cache hit, hand-off,
block); error: it failed, and `error` says where and why."""

Outcome = Literal[
    "ok", "finished", "handoff", "skipped", "error", "timeout", "recovered", "cancelled"
]


@dataclass(slots=True)
class StageEvent:
    """One stage's part of a record's run; times in seconds from the record's start."""

    stage: str
    start: float
    duration: float
    outcome: Outcome
    detail: str | None = None
    notes: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "start_ms": round(self.start * 1000, 3),
            "duration_ms": round(self.duration * 1000, 3),
            "outcome": self.outcome,
        }
        if self.detail is not None:
            out["detail"] = self.detail
        if self.notes:
            out["notes"] = self.notes
        return out


TIMEOUT_ERRORS = frozenset({"StageTimeout", "DeadlineExceeded"})
"""The error types of a run whose time ran out (the request deadline, a stage's timeout)."""


@dataclass(slots=True)
class RunResult:
    """Exactly one per input record, whatever happened to it."""

    index: int
    id: Any
    status: Status
    output: Any = None
    error: dict[str, Any] | None = None
    finished_by: str | None = None
    handed_off: bool = False
    duration: float = 0.0
    events: list[StageEvent] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    """Why the answer is a stand-in (e.g. a static response): delivered, never reused."""
    started_at: float = 0.0
    """Wall-clock time (epoch seconds) the record started: event times are offsets from it."""
    trace_id: str = ""
    """32 hex digits naming this record's run in logs and traces (W3C trace-context form)."""

    @property
    def ok(self) -> bool:
        return self.status != "error"

    def calls(self) -> list[dict[str, Any]]:
        """Every model call the run made, in stage order: the `llm` notes its stages left
        (re-asks and classify calls count too)."""
        return [call for event in self.events for call in (event.notes or {}).get("llm") or ()
                if isinstance(call, dict)]

    def usage(self) -> tuple[int, int, float]:
        """Tokens in, tokens out and cost (USD), summed over every model call."""
        calls = self.calls()
        return (sum(int(c.get("input_tokens") or 0) for c in calls),
                sum(int(c.get("output_tokens") or 0) for c in calls),
                sum(float(c.get("cost_usd") or 0.0) for c in calls))

    def timed_out(self) -> bool:
        """The run failed because time ran out: its deadline or a stage's timeout."""
        return (self.error or {}).get("type") in TIMEOUT_ERRORS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status}
        if self.status == "error":
            out["error"] = self.error
        else:
            out["output"] = self.output
        if self.finished_by is not None:
            out["finished_by"] = self.finished_by
            out["handed_off"] = self.handed_off
        if self.degraded:
            out["degraded"] = self.degraded
        out["duration_ms"] = round(self.duration * 1000, 3)
        if self.trace_id:
            out["started_at"] = round(self.started_at, 6)
            out["trace_id"] = self.trace_id
        out["trace"] = [event.to_json() for event in self.events]
        return out
