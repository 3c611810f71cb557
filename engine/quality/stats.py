"""The statistics that tell two versions apart, and say when they cannot.

Every difference is *B - A* with a 95 % interval, and is called significant only when that
interval excludes 0 — an interval says how large the difference may be, which a p-value
alone does not.

- **Proportions** (golden pass rates, error rates, positive-feedback shares, agreement):
  Wilson's score interval for one proportion, and Newcombe's hybrid score interval (his
  method 10, Statistics in Medicine 1998) for the difference of two independent ones. The
  textbook Wald interval (the one behind the two-proportion z-test) collapses to zero width at
  0 % or 100 % — "0 errors of 40" is an everyday count here — and undercovers at small n;
  Newcombe's stays inside [-1, 1] and holds its coverage there. Pure Python: no numpy.
- **Latency percentiles, mean cost and tokens**: a percentile bootstrap (2,000 resamples,
  seeded, so a report is reproducible). Latency and cost are skewed and heavy-tailed and a
  p95 has no simple standard error, which is what the bootstrap is for. Independent groups
  (A/B variants: different users) are resampled separately; *paired* data (`engine compare`:
  the same inputs through both versions) is resampled by record, keeping each record's two
  values together, which removes the input-to-input spread from the difference. Percentiles
  are nearest rank (`method="inverted_cdf"`), as in `engine report`.

Too few records make any interval wide: `MIN_RECORDS` is the count below which callers warn.
numpy is imported when a bootstrap runs, not with this module (`engine report` starts fast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from engine.observe.summary import format_duration

if TYPE_CHECKING:
    import numpy

__all__ = ["LEVEL", "MIN_RECORDS", "RESAMPLES", "Difference", "Measure", "Statistic", "Unit",
           "bootstrap_diff", "format_amount", "newcombe_diff", "statistic", "wilson"]

LEVEL = 0.95
RESAMPLES = 2000
MIN_RECORDS = 30
"""Below this many records in a group, intervals are too wide (and a bootstrapped p95 too
coarse) to trust: callers warn."""
_CELLS_PER_CHUNK = 2_000_000
"""Bootstrap indices drawn at once (16 MB): resamples go in chunks so memory stays flat."""

Statistic = Literal["mean", "p50", "p95", "p99"]
Unit = Literal["s", "usd", "tokens", "share"]


@dataclass(frozen=True)
class Difference:
    """B - A, with its interval at `level` and the method that gave it."""

    estimate: float
    low: float
    high: float
    method: Literal["bootstrap", "paired bootstrap", "newcombe"]
    level: float = LEVEL

    @property
    def significant(self) -> bool:
        """The interval excludes 0: the versions differ at this level."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "method": self.method, "level": self.level, "significant": self.significant}


@dataclass(frozen=True)
class Measure:
    """One measure of two versions: A's value, B's, and B - A with its interval (None when a
    side has no data)."""

    name: str
    unit: Unit
    a: float | None
    b: float | None
    diff: Difference | None

    @property
    def same(self) -> bool:
        """Both sides equal on every resample: a measure with nothing to say (no cost on
        either side, say)."""
        return self.diff is not None and self.diff.low == self.diff.high == 0

    def change(self) -> str:
        """`-$0.000050 (-42%)`; rates change in percentage points (`+2.5 pp`)."""
        if self.diff is None or self.same:
            return "no data" if self.diff is None else "the same"
        return format_amount(self.diff.estimate, self.unit, signed=True) + self._relative()

    def _relative(self) -> str:
        if not self.a or self.unit == "share" or self.diff is None:
            return ""
        return f" ({self.diff.estimate / self.a:+.0%})"

    def interval(self) -> str:
        """`-$0.000060 … -$0.000040`"""
        if self.diff is None or self.same:
            return "-"
        return (f"{format_amount(self.diff.low, self.unit, signed=True)} … "
                f"{format_amount(self.diff.high, self.unit, signed=True)}")

    def summary(self) -> str:
        """`cost per record -$0.000050 (-42%; 95% CI -$0.000060 … -$0.000040, significant)`"""
        if self.diff is None or self.same:
            return f"{self.name} {self.change()}"
        verdict = "significant" if self.diff.significant else "not significant"
        relative = self._relative()[2:-1]
        return (f"{self.name} {format_amount(self.diff.estimate, self.unit, signed=True)} ("
                + (f"{relative}; " if relative else "")
                + f"{self.diff.level:.0%} CI {self.interval()}, {verdict})")

    def to_json(self) -> dict[str, Any]:
        return {"measure": self.name, "unit": self.unit, "a": self.a, "b": self.b,
                "diff": self.diff.to_json() if self.diff else None}


def format_amount(value: float | None, unit: Unit, *, signed: bool = False) -> str:
    """A value as people read it: `12.0 ms`, `$0.000420`, `310.5` tokens, `12.5%` (a signed
    share is a change: `+2.5 pp`)."""
    if value is None:
        return "-"
    sign = ("-" if value < 0 else "+") if signed else ""
    size = abs(value) if signed else value
    if unit == "s":
        return sign + format_duration(size)
    if unit == "usd":
        return f"{sign}${size:.6f}"
    if unit == "share":
        return f"{sign}{size * 100:.1f} pp" if signed else f"{size:.1%}"
    return f"{sign}{size:.1f}"


def _z(level: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


def wilson(hits: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval for the proportion hits/n; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z, p = _z(level), hits / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def newcombe_diff(hits_a: int, n_a: int, hits_b: int, n_b: int,
                  level: float = LEVEL) -> Difference | None:
    """Newcombe's hybrid score interval for p_B - p_A; None when a group is empty."""
    if n_a == 0 or n_b == 0:
        return None
    p_a, p_b = hits_a / n_a, hits_b / n_b
    low_a, high_a = wilson(hits_a, n_a, level)
    low_b, high_b = wilson(hits_b, n_b, level)
    d = p_b - p_a
    return Difference(d, d - math.hypot(p_b - low_b, high_a - p_a),
                      d + math.hypot(high_b - p_b, p_a - low_a), "newcombe", level)


def statistic(values: Sequence[float], which: Statistic) -> float:
    """The mean or a nearest-rank percentile of `values` (0.0 when empty), as reported."""
    if not values:
        return 0.0
    import numpy as np

    return float(_apply(np.asarray(values, dtype=float), which))


def bootstrap_diff(a: Sequence[float], b: Sequence[float], which: Statistic, *,
                   paired: bool = False, resamples: int = RESAMPLES, level: float = LEVEL,
                   seed: int = 0) -> Difference | None:
    """statistic(b) - statistic(a) with a percentile-bootstrap interval; None when a group is
    empty. `paired`: a[i] and b[i] belong to the same record and are resampled together."""
    if not a or not b:
        return None
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    import numpy as np

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    step = max(1, _CELLS_PER_CHUNK // max(len(xa), len(xb)))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        picks_a = rng.integers(0, len(xa), (rows, len(xa)))
        picks_b = picks_a if paired else rng.integers(0, len(xb), (rows, len(xb)))
        diffs[start:start + rows] = _apply(xb[picks_b], which) - _apply(xa[picks_a], which)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    estimate = float(_apply(xb, which) - _apply(xa, which))
    return Difference(estimate, float(low), float(high),
                      "paired bootstrap" if paired else "bootstrap", level)


def _apply(values: numpy.ndarray, which: Statistic) -> Any:
    """The statistic along the last axis (one value per resample row)."""
    import numpy as np

    if which == "mean":
        return values.mean(axis=-1)
    return np.percentile(values, float(which[1:]), axis=-1, method="inverted_cdf")
