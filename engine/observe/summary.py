"""The end-of-run summary: counts by status, latency percentiles, time per stage."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.results import RunResult

if TYPE_CHECKING:  # rich is imported when tables are drawn: serve workers import this module
    from rich.table import Table  # (through quality.stats) and never draw one

__all__ = ["Summary", "format_duration", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (q in 0..100) of sorted `values`; 0.0 when empty.

    Rank ⌈q/100·n⌉ (1-based), as `numpy.percentile(..., method="inverted_cdf")`; the rounding
    guards against 0.95·20 = 19.000000000000004. The run summary and `engine report` share it,
    so they agree on the same records."""
    if not values:
        return 0.0
    rank = math.ceil(round(q / 100 * len(values), 9))
    return values[min(len(values), max(rank, 1)) - 1]


@dataclass
class Summary:
    """Accumulates results as they arrive; cheap enough to update per record."""

    statuses: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    stage_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stage_outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    interrupted: bool = False

    def add(self, result: RunResult) -> None:
        self.statuses[result.status] += 1
        self.durations.append(result.duration)
        for event in result.events:
            self.stage_outcomes[event.stage][event.outcome] += 1
            if event.outcome != "skipped":
                self.stage_times[event.stage].append(event.duration)

    @property
    def records(self) -> int:
        return sum(self.statuses.values())

    @property
    def errored(self) -> int:
        return self.statuses["error"]

    def tables(self) -> list[Table]:
        return [self._records_table(), self._stages_table()]

    def _records_table(self) -> Table:
        from rich.table import Table

        table = Table(title="records" + (" (interrupted)" if self.interrupted else ""))
        for column in ("records", "ok", "finished early", "errored", "p50", "p95", "p99"):
            table.add_column(column, justify="right")
        ordered = sorted(self.durations)
        table.add_row(
            str(self.records), str(self.statuses["ok"]), str(self.statuses["finished"]),
            str(self.errored), *(format_duration(percentile(ordered, q)) for q in (50, 95, 99)),
        )
        return table

    def _stages_table(self) -> Table:
        from rich.table import Table

        table = Table(title="stages")
        table.add_column("stage")
        for column in ("ran", "skipped", "errors", "p50", "p95", "total"):
            table.add_column(column, justify="right")
        for stage, outcomes in self.stage_outcomes.items():
            times = sorted(self.stage_times.get(stage, []))
            failed = outcomes["error"] + outcomes["timeout"] + outcomes["recovered"]
            table.add_row(
                stage, str(len(times)), str(outcomes["skipped"]), str(failed),
                *(format_duration(percentile(times, q)) for q in (50, 95)),
                format_duration(sum(times)),
            )
        return table


def format_duration(seconds: float) -> str:
    """Human units at every scale: `45 µs`, `3.2 ms`, `1.25 s`."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"
