"""`engine report --by variant`: an A/B test read from the run store — each pipeline's records
grouped by the variant they took, and every variant set against a baseline.

The variant of a record is
- its stored line's own `variant` when it has one (`engine compare` labels each side so; it
  wins because it names the whole version, not one route inside it), else
- the `variant` its weighted route stages noted (`route` with `key:` and `weight:`): one
  route gives its rule's name; several give `stage=name` pairs in the order they ran, joined
  by `, ` (`split=b, tone=formal`), so each combination is an arm of its own; else
- none: such records are shown as `-` and compared with nothing.

Per variant: records, error rate, golden pass rate (lines written by `engine test`:
`golden.passed`), positive feedback (among the records that got a score from
`POST /v1/feedback`, the share scored above 0; files in `<store>/feedback/`, joined by trace
id, a later score for the same answer replacing an earlier one), latency p50/p95 and cost per
request (as `engine report` defines them). The baseline is the first variant by name; every
other variant gets B - baseline with 95 % intervals (`engine.quality.stats`: Newcombe for the
rates, a bootstrap for latency and cost), called significant when the interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.observe.report import Share, record_usage
from engine.observe.store import StoredRun, parse_line
from engine.quality.stats import (
    MIN_RECORDS,
    Measure,
    Statistic,
    Unit,
    bootstrap_diff,
    newcombe_diff,
    statistic,
)

__all__ = ["NO_VARIANT", "Arm", "VariantReport", "read_feedback", "variant_of",
           "variant_reports"]

NO_VARIANT = "-"
"""The arm of records that took no variant."""


def variant_of(record: Mapping[str, Any]) -> str | None:
    """The variant a stored line took (see the module docstring), or None."""
    if isinstance(record.get("variant"), str):
        return str(record["variant"])
    events = sorted((e for e in record.get("trace") or () if isinstance(e, dict)),
                    key=lambda e: e.get("start_ms", 0))
    taken = [(str(e.get("stage")), str(e["notes"]["variant"])) for e in events
             if isinstance(e.get("notes"), dict) and "variant" in e["notes"]]
    if len(taken) > 1:
        return ", ".join(f"{stage}={name}" for stage, name in taken)
    return taken[0][1] if taken else None


Scores = dict[tuple[str, str | None], float]
"""(trace id, tenant) → the latest score that tenant gave the answer."""


def read_feedback(folder: Path) -> Scores:
    """The latest score per answer and tenant, from `engine serve`'s feedback files in
    `folder` (`engine.serve.feedback` describes the lines); other lines are skipped. Keyed
    by tenant too: a score sent with another tenant's key never counts for a run."""
    latest: dict[tuple[str, str | None], tuple[float, float]] = {}
    for file in sorted(folder.glob("*.jsonl")):
        for raw in file.read_bytes().splitlines():
            line = parse_line(raw)
            if line is None or line.get("kind") != "feedback":
                continue
            trace, score, when = line.get("trace_id"), line.get("score"), line.get("time")
            if not isinstance(trace, str) or not isinstance(score, int | float):
                continue
            key = (trace, line.get("tenant"))
            when = float(when) if isinstance(when, int | float) else 0.0
            if key not in latest or when >= latest[key][0]:
                latest[key] = (when, float(score))
    return {key: score for key, (_, score) in latest.items()}


@dataclass
class Arm:
    """One variant's records: per-record latency (s) and cost (USD), and its rates."""

    name: str
    durations: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    errors: int = 0
    golden: list[int] = field(default_factory=lambda: [0, 0])
    """[passed, cases]"""
    feedback: list[int] = field(default_factory=lambda: [0, 0])
    """[scored above 0, scored]"""

    @property
    def records(self) -> int:
        return len(self.durations)

    def add(self, record: Mapping[str, Any], score: float | None) -> None:
        self.durations.append(float(record.get("duration_ms") or 0.0) / 1000)
        self.costs.append(record_usage(record)[2])
        self.errors += record.get("status") == "error"
        golden = record.get("golden")
        if isinstance(golden, dict) and isinstance(golden.get("passed"), bool):
            self.golden[0] += golden["passed"]
            self.golden[1] += 1
        if score is not None:
            self.feedback[0] += score > 0
            self.feedback[1] += 1

    def shares(self) -> dict[str, Share]:
        return {"error rate": Share(self.errors, self.records),
                "golden pass rate": Share(*self.golden),
                "positive feedback": Share(*self.feedback)}

    def statistic(self, values: Literal["durations", "costs"], which: Statistic) -> float:
        return statistic(getattr(self, values), which)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.name, "records": self.records,
                **{name.replace(" ", "_"): share.to_json()
                   for name, share in self.shares().items()},
                "latency_s": {q: statistic(self.durations, q) for q in ("p50", "p95")},
                "cost_per_request_usd": statistic(self.costs, "mean")}


