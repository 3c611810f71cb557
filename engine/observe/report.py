"""`engine report`'s numbers: pure functions from stored record lines to a `Report` per pipeline.

Every measure, defined once (the CLI, the JSON and the HTML all read these):

- **latency** p50/p95/p99: the record's `duration_ms`, every record counted (errors too, since
  a user waited for them). Percentiles are *nearest rank*: the smallest value with at least
  q % of the values at or below it (`numpy.percentile(..., method="inverted_cdf")`), so a
  reported p95 is a latency some request really had.
- **ttft** p50/p95: `ttft_ms` of every model call that streamed one (per call, not per record).
- **tokens in/out, cost per request**: sums over every model call (`notes.llm`, any stage:
  classify and validate re-asks count) divided by *all* records — a cache hit is a request
  that cost nothing, which is the point of the cache.
- **cost by model**: calls, tokens and USD summed per answering model.
- **cache hit rate**: among records that passed a cache stage (a `cache` note), the share
  answered from it; exact and semantic separately, and together for the SLO.
- **fallback rate**: among records that made a model call, the share with at least one
  fallback hop — a call answered by a tier other than the first one it tried (the static
  response counts as a tier: `static`). Hops are counted as `from → to (reason)`, the reason
  being the last outcome on the tier left.
- **timeout rate**: among all records, the share where something timed out: a model attempt
  (`timeout`), a stage (outcome `timeout`), or the request (error `StageTimeout` or
  `DeadlineExceeded`) — even if a retry or a fallback then saved the answer.
- **error rate**: records with status `error`, over all records.
- **parse success**: among records that reached a validate stage (it ran, whatever its end),
  the share whose answer passed validate's parse and schema checks (`parse` noted ok or
  repaired, or blocked by a filter afterwards). Stage types come from the run header; older
  headers without them only show validate stages that succeeded.
- **tier usage**: who answered each record: `cache`, the tier of its last answered model
  call, `static`, `handoff`, `error`, or `no model`.

SLO targets (`slo:` in the pipeline, from the newest run header of each pipeline): latencies
and rates `error_rate`, `timeout_rate`, `fallback_rate`, `cost_per_request` are upper bounds;
`cache_hit_rate` and `parse_success` lower bounds. A measure with no data (no record passed a
cache stage, say) is reported as such and is not a breach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.observe.store import StoredRun
from engine.observe.summary import format_duration
from engine.observe.summary import percentile as nearest_rank
from engine.results import TIMEOUT_ERRORS

__all__ = [
    "BOUNDS",
    "Check",
    "ModelUsage",
    "Report",
    "Share",
    "answered_by",
    "build_reports",
    "check_slo",
    "fallback_hops",
    "format_measure",
    "nearest_rank",
    "record_usage",
    "report_of",
    "timed_out",
]

Direction = Literal["at most", "at least"]
BOUNDS: dict[str, Direction] = {
    "latency_p50": "at most", "latency_p95": "at most", "latency_p99": "at most",
    "error_rate": "at most", "timeout_rate": "at most", "fallback_rate": "at most",
    "cost_per_request": "at most", "cache_hit_rate": "at least", "parse_success": "at least",
}
"""The measures an `slo:` block can target, with the side of the target that is good."""

_DID_NOT_RUN = frozenset({"skipped", "cancelled"})


@dataclass(frozen=True)
class Share:
    """`hits` of `of` records; `rate` is None when nothing could be measured."""

    hits: int = 0
    of: int = 0

    @property
    def rate(self) -> float | None:
        return self.hits / self.of if self.of else None

    def to_json(self) -> dict[str, Any]:
        return {"hits": self.hits, "of": self.of, "rate": self.rate}


@dataclass
class ModelUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Check:
    """One SLO target against its measure; `value` None: no data, so not breached."""

    measure: str
    value: float | None
    target: float
    direction: Direction

    @property
    def breached(self) -> bool:
        if self.value is None:
            return False
        return self.value > self.target if self.direction == "at most" else (
            self.value < self.target)

    def to_json(self) -> dict[str, Any]:
        return {"measure": self.measure, "value": self.value, "target": self.target,
                "direction": self.direction, "breached": self.breached}


@dataclass
class Report:
    """One pipeline's measures over the stored runs read (latencies in seconds, costs USD)."""

    pipeline: str
    runs: int
    records: int
    statuses: dict[str, int]
    latency: dict[str, float]
    ttft: dict[str, float] | None
    input_tokens: float
    output_tokens: float
    cost_per_request: float
    cost_total: float
    models: dict[str, ModelUsage]
    errors: Share
    timeouts: Share
    fallbacks: Share
    hops: dict[str, int]
    cache_exact: Share
    cache_semantic: Share
    cache_hits: Share
    parse: Share
    repaired: Share
    tiers: dict[str, int]
    slo: dict[str, float] | None
    checks: list[Check]
    skipped_lines: int = 0
    first: float | None = None
    last: float | None = None
    durations: list[float] = field(default_factory=list, repr=False)
    """Every record's latency (s), for the histogram; not in `to_json`."""
    answered: list[tuple[float, str]] = field(default_factory=list, repr=False)
    """(start epoch, who answered) per record, for tier usage over time; not in `to_json`."""

    @property
    def breaches(self) -> list[Check]:
        return [check for check in self.checks if check.breached]

    def measures(self) -> dict[str, float | None]:
        """The SLO-checkable values by name (the keys of BOUNDS)."""
        return {
            "latency_p50": self.latency["p50"], "latency_p95": self.latency["p95"],
            "latency_p99": self.latency["p99"], "error_rate": self.errors.rate,
            "timeout_rate": self.timeouts.rate, "fallback_rate": self.fallbacks.rate,
            "cost_per_request": self.cost_per_request, "cache_hit_rate": self.cache_hits.rate,
            "parse_success": self.parse.rate,
        }

    def to_json(self) -> dict[str, Any]:
        shares = ("errors", "timeouts", "fallbacks", "cache_exact", "cache_semantic",
                  "cache_hits", "parse", "repaired")
        out: dict[str, Any] = {
            "pipeline": self.pipeline, "runs": self.runs, "records": self.records,
            "statuses": self.statuses, "latency_s": self.latency, "ttft_s": self.ttft,
            "input_tokens_per_request": self.input_tokens,
            "output_tokens_per_request": self.output_tokens,
            "cost_per_request_usd": self.cost_per_request, "cost_total_usd": self.cost_total,
            "models": {name: vars(usage) for name, usage in self.models.items()},
            "hops": self.hops, "tiers": self.tiers, "slo": self.slo,
            "checks": [check.to_json() for check in self.checks],
            "breached": bool(self.breaches), "skipped_lines": self.skipped_lines,
            "first_started": self.first, "last_started": self.last}
        out.update({name: getattr(self, name).to_json() for name in shares})
        return out


