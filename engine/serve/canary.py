"""Canary rollout: a candidate version answers a stepped share of live traffic while it stays
within bounds of the stable version; a breach rolls it back at once, and says so.

```yaml
pipelines:
  support-triage:
    canary:
      candidate: support-triage-v2
      steps: [0.05, 0.5, 1.0]        # the candidate's traffic share, step by step
      step_after: 200                # candidate requests judged before the next step
      min_sample: 50                 # requests of each version before anything is judged
      bounds: {error_rate: 0.02, p95_ratio: 1.2, p95_slack: 50ms, cost_ratio: 1.3}
```

- **Who gets it**: sticky by user — `sticky_point("canary:<pipeline>", user) < share`, the
  user of the API key (without keys, the client address). Shares only grow, so a user moved
  to the candidate stays there until a rollback; every replica puts a user on the same side.
- **Judged** on each version's last `step_after` requests: the candidate's error rate may
  exceed the stable one's by `error_rate`, its p95 latency be `p95_ratio` times the stable
  one's plus `p95_slack`, its mean cost per request `cost_ratio` times the stable one's
  (point estimates, once both versions have `min_sample` requests; with few requests a p95
  is their slowest one, so keep `min_sample` at 20 or more). Cache hits count as requests:
  they dilute both versions alike. Every candidate request checks for a breach; after
  `step_after` candidate requests in a step without one the share steps up, and after the
  last step the candidate is **promoted**: it keeps all traffic, and the operator deploys
  it as the stable version (this process never rewrites files).
- **Rollback**: on a breach the share drops to 0 for good (until a restart): all traffic on
  the stable version. Rollback and promotion are logged and POSTed to the stable pipeline's
  `alerts: {webhook:}` (the budgets' alert sender); steps are logged.
- **Seen**: responses carry `X-Engine-Variant: baseline | candidate`; the run store's lines,
  all under the stable pipeline's name, say the same in `variant`, so `engine report --by
  variant` compares the two; `GET /v1/pipelines/{name}/canary` gives the state and both
  windows; `engine_canary_share{pipeline,candidate}` and `engine_canary_state{...,state}`.
- **Replicas**: the state is per process. Each replica (each `--workers` process) judges
  its own traffic and steps or rolls back on its own, so a user can flip version if one
  replica rolls back before another; with few requests per replica, lower `step_after`.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.observe.summary import percentile
from engine.resources.budgets import post_alert
from engine.serve.config import CanarySettings
from engine.sticky import sticky_point

if TYPE_CHECKING:
    from engine.results import RunResult

__all__ = ["LABELS", "Canary", "CanaryMetrics", "Window"]

LABELS = ("baseline", "candidate")
"""The `variant` of each version's lines and responses."""
State = Literal["running", "rolled_back", "promoted"]
STATES: tuple[State, ...] = ("running", "rolled_back", "promoted")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Sample:
    failed: bool
    seconds: float
    cost: float


class Window:
    """One version's last requests: failures, latency and cost. Failures and cost are kept
    as running sums (judged on every candidate request); p95 sorts the window's latencies."""

    def __init__(self, size: int) -> None:
        self.samples: deque[_Sample] = deque(maxlen=size)
        self._failures = 0
        self._cost = 0.0

    def add(self, result: RunResult) -> None:
        if len(self.samples) == self.samples.maxlen:  # the oldest is about to leave
            oldest = self.samples[0]
            self._failures -= oldest.failed
            self._cost -= oldest.cost
        sample = _Sample(not result.ok, result.duration, result.usage()[2])
        self.samples.append(sample)
        self._failures += sample.failed
        self._cost += sample.cost

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def error_rate(self) -> float:
        return self._failures / len(self.samples) if self.samples else 0.0

    @property
    def p95(self) -> float:
        return percentile(sorted(s.seconds for s in self.samples), 95)

    @property
    def cost(self) -> float:
        return self._cost / len(self.samples) if self.samples else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": len(self), "error_rate": self.error_rate, "p95_s": self.p95,
                "cost_per_request_usd": self.cost}