@dataclass
class VariantReport:
    """One pipeline's arms, each non-baseline arm's measures against the baseline, and
    warnings (too few records, nothing to compare)."""

    pipeline: str
    arms: list[Arm]
    baseline: str | None
    measures: dict[str, list[Measure]]
    warnings: list[str]

    def significant(self, variant: str) -> list[Measure]:
        return [m for m in self.measures.get(variant, []) if m.diff and m.diff.significant]

    def verdicts(self) -> list[str]:
        """One line per compared variant: what differs significantly from the baseline."""
        lines = []
        for variant, measures in self.measures.items():
            found = self.significant(variant)
            said = "; ".join(m.summary() for m in found)
            lines.append(f"{self.pipeline}: {variant} vs {self.baseline}: " + (
                f"significant at 95%: {said}" if found else
                f"no significant difference at 95% in {len(measures)} measures"))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "baseline": self.baseline,
                "variants": [arm.to_json() for arm in self.arms],
                "versus_baseline": {variant: [m.to_json() for m in measures]
                                    for variant, measures in self.measures.items()},
                "verdicts": self.verdicts(), "warnings": self.warnings}


def variant_reports(runs: Iterable[StoredRun], feedback: Scores | None = None,
                    pipeline: str | None = None, *, seed: int = 0) -> list[VariantReport]:
    """One report per pipeline (only `pipeline` if given) whose records took a variant."""
    arms: dict[str, dict[str, Arm]] = {}
    for run in runs:
        if pipeline is not None and run.pipeline != pipeline:
            continue
        by_name = arms.setdefault(run.pipeline, {})
        for record in run.records:
            name = variant_of(record) or NO_VARIANT
            trace = record.get("trace_id")
            score = (feedback or {}).get((trace, record.get("tenant"))) \
                if isinstance(trace, str) else None
            by_name.setdefault(name, Arm(name)).add(record, score)
    return [_report(name, found, seed) for name, found in sorted(arms.items())
            if set(found) - {NO_VARIANT}]


def _report(pipeline: str, found: Mapping[str, Arm], seed: int) -> VariantReport:
    ordered = sorted(found.values(), key=lambda arm: (arm.name == NO_VARIANT, arm.name))
    compared = [arm for arm in ordered if arm.name != NO_VARIANT]
    warnings = [f"{pipeline}: variant {arm.name} has {arm.records} records (fewer than "
                f"{MIN_RECORDS}): its intervals are wide; wait for more traffic"
                for arm in compared if arm.records < MIN_RECORDS]
    if len(compared) == 1:
        warnings.append(f"{pipeline}: only variant {compared[0].name} was taken: nothing to "
                        "compare it with")
    base = compared[0]
    return VariantReport(pipeline, ordered, base.name,
                         {arm.name: _versus(base, arm, seed) for arm in compared[1:]}, warnings)


def _versus(base: Arm, arm: Arm, seed: int) -> list[Measure]:
    """arm - base for every measure that has data on either side."""
    measures = [Measure(name, "share", a.rate, b.rate,
                        newcombe_diff(a.hits, a.of, b.hits, b.of))
                for (name, a), b in zip(base.shares().items(), arm.shares().values(),
                                        strict=True) if a.of or b.of]
    timed: tuple[tuple[str, Statistic, Unit, list[float], list[float]], ...] = (
        ("latency p50", "p50", "s", base.durations, arm.durations),
        ("latency p95", "p95", "s", base.durations, arm.durations),
        ("cost per request", "mean", "usd", base.costs, arm.costs))
    measures += [Measure(name, unit, statistic(a, which), statistic(b, which),
                         bootstrap_diff(a, b, which, seed=seed))
                 for name, which, unit, a, b in timed]
    return measures