# -- one record's facts -----------------------------------------------------------------------
def _events(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    trace = record.get("trace") or []
    return sorted((e for e in trace if isinstance(e, dict)), key=lambda e: e.get("start_ms", 0))


def _notes(event: Mapping[str, Any]) -> dict[str, Any]:
    notes = event.get("notes")
    return notes if isinstance(notes, dict) else {}


def _calls(record: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every model call in start order, with the notes of the stage that made it."""
    return [(notes, call) for notes in map(_notes, _events(record))
            for call in notes.get("llm") or () if isinstance(call, dict)]


def _attempts(call: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A call's attempts as (tier, outcome), in the order made."""
    return [(str(a[0]), str(a[1])) for a in call.get("attempts") or ()
            if isinstance(a, list | tuple) and len(a) == 2]


def _answering(notes: Mapping[str, Any], call: Mapping[str, Any]) -> str | None:
    """The tier that answered a call; `static` when the stage's static response stood in."""
    if call.get("tier"):
        return str(call["tier"])
    return "static" if notes.get("tier") == "static" else None


def fallback_hops(notes: Mapping[str, Any], call: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """A call's fallback hops as (from, to, reason): one per tier left before the answering
    one; none when the first tier answered or no tier did (that is an error, not a fallback)."""
    answered = _answering(notes, call)
    attempts = _attempts(call)
    if answered is None or not attempts or attempts[0][0] == answered:
        return []
    last: dict[str, str] = {}
    for tier, outcome in attempts:
        last[tier] = outcome  # insertion order: the tiers in the order tried
    chain = [tier for tier in last if tier != answered] + [answered]
    return [(tier, chain[i + 1], last[tier]) for i, tier in enumerate(chain[:-1])]


def _usage(call: Mapping[str, Any]) -> tuple[int, int, float]:
    return (int(call.get("input_tokens") or 0), int(call.get("output_tokens") or 0),
            float(call.get("cost_usd") or 0.0))


def record_usage(record: Mapping[str, Any]) -> tuple[int, int, float]:
    """A record's tokens in, tokens out and cost (USD), summed over all its model calls."""
    usages = [_usage(call) for _, call in _calls(record)]
    return (sum(u[0] for u in usages), sum(u[1] for u in usages), sum(u[2] for u in usages))


def timed_out(record: Mapping[str, Any]) -> bool:
    """A model attempt, a stage or the request ran out of time (see the module docstring)."""
    error = record.get("error")
    if isinstance(error, dict) and error.get("type") in TIMEOUT_ERRORS:
        return True
    if any(event.get("outcome") == "timeout" for event in _events(record)):
        return True
    return any(outcome == "timeout" for _, call in _calls(record)
               for _, outcome in _attempts(call))


def _cache_result(record: Mapping[str, Any]) -> str | None:
    """exact, semantic or miss from the record's cache stages (a hit wins); None: no cache."""
    seen = [str(_notes(e)["cache"]) for e in _events(record) if "cache" in _notes(e)]
    hits = [kind for kind in seen if kind != "miss"]
    return hits[0] if hits else "miss" if seen else None


def _parse_result(record: Mapping[str, Any], stages: Mapping[str, str] | None) -> str | None:
    """ok, repaired or failed across the record's validate stages; None when none ran."""
    ran = [e for e in _events(record) if e.get("outcome") not in _DID_NOT_RUN
           and (stages.get(str(e.get("stage"))) == "validate" if stages is not None
                else "parse" in _notes(e))]
    if not ran:
        return None
    results = [_notes(e).get("parse") or ("ok" if "blocked" in _notes(e) else "failed")
               for e in ran]
    if "failed" in results:
        return "failed"
    return "repaired" if "repaired" in results else "ok"


def answered_by(record: Mapping[str, Any]) -> str:
    """Who answered: error, cache, handoff, a tier (the last answered call's), static, or
    `no model` (templates and routes only)."""
    if record.get("status") == "error":
        return "error"
    if _cache_result(record) in ("exact", "semantic"):
        return "cache"
    if record.get("handed_off"):
        return "handoff"
    tiers = [tier for notes, call in _calls(record) if (tier := _answering(notes, call))]
    return tiers[-1] if tiers else "no model"


# -- many records ----------------------------------------------------------------------------
@dataclass
class _Tally:
    """Running counts for one pipeline; `add` one record at a time."""

    records: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=lambda: [0, 0])
    cost: float = 0.0
    models: dict[str, ModelUsage] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    hops: Counter[str] = field(default_factory=Counter)
    answered: list[tuple[float, str]] = field(default_factory=list)
    skipped_lines: int = 0

    def add(self, record: Mapping[str, Any], stages: Mapping[str, str] | None,
            fallback_start: float) -> None:
        self.records += 1
        self.statuses[str(record.get("status"))] += 1
        self.durations.append(float(record.get("duration_ms") or 0.0) / 1000)
        self.counts["timeouts"] += timed_out(record)
        self._calls(record)
        for name, value in (("cache", _cache_result(record)),
                            ("parse", _parse_result(record, stages))):
            if value is not None:
                self.counts[f"{name}:passed"] += 1
                self.counts[f"{name}:{value}"] += 1
        started = record.get("started_at")
        when = float(started) if isinstance(started, int | float) else fallback_start
        self.answered.append((when, answered_by(record)))

    def _calls(self, record: Mapping[str, Any]) -> None:
        calls = _calls(record)
        self.counts["called"] += bool(calls)
        hops = [hop for notes, call in calls for hop in fallback_hops(notes, call)]
        self.counts["fallbacks"] += bool(hops)
        self.hops.update(f"{a} → {b} ({why})" for a, b, why in hops)
        for _, call in calls:
            self._call(call)

    def _call(self, call: Mapping[str, Any]) -> None:
        tokens_in, tokens_out, cost = _usage(call)
        self.tokens[0] += tokens_in
        self.tokens[1] += tokens_out
        self.cost += cost
        if isinstance(call.get("ttft_ms"), int | float):
            self.ttfts.append(call["ttft_ms"] / 1000)
        if call.get("model"):
            usage = self.models.setdefault(str(call["model"]), ModelUsage())
            usage.calls += 1
            usage.input_tokens += tokens_in
            usage.output_tokens += tokens_out
            usage.cost_usd += cost


def report_of(pipeline: str, records: Iterable[Mapping[str, Any]],
              slo: Mapping[str, float] | None = None, stages: Mapping[str, str] | None = None,
              *, runs: int = 1) -> Report:
    """A report over record lines (`stored_record` or `RunResult.to_json()` form)."""
    tally = _Tally()
    for record in records:
        tally.add(record, stages, 0.0)
    return _finish(pipeline, tally, slo, runs)


def build_reports(runs: Iterable[StoredRun], pipeline: str | None = None) -> list[Report]:
    """One report per pipeline found in `runs` (only `pipeline` if given), sorted by name;
    each is judged by the SLO in the newest header of its pipeline."""
    tallies: dict[str, _Tally] = {}
    newest: dict[str, StoredRun] = {}
    counts: Counter[str] = Counter()
    for run in runs:
        name = run.pipeline
        if pipeline is not None and name != pipeline:
            continue
        tally = tallies.setdefault(name, _Tally())
        stages = run.header.get("stages")
        for record in run.records:
            tally.add(record, stages if isinstance(stages, dict) else None, run.started)
        tally.skipped_lines += run.skipped
        counts[name] += 1
        if name not in newest or run.started >= newest[name].started:
            newest[name] = run
    return [_finish(name, tallies[name], _slo_of(newest[name]), counts[name])
            for name in sorted(tallies)]


def _slo_of(run: StoredRun) -> dict[str, float] | None:
    slo = run.header.get("slo")
    if not isinstance(slo, dict):
        return None
    return {k: float(v) for k, v in slo.items() if k in BOUNDS and isinstance(v, int | float)}


def _finish(pipeline: str, tally: _Tally, slo: Mapping[str, float] | None, runs: int
            ) -> Report:
    n, counts = tally.records, tally.counts
    ordered, ttfts = sorted(tally.durations), sorted(tally.ttfts)
    cache_passed = counts["cache:passed"]
    parse_passed = counts["parse:passed"]
    report = Report(
        pipeline=pipeline, runs=runs, records=n, statuses=dict(tally.statuses),
        latency={f"p{q}": nearest_rank(ordered, q) for q in (50, 95, 99)},
        ttft={f"p{q}": nearest_rank(ttfts, q) for q in (50, 95)} if ttfts else None,
        input_tokens=tally.tokens[0] / n if n else 0.0,
        output_tokens=tally.tokens[1] / n if n else 0.0,
        cost_per_request=tally.cost / n if n else 0.0, cost_total=tally.cost,
        models=dict(sorted(tally.models.items(), key=lambda item: -item[1].cost_usd)),
        errors=Share(tally.statuses["error"], n), timeouts=Share(counts["timeouts"], n),
        fallbacks=Share(counts["fallbacks"], counts["called"]), hops=dict(tally.hops),
        cache_exact=Share(counts["cache:exact"], cache_passed),
        cache_semantic=Share(counts["cache:semantic"], cache_passed),
        cache_hits=Share(counts["cache:exact"] + counts["cache:semantic"], cache_passed),
        parse=Share(counts["parse:ok"] + counts["parse:repaired"], parse_passed),
        repaired=Share(counts["parse:repaired"], parse_passed),
        tiers=dict(Counter(who for _, who in tally.answered).most_common()),
        slo=dict(slo) if slo is not None else None, checks=[],
        skipped_lines=tally.skipped_lines, durations=tally.durations,
        answered=sorted(tally.answered))
    starts = [when for when, _ in report.answered if when]
    report.first, report.last = (min(starts), max(starts)) if starts else (None, None)
    report.checks = check_slo(report.measures(), slo or {})
    return report


def format_measure(measure: str, value: float | None) -> str:
    """A measure or target as people read it: `12.5 ms`, `3.0%`, `$0.000420`."""
    if value is None:
        return "no data"
    if measure.startswith("latency"):
        return format_duration(value)
    if measure.startswith("cost"):
        return f"${value:.6f}"
    return f"{value:.1%}"


def check_slo(measures: Mapping[str, float | None], slo: Mapping[str, float]) -> list[Check]:
    """Each target in `slo` against its measure (targets for unknown measures are ignored)."""
    return [Check(name, measures.get(name), target, BOUNDS[name])
            for name, target in slo.items() if name in BOUNDS]