class Canary:
    """One served pipeline's canary: who gets the candidate, and the judging of it."""

    def __init__(self, pipeline: str, candidate: str, settings: CanarySettings,
                 webhook: str | None, spawn: Callable[[Coroutine[Any, Any, Any]], None]
                 ) -> None:
        self.pipeline = pipeline
        self.candidate = candidate
        self.settings = settings
        self._webhook = webhook
        self._spawn = spawn
        self.step = 0
        self.share = settings.steps[0]
        self.state: State = "running"
        self.reason: str | None = None
        self.in_step = 0
        """Candidate requests observed since the current step began."""
        self.windows = {label: Window(settings.step_after) for label in LABELS}

    def takes(self, user: str) -> bool:
        """Does this user's request go to the candidate?"""
        return sticky_point(f"canary:{self.pipeline}", user) < self.share

    def observe(self, variant: str, result: RunResult) -> None:
        """Count a finished run of either version; judge the candidate after each of its."""
        if self.state != "running":
            return
        self.windows[variant].add(result)
        if variant == LABELS[1]:
            self.in_step += 1
            self._judge()

    def _judge(self) -> None:
        stable, candidate = (self.windows[label] for label in LABELS)
        if min(len(stable), len(candidate)) < self.settings.min_sample:
            return
        breach = self._breach(stable, candidate)
        if breach is not None:
            self._end("rolled_back", 0.0, breach)
        elif self.in_step >= self.settings.step_after:
            self._step_up()

    def _breach(self, stable: Window, candidate: Window) -> str | None:
        """What the candidate does worse than the bounds allow, or None."""
        bounds = self.settings.bounds
        if candidate.error_rate > stable.error_rate + bounds.error_rate:
            return (f"error rate {candidate.error_rate:.1%} > stable {stable.error_rate:.1%}"
                    f" + {bounds.error_rate:.1%}")
        mine, theirs = candidate.p95, stable.p95  # each a sort: once
        if mine > theirs * bounds.p95_ratio + bounds.p95_slack:
            return (f"p95 latency {mine:.3f}s > {bounds.p95_ratio:g}x stable "
                    f"{theirs:.3f}s + {bounds.p95_slack:g}s")
        if candidate.cost > stable.cost * bounds.cost_ratio:
            return (f"cost per request ${candidate.cost:.6f} > {bounds.cost_ratio:g}x stable "
                    f"${stable.cost:.6f}")
        return None

    def _step_up(self) -> None:
        if self.step + 1 == len(self.settings.steps):
            self._end("promoted", self.share, f"passed every step up to {self.share:.0%}")
            return
        self.step += 1
        self.share = self.settings.steps[self.step]
        self.in_step = 0
        _log.info("canary %s → %s: share now %.0f%%", self.pipeline, self.candidate,
                  self.share * 100)

    def _end(self, state: State, share: float, reason: str) -> None:
        """Roll back or promote: final for this process; logged and sent to the webhook."""
        self.state, self.share, self.reason = state, share, reason
        payload = {"alert": f"canary_{state}", **self.status()}
        _log.warning("canary alert: %s", json.dumps(payload))
        if self._webhook:
            self._spawn(post_alert(self._webhook, payload))

    def status(self) -> dict[str, Any]:
        """The state and both windows, for `GET /v1/pipelines/{name}/canary` and alerts."""
        return {"pipeline": self.pipeline, "candidate": self.candidate, "state": self.state,
                "share": self.share, "step": self.step, "steps": list(self.settings.steps),
                "in_step": self.in_step, "reason": self.reason,
                "windows": {label: w.to_json() for label, w in self.windows.items()}}


class CanaryMetrics(Collector):
    """`engine_canary_share{pipeline,candidate}` and `engine_canary_state{...,state}` (1 for
    the current state, 0 for the others)."""

    def __init__(self, canaries: Iterable[Canary]) -> None:
        self.canaries = list(canaries)

    def collect(self) -> list[Metric]:
        share = GaugeMetricFamily("engine_canary_share", "The candidate's traffic share",
                                  labels=["pipeline", "candidate"])
        state = GaugeMetricFamily("engine_canary_state", "The canary's state (1: current)",
                                  labels=["pipeline", "candidate", "state"])
        for canary in self.canaries:
            names = [canary.pipeline, canary.candidate]
            share.add_metric(names, canary.share)
            for name in STATES:
                state.add_metric([*names, name], float(canary.state == name))
        return [share, state]
