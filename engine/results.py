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
