"""Prometheus metrics from run results: one `Metrics` consumer per process, fed every record.

Everything is derived from the `RunResult` the executor already produces (statuses, stage
events and the facts stages note), so observing costs no extra work on the request path, and a
test can script a run against the chaos stub and read exact counts back.

Names follow the OpenTelemetry GenAI semantic conventions where one exists, in their
Prometheus form (dots become underscores, the unit a suffix):

- `gen_ai_client_operation_duration_seconds` — histogram; `gen_ai_operation_name` ("chat"),
  `gen_ai_request_model`, `gen_ai_provider_name`. The notes carry no per-call duration, so
  this is the stage's duration, observed only for a stage that made exactly one call and got
  an answer (retries and fallbacks inside that call are included, as a client sees them).
- `gen_ai_client_token_usage` — histogram of tokens per answered call; the same labels plus
  `gen_ai_token_type` (input | output).
- `gen_ai_server_time_to_first_token_seconds` — histogram, for streamed calls (`ttft_ms`).

The engine's own, prefixed `engine_` (counters end in `_total`):

- `engine_requests_total{pipeline,status}`, `engine_request_duration_seconds{pipeline,status}`
- `engine_stage_duration_seconds{pipeline,stage}` (skipped stages are not observed),
  `engine_stage_outcomes_total{pipeline,stage,outcome}`
- `engine_tokens_total{model,type}`, `engine_cost_usd_total{pipeline,model}`
- `engine_cache_requests_total{pipeline,outcome}` (exact | semantic | miss)
- `engine_fallbacks_total{pipeline,from,to,reason}`: one per hop from a tier to the next
  within a call (reason: the last attempt's outcome on the tier left); `to="static"` when the
  generate stage's static response answered after every tier failed. (validate asking a
  later tier after a re-ask failed makes a new call: not a hop.)
- `engine_timeouts_total{pipeline,kind}`: kind request (deadline), stage, call (an attempt)
- `engine_errors_total{pipeline,type}`: records that ended in error, by exception type
- `engine_guard_findings_total{pipeline,kind}` (pii | injection: records where found),
  `engine_guard_blocked_total{pipeline,reason}` (the guard's reasons as it notes them:
  injection, personal_data, rate_limited, too_long, no_consent; a validate filter's block is
  `output_filter`), `engine_rate_limit_rejections_total{pipeline}`
- `engine_output_filters_total{pipeline,filter}`: validate filters that fired
- `engine_parse_total{pipeline,outcome}`: ok | repaired | failed ("no valid answer")
- `engine_breaker_state{breaker}`: 0 closed, 1 half_open, 2 open, read at scrape time;
  `engine_breaker_transitions_total{breaker,from,to}` (see `watch_breakers`)

Labels are pipeline, stage, tier and model names from the spec, and values from fixed sets:
never a user id, a record id or free text, so cardinality stays bounded. Values are kept in
plain dicts and rendered when scraped (see `_Instruments`): about 3.5 µs per 7-stage record.
Budget spend is not exported: budgets do not exist yet (the alert rules name the future
`engine_budget_spend_ratio` gauge).
"""

from __future__ import annotations

import itertools
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from engine.observe.observers import Failures
from engine.results import RunResult, StageEvent

if TYPE_CHECKING:
    from engine.providers.breaker import CircuitBreaker, State
    from engine.resources import Resources

__all__ = ["BREAKER_STATES", "Metrics", "fallback_hops"]

_log = logging.getLogger(__name__)

BREAKER_STATES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}
"""The value of `engine_breaker_state` for each state (the alert fires on 2)."""

# Bucket bounds: the GenAI conventions' advice where they give one, else a request's range.
_CALL_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0, 30.0)

_GUARD_REASONS = frozenset({"injection", "personal_data", "pii", "rate_limited", "rate_limit",
                            "too_long", "max_tokens", "no_consent", "consent"})
"""What the guard notes as `blocked` (and the contract's older names); anything else noted as
`blocked` is a validate filter's free-text message, counted as `output_filter`."""
_RATE_LIMITED = frozenset({"rate_limited", "rate_limit"})
_FAILED = frozenset({"error", "recovered", "timeout"})

class _Counter:
    """A counter family kept as {label values: total}; rendered only when scraped."""

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, *labels: str) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, total in list(self.values.items()):
            family.add_metric(key, total)
        return family


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.total = 0.0


