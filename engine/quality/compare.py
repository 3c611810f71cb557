"""Two versions of a pipeline on the same inputs: where their answers agree, the cases where
they do not, and what B costs against A — latency, cost and tokens, with intervals.

Pure data in, data out, so every caller shares it: `engine compare` (offline: one file of
records through both, paired by input index) and a live shadow in `engine serve` (the served
answer and the shadow's, paired by the request). The inputs are result lines in
`RunResult.to_json()` form — the answer included, which the run store never keeps — paired
with `pair_lines` by any key both sides carry.

Agreement is per output field: the top-level keys of dict outputs (or the fields asked for),
or the whole output, named `output`, when no output is a dict. Values are equal when Python
says so (`1 == 1.0`, dicts regardless of key order). A record that errored has the value
`error (<type>)` in every field, so an error on one side only is a disagreement and the same
error on both is agreement. Latency, cost and tokens are compared per record, paired
(`stats.bootstrap_diff(paired=True)`): the same input on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.observe.report import record_usage
from engine.quality.stats import Measure, Statistic, Unit, bootstrap_diff, statistic, wilson

__all__ = ["WHOLE_OUTPUT", "Comparison", "Disagreement", "FieldAgreement", "Pair",
           "compare_pairs", "fields_of", "format_value", "pair_lines", "value_of"]

WHOLE_OUTPUT = "output"
"""The field name that stands for the whole output when outputs are not dicts."""


@dataclass(frozen=True)
class Pair:
    """One input's result line from each side, and the key that joined them."""

    key: Any
    a: Mapping[str, Any]
    b: Mapping[str, Any]


@dataclass(frozen=True)
class _Failed:
    """The value of every field of a record that errored."""

    type: str

    def __str__(self) -> str:
        return f"error ({self.type})"


@dataclass(frozen=True)
class _Missing:
    """A field the output does not have."""

    def __str__(self) -> str:
        return "(missing)"


_MISSING = _Missing()


@dataclass(frozen=True)
class Disagreement:
    key: Any
    id: Any
    field: str
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "id": self.id, "field": self.field,
                "a": _jsonable(self.a), "b": _jsonable(self.b)}


@dataclass(frozen=True)
class FieldAgreement:
    field: str
    agree: int
    of: int

    @property
    def rate(self) -> float | None:
        return self.agree / self.of if self.of else None

    def to_json(self) -> dict[str, Any]:
        low, high = wilson(self.agree, self.of)
        return {"field": self.field, "agree": self.agree, "of": self.of, "rate": self.rate,
                "wilson_95": [low, high]}


@dataclass
class Comparison:
    labels: tuple[str, str]
    pairs: int
    errors: tuple[int, int]
    fields: list[FieldAgreement]
    disagreements: list[Disagreement]
    measures: list[Measure] = field(default_factory=list)

    def verdict(self) -> str:
        """One line: agreement per field, then each measure's change and its significance."""
        a, b = self.labels
        agreed = ", ".join(f"{f.rate:.1%} of {f.field}" for f in self.fields
                           if f.rate is not None) or "nothing (no records)"
        changes = "; ".join(m.summary() for m in self.measures)
        return f"{b} agrees with {a} on {agreed}" + (f"; {changes}" if changes else "")

    def to_json(self) -> dict[str, Any]:
        return {"a": self.labels[0], "b": self.labels[1], "pairs": self.pairs,
                "errors": {"a": self.errors[0], "b": self.errors[1]},
                "fields": [f.to_json() for f in self.fields],
                "disagreements": [d.to_json() for d in self.disagreements],
                "measures": [m.to_json() for m in self.measures], "verdict": self.verdict()}


def pair_lines(a: Sequence[Mapping[str, Any]], b: Iterable[Mapping[str, Any]],
               key: str = "index") -> tuple[list[Pair], int]:
    """Join two sides' lines on `key` (in A's order); also returns how many lines of either
    side found no partner."""
    by_key = {line.get(key): line for line in b}
    pairs = [Pair(k, line, by_key.pop(k)) for line in a if (k := line.get(key)) in by_key]
    return pairs, len(a) - len(pairs) + len(by_key)


def value_of(line: Mapping[str, Any], name: str) -> Any:
    """A field's value in a result line: the output's key, the whole output, or a marker."""
    if line.get("status") == "error":
        return _Failed(str((line.get("error") or {}).get("type") or "error"))
    output = line.get("output")
    if isinstance(output, dict):
        return output.get(name, _MISSING)
    return output if name == WHOLE_OUTPUT else _MISSING


def fields_of(pairs: Iterable[Pair]) -> list[str]:
    """The top-level keys of the dict outputs on either side, first seen first; `output`
    (the whole answer) when no output is a dict."""
    seen: dict[str, None] = {}
    for pair in pairs:
        for line in (pair.a, pair.b):
            if isinstance(line.get("output"), dict):
                seen.update(dict.fromkeys(line["output"]))
    return list(seen) or [WHOLE_OUTPUT]


def compare_pairs(pairs: Sequence[Pair], fields: Sequence[str] | None = None,
            labels: tuple[str, str] = ("A", "B"), *, seed: int = 0,
            measure: bool = True) -> Comparison:
    """Agreement per field over every pair, the disagreeing cases, and the paired deltas
    (`measure=False`: no deltas, which bootstrap; a metrics scrape wants agreement only)."""
    names = list(fields) if fields else fields_of(pairs)
    agree = dict.fromkeys(names, 0)
    disagreements: list[Disagreement] = []
    for pair in pairs:
        for name in names:
            a, b = value_of(pair.a, name), value_of(pair.b, name)
            if a == b:
                agree[name] += 1
            else:
                disagreements.append(Disagreement(pair.key, _id(pair), name, a, b))
    errors = (sum(p.a.get("status") == "error" for p in pairs),
              sum(p.b.get("status") == "error" for p in pairs))
    return Comparison(labels, len(pairs), errors,
                      [FieldAgreement(name, agree[name], len(pairs)) for name in names],
                      disagreements, _measures(pairs, seed) if measure else [])


def _id(pair: Pair) -> Any:
    return pair.a.get("id") if pair.a.get("id") is not None else pair.b.get("id")


_MEASURES: tuple[tuple[str, str, Statistic, Unit], ...] = (
    ("latency p50", "latency", "p50", "s"), ("latency p95", "latency", "p95", "s"),
    ("cost per record", "cost", "mean", "usd"), ("tokens per record", "tokens", "mean", "tokens"))


def _measures(pairs: Sequence[Pair], seed: int) -> list[Measure]:
    if not pairs:
        return []
    a, b = (_per_record([getattr(p, side) for p in pairs]) for side in ("a", "b"))
    return [Measure(name, unit, statistic(a[what], which), statistic(b[what], which),
                    bootstrap_diff(a[what], b[what], which, paired=True, seed=seed))
            for name, what, which, unit in _MEASURES]


def _per_record(lines: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Latency (s), cost (USD) and tokens (in + out) of each line."""
    usage = [record_usage(line) for line in lines]
    return {"latency": [float(line.get("duration_ms") or 0.0) / 1000 for line in lines],
            "cost": [u[2] for u in usage], "tokens": [float(u[0] + u[1]) for u in usage]}


def format_value(value: Any, width: int = 60) -> str:
    """A field's value for a table cell, cut to `width` characters."""
    text = str(value) if isinstance(value, _Failed | _Missing | str) else _json(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, _Failed | _Missing) else value
