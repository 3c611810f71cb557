"""Shadow traffic: a candidate version runs on a share of live requests after their response
is sent, never affecting it, and the two answers are compared as they come.

```yaml
pipelines:
  support-triage:
    shadow: {pipeline: support-triage-v2, share: 0.1, max_inflight: 8, window: 500}
```

- **When**: a request answered by the served pipeline (a 200: a failed primary run or an
  idempotent replay is not shadowed), once its response is sent — for a stream, after its
  last byte. The sample is random per request, not sticky: a shadow answer reaches no user,
  so there is no experience to keep consistent, and a random share is an unbiased sample.
- **Bounded, shed first**: at most `max_inflight` shadow runs at once, and none while the
  server is at `--max-inflight`; a shadow that does not fit is dropped and counted, never
  queued. Shutdown waits for the shadow runs in flight.
- **Side effects**: the candidate gets the primary's input record (the same identity fields)
  and runs with the process's shared resources. It runs with `Cache-Control: no-store`, so
  it writes no cache entry (its cache partition is its own, but the store's size is shared);
  it may read entries its own served traffic stored. Its model calls count against the
  candidate's own budgets and the models' shared limits and breakers. A `guard` rate limit is
  keyed by the stage's name: a candidate guard named like the primary's spends the same
  user's buckets (name it differently, or raise its rate). Nothing it does reaches the
  client, the idempotency store, the audit log or the request metrics.
- **Recorded**: the run store gets the candidate's line under the *primary's* pipeline name,
  with `"variant": "shadow"` and `"shadow_of": <the primary's trace id>` (the primary's own
  lines say `"variant": "baseline"`), so `engine report --by variant` compares them. The
  last `window` pairs are kept in memory (answers included, never exported) for
  `GET /v1/pipelines/{name}/shadow` — `engine compare`'s agreement per output field, errors,
  latency and cost deltas; the disagreeing cases by trace id and field only, since answers
  belong to other users — and for `engine_shadow_agreement_ratio{pipeline,field}`.
- Per process: each replica (and each `--workers` process) shadows and compares its own
  requests; the run store has them all.
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.quality.compare import Pair, compare_pairs
from engine.runtime.context import RunHooks
from engine.serve.config import ShadowSettings

if TYPE_CHECKING:
    from engine.compile import CompiledPipeline
    from engine.observe.store import RunStore
    from engine.results import RunResult

__all__ = ["LABELS", "Shadow", "ShadowMetrics"]

LABELS = ("baseline", "shadow")
"""The run store's `variant` of the primary's lines and of the shadow's."""
_SHOWN = 20
"""Disagreeing cases listed in the summary (the latest)."""
_log = logging.getLogger(__name__)


class Shadow:
    """One served pipeline's shadow: sample, run the candidate in the background, compare."""

    def __init__(self, pipeline: str, candidate: CompiledPipeline, settings: ShadowSettings,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None],
                 store: RunStore | None, rng: random.Random | None = None) -> None:
        self.pipeline = pipeline
        self.candidate = candidate
        self.settings = settings
        self._spawn = spawn
        self._store = store
        self._rng = rng or random.Random()
        self.pairs: deque[Pair] = deque(maxlen=settings.window)
        self.inflight = 0
        self.counts = {"ran": 0, "failed": 0, "shed": 0}
        """Shadow runs by outcome: answered, ended in error, dropped for lack of room."""

    def offer(self, record: Any, primary: RunResult, saturated: bool) -> None:
        """Maybe shadow this answered request (see the module docstring); returns at once."""
        if self._rng.random() >= self.settings.share:
            return
        if saturated or self.inflight >= self.settings.max_inflight:
            self.counts["shed"] += 1
            return
        self.inflight += 1
        self._spawn(self._run(record, primary))

    async def _run(self, record: Any, primary: RunResult) -> None:
        try:
            hooks = RunHooks(os.urandom(16).hex(), cache_control="no-store")
            result = await self.candidate.run(record, hooks=hooks)
        finally:
            self.inflight -= 1
        self.counts["ran" if result.ok else "failed"] += 1
        if self._store is not None:
            self._store.observe(self.pipeline, record, result,
                                extra={"variant": LABELS[1], "shadow_of": primary.trace_id})
        self.pairs.append(Pair(primary.trace_id, primary.to_json(), result.to_json()))

    def agreement(self) -> dict[str, float]:
        """Field → the share of recent pairs that agree on it (no deltas: cheap to scrape)."""
        comparison = compare_pairs(list(self.pairs), self.settings.fields or None, LABELS,
                                   measure=False)
        return {f.field: f.rate for f in comparison.fields if f.rate is not None}

    def summary(self) -> dict[str, Any]:
        """The recent pairs compared, for `GET /v1/pipelines/{name}/shadow`."""
        comparison = compare_pairs(list(self.pairs), self.settings.fields or None, LABELS)
        shown = [{"trace_id": d.key, "field": d.field}
                 for d in comparison.disagreements[-_SHOWN:]]
        return {"object": "pipeline.shadow", "pipeline": self.pipeline,
                "candidate": self.candidate.name, "share": self.settings.share,
                "runs": dict(self.counts), "inflight": self.inflight,
                **comparison.to_json(), "disagreements": shown}


class ShadowMetrics(Collector):
    """`engine_shadow_runs_total{pipeline,candidate,outcome}` (ran | failed | shed) and
    `engine_shadow_agreement_ratio{pipeline,candidate,field}` over the recent pairs."""

    def __init__(self, shadows: Iterable[Shadow]) -> None:
        self.shadows = list(shadows)

    def collect(self) -> list[Metric]:
        runs = CounterMetricFamily("engine_shadow_runs", "Shadow runs by outcome",
                                   labels=["pipeline", "candidate", "outcome"])
        agreement = GaugeMetricFamily("engine_shadow_agreement_ratio", "Share of recent "
                                      "shadow pairs agreeing, per output field",
                                      labels=["pipeline", "candidate", "field"])
        for shadow in self.shadows:
            names = [shadow.pipeline, shadow.candidate.name]
            for outcome, count in shadow.counts.items():
                runs.add_metric([*names, outcome], count)
            for field, rate in shadow.agreement().items():
                agreement.add_metric([*names, field], rate)
        return [runs, agreement]