class _Histogram:
    """A histogram family: per label values, a count per bucket and the sum."""

    __slots__ = ("bounds", "doc", "labels", "les", "name", "series")

    def __init__(self, name: str, doc: str, bounds: Sequence[float], *labels: str) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, tuple(bounds)
        self.les = [repr(float(b)) for b in self.bounds] + ["+Inf"]  # as Go formats them
        self.series: dict[tuple[str, ...], _Series] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series(len(self.les))
        series.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        series.total += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, series in list(self.series.items()):
            buckets = list(zip(self.les, itertools.accumulate(series.counts), strict=True))
            family.add_metric(key, buckets, series.total)
        return family


class _Instruments(Collector):
    """Every metric `Metrics` writes, as one collector: updates are dict and list operations
    under one lock per record, and the families are built when Prometheus scrapes.

    Why not prometheus_client's Counter and Histogram: each update takes a lock of its own
    and validates (0.3 to 0.5 µs), and a 7-stage record makes 16 of them, 40 % of the
    engine's own time per record in bench/observe.py."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sources: list[Resources] = []
        gen_ai = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
        self.operation = _Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (the calling stage's, for single-call stages)",
            _CALL_BUCKETS, *gen_ai)
        self.token_usage = _Histogram(
            "gen_ai_client_token_usage", "Tokens used per answered call", _TOKEN_BUCKETS,
            *gen_ai, "gen_ai_token_type")
        self.ttft = _Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of streamed calls", _TTFT_BUCKETS, *gen_ai)
        self.requests = _Counter("engine_requests", "Records run", "pipeline", "status")
        self.request_duration = _Histogram(
            "engine_request_duration_seconds", "Record run time", _REQUEST_BUCKETS,
            "pipeline", "status")
        self.stage_duration = _Histogram(
            "engine_stage_duration_seconds", "Stage run time (skipped stages excluded)",
            _STAGE_BUCKETS, "pipeline", "stage")
        self.stage_outcomes = _Counter("engine_stage_outcomes", "Stage outcomes",
                                       "pipeline", "stage", "outcome")
        self.tokens = _Counter("engine_tokens", "Tokens of answered calls", "model", "type")
        self.cost = _Counter("engine_cost_usd", "Model spend in USD", "pipeline", "model")
        self.cache = _Counter("engine_cache_requests", "Cache lookups by outcome",
                              "pipeline", "outcome")
        self.fallbacks = _Counter("engine_fallbacks", "Moves from one tier to the next",
                                  "pipeline", "from", "to", "reason")
        self.timeouts = _Counter("engine_timeouts", "Timeouts: request, stage or call",
                                 "pipeline", "kind")
        self.errors = _Counter("engine_errors", "Records that ended in error",
                               "pipeline", "type")
        self.findings = _Counter("engine_guard_findings", "Records where the guard found",
                                 "pipeline", "kind")
        self.blocked = _Counter("engine_guard_blocked", "Requests or answers blocked",
                                "pipeline", "reason")
        self.rate_limited = _Counter("engine_rate_limit_rejections",
                                     "Requests the guard's rate limit refused", "pipeline")
        self.filters = _Counter("engine_output_filters", "Validate filters that fired",
                                "pipeline", "filter")
        self.parse = _Counter("engine_parse", "Structured-answer parsing outcomes",
                              "pipeline", "outcome")
        self.transitions = _Counter("engine_breaker_transitions", "Breaker transitions",
                                    "breaker", "from", "to")
        self.families: list[_Counter | _Histogram] = [
            value for value in vars(self).values() if isinstance(value, _Counter | _Histogram)]

    def describe(self) -> Iterator[Metric]:
        """The names, so that the registry refuses a second collector exporting them."""
        for family in self.families:
            yield (CounterMetricFamily if isinstance(family, _Counter)
                   else HistogramMetricFamily)(family.name, family.doc, labels=family.labels)
        yield _breaker_family()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            families = [family.family() for family in self.families]
        yield from families
        yield self.breaker_states()
        yield self.budget_spend()

    def breakers(self) -> list[CircuitBreaker]:
        # list(): a scrape runs on the exporter's thread while the loop may add a breaker.
        return [b for res in list(self.sources) for b in list(res._breakers.values())]

    def breaker_states(self) -> Metric:
        """Each watched breaker's state now (a name seen twice: its worst state)."""
        states: dict[str, int] = {}
        for breaker in self.breakers():
            value = BREAKER_STATES.get(breaker.state, 0)
            states[breaker.name] = max(value, states.get(breaker.name, 0))
        family = _breaker_family()
        for name, value in sorted(states.items()):
            family.add_metric([name], value)
        return family


    def budget_spend(self) -> Metric:
        """The share of each budget spent in its current period (its busiest scope's)."""
        family = GaugeMetricFamily("engine_budget_spend_ratio",
                                   "Share of a budget spent this period (the busiest scope)",
                                   labels=["pipeline", "budget"])
        shares: dict[tuple[str, str], float] = {}
        for res in list(self.sources):
            for key, (_, share) in list(res.budget_levels.shares.items()):
                shares[key] = max(share, shares.get(key, 0.0))
        for (pipeline, budget), share in sorted(shares.items()):
            family.add_metric([pipeline, budget], share)
        return family


def _breaker_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("engine_breaker_state",
                             "Circuit breaker state: 0 closed, 1 half_open, 2 open",
                             labels=["breaker"])


def fallback_hops(attempts: Iterable[Sequence[Any]], static: bool = False
                  ) -> list[tuple[str, str, str]]:
    """(from, to, reason) for each move from a tier to the next in one call's attempts
    (`[[tier, outcome], ...]`); reason is the last outcome on the tier left. `static`: the
    static response answered after the last tier, one more hop."""
    last: dict[str, str] = {}  # tier → its last outcome, in the order tiers were tried
    for tier, outcome in attempts:
        last[str(tier)] = str(outcome)
    tiers = list(last)
    hops = [(tiers[i], tiers[i + 1], last[tiers[i]]) for i in range(len(tiers) - 1)]
    if static and tiers:
        hops.append((tiers[-1], "static", last[tiers[-1]]))
    return hops


def _provider(model: str) -> str:
    """litellm's provider prefix (`openai/gpt-4o` → openai), the GenAI `provider.name`."""
    prefix, sep, _ = model.partition("/")
    return prefix if sep else "unknown"


class Metrics:
    """The metrics consumer: `observe` once per record (cheap, never raises), `close` at the
    end. Owns its registry (a fresh one by default) so tests and several pipelines in one
    process never collide; `serve` exposes it over HTTP for Prometheus. Call `observe` from
    one thread at a time (the event loop's); scrapes may come from any thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = _Instruments()
        self.registry.register(self._m)
        self._subscribed: set[int] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self._server: tuple[WSGIServer, threading.Thread] | None = None
        self.failures = Failures(_log, "metrics")
        """Results whose observing raised (logged, swallowed): a metric bug never fails a run."""

    # -- the consumer interface --------------------------------------------------------------
    def observe(self, pipeline: str, record: Any, result: RunResult) -> None:
        """Count one record's result. `record` is never read: no input reaches a label."""
        try:
            self._subscribe_new()
            with self._m.lock:
                self._result(pipeline, result)
        except Exception:
            self.failures(result.index)

    def close(self) -> None:
        """Stop the HTTP exporter, if `serve` started one, and stop listening to breakers."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self._subscribed.clear()
        if self._server is not None:
            server, thread = self._server
            self._server = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    # -- process-level wiring --------------------------------------------------------------
    def watch_breakers(self, resources: Resources) -> None:
        """Export the state of `resources`' circuit breakers (read at scrape time) and count
        their transitions. Transitions come from each breaker's listeners, subscribed when
        the breaker is first seen — here, then before every observed record — because the
        call notes do not carry them; a transition before a breaker is first seen is missed
        (judging a breaker takes `min_calls` calls, 50 by default)."""
        if resources not in self._m.sources:
            self._m.sources.append(resources)
        self._subscribe_new()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve `/metrics` from a daemon thread; returns the port (useful with port 0)."""
        if self._server is not None:
            raise RuntimeError("the metrics exporter is already serving")
        self._server = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server[0].server_port)

    # -- one record ------------------------------------------------------------------------
    def _result(self, pipeline: str, result: RunResult) -> None:
        m, status = self._m, result.status
        m.requests.inc((pipeline, status))
        m.request_duration.observe((pipeline, status), result.duration)
        if result.error is not None:
            kind = str(result.error.get("type") or "Error")
            m.errors.inc((pipeline, kind))
            if kind == "DeadlineExceeded":
                m.timeouts.inc((pipeline, "request"))
        outcomes, durations = m.stage_outcomes, m.stage_duration
        for event in result.events:  # the hot loop: most events are a plain "ok"
            stage, outcome = event.stage, event.outcome
            outcomes.inc((pipeline, stage, outcome))
            if outcome == "skipped":
                continue
            durations.observe((pipeline, stage), event.duration)
            if outcome != "ok" or event.notes:
                self._event(pipeline, event)

    def _event(self, pipeline: str, event: StageEvent) -> None:
        """What a stage that failed or noted something adds."""
        m, outcome = self._m, event.outcome
        if outcome == "timeout":
            m.timeouts.inc((pipeline, "stage"))
        if outcome in _FAILED and event.detail and "no valid answer" in event.detail:
            m.parse.inc((pipeline, "failed"))
        if event.notes:
            self._notes(pipeline, event, event.notes)

    def _notes(self, pipeline: str, event: StageEvent, notes: dict[str, Any]) -> None:
        m = self._m
        cache = notes.get("cache")
        if cache in ("exact", "semantic", "miss"):
            m.cache.inc((pipeline, cache))
        parse = notes.get("parse")
        if parse in ("ok", "repaired"):
            m.parse.inc((pipeline, parse))
        for name in notes.get("filters") or ():
            m.filters.inc((pipeline, str(name)))
        self._guard(pipeline, notes)
        calls = notes.get("llm")
        if isinstance(calls, list):  # classify overwrites it with a message when all failed
            static = notes.get("tier") == "static"
            single = len(calls) == 1
            for call in calls:
                if isinstance(call, dict):
                    self._call(pipeline, call, event.duration if single else None, static)

    def _guard(self, pipeline: str, notes: dict[str, Any]) -> None:
        m = self._m
        reason = notes.get("blocked")
        if reason is not None:
            reason = str(reason) if reason in _GUARD_REASONS else "output_filter"
            m.blocked.inc((pipeline, reason))
            if reason in _RATE_LIMITED:
                m.rate_limited.inc((pipeline,))
        injection = notes.get("injection")
        if reason == "injection" or (isinstance(injection, dict) and injection.get("blocked")):
            m.findings.inc((pipeline, "injection"))
        if reason in ("personal_data", "pii") or notes.get("pii"):
            m.findings.inc((pipeline, "pii"))

    def _call(self, pipeline: str, call: dict[str, Any], duration: float | None,
              static: bool) -> None:
        """One model call: tokens, cost and latency of its answer, and its fallback hops."""
        m = self._m
        attempts = call.get("attempts") or ()
        for _tier, outcome in attempts:
            if outcome == "timeout":
                m.timeouts.inc((pipeline, "call"))
        answered = call.get("model") is not None and call.get("tier") is not None
        for hop in fallback_hops(attempts, static and not answered):
            m.fallbacks.inc((pipeline, *hop))
        if not answered:
            return
        model = str(call["model"])
        labels = ("chat", _provider(model), model)
        for kind in ("input", "output"):
            count = int(call.get(f"{kind}_tokens") or 0)
            m.tokens.inc((model, kind), count)
            m.token_usage.observe((*labels, kind), count)
        m.cost.inc((pipeline, model), float(call.get("cost_usd") or 0.0))
        if duration is not None:
            m.operation.observe(labels, duration)
        ttft = call.get("ttft_ms")
        if ttft is not None:
            m.ttft.observe(labels, float(ttft) / 1000)

    # -- breakers --------------------------------------------------------------------------
    def _subscribe_new(self) -> None:
        """Listen to the transitions of breakers not seen before (a count when none are)."""
        if sum(len(res._breakers) for res in self._m.sources) == len(self._subscribed):
            return
        for breaker in self._m.breakers():
            if id(breaker) not in self._subscribed:
                self._subscribed.add(id(breaker))
                self._unsubscribe.append(breaker.on_transition(self._transition))

    def _transition(self, name: str, old: State, new: State, at: float) -> None:
        with self._m.lock:
            self._m.transitions.inc((name, old, new))
