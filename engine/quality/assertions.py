"""Golden assertions: what a case expects of one run, and the checks that need no model.

An assertion reads one value of the run's *subject* — the run result as a case sees it:

    output       the pipeline's output          status      ok | finished | error
    finished_by  the stage that ended the run   handed_off  true when given to a person
    error        {stage, type, message}         degraded    why the answer is a stand-in
    trace        every stage event (JSON)       stages      stage → outcome (ok, skipped...)
    route        the stages that ran, in order  cost_usd    the models' cost, summed
    latency      seconds the run took

by a path (`output.items[0].name`, `stages.escalate`), and tests it with one operator:
`equals`, `one_of`, `contains` (a substring, a list item or a mapping key), `regex` (searched),
`json_schema`, `superset_of` / `subset_of` (lists), `min_count` / `max_count` (length),
`min` / `max` (numbers; durations such as `3s` for latency), `similar_to` (`threshold`,
default 0.8: cosine similarity of local embeddings) and `rubric` (`model`: a model grades
it). The last two are model-graded (`engine.quality.judge`); the rest are checked here.

Written `{path: output.category, equals: billing}`, or keyed by a subject field:
`{finished_by: escalate}` (a plain value means equals), `{cost_usd: {max: 0.01}}`,
`{latency: {max: 3s}}`. Several operators in one item are several assertions.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError

from engine.errors import Diagnostic
from engine.results import RunResult
from engine.spec.loader import SourceMap
from engine.spec.types import parse_duration
from engine.spec.validation import closest

__all__ = [
    "MISSING",
    "MODEL_GRADED",
    "OPERATORS",
    "SUBJECT_FIELDS",
    "Assertion",
    "check",
    "parse_expect",
    "parse_path",
    "resolve",
    "short",
    "subject_of",
]

SUBJECT_FIELDS = ("output", "status", "finished_by", "handed_off", "error", "degraded",
                  "trace", "stages", "route", "cost_usd", "latency")
MODEL_GRADED = frozenset({"similar_to", "rubric"})
OPTIONS = {"similar_to": {"threshold"}, "rubric": {"model"}}
"""Keys that only go with one operator."""
_ALL_OPTIONS = frozenset(key for keys in OPTIONS.values() for key in keys)

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()
"""What `resolve` returns for a path that leads nowhere."""

Path_ = tuple[str | int, ...]
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Assertion:
    """One expectation of one case; `line` is where it is written in the dataset."""

    path: str
    parts: tuple[str | int, ...]
    op: str
    written: Any
    """The operator's value as the dataset gives it."""
    expected: Any
    """The same, ready to check against (a compiled regex or schema validator)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None

    def describe(self) -> str:
        return f"{self.path} {self.op} {short(self.written)}"


def short(value: Any, limit: int = 80) -> str:
    """A value as JSON, cut to `limit` characters: failure messages stay one line."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- parsing ---------------------------------------------------------------------------------

def _any(value: Any) -> Any:
    return value


def _list(value: Any) -> Any:
    if not isinstance(value, list):
        raise ValueError("expects a list")
    return value


def _text(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise ValueError("expects a non-empty string")
    return value


def _as_regex(value: Any) -> Any:
    try:
        return re.compile(_text(value))
    except re.error as exc:
        raise ValueError(f"is not a valid regex: {exc}") from None


def _as_schema(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError("expects a JSON Schema (a mapping)")
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
    return Draft202012Validator(value)


def _count(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expects a whole number >= 0")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expects a number")
    return value


OPERATORS: Mapping[str, Callable[[Any], Any]] = {
    "equals": _any, "one_of": _list, "contains": _any, "regex": _as_regex,
    "json_schema": _as_schema, "superset_of": _list, "subset_of": _list,
    "min_count": _count, "max_count": _count, "min": _number, "max": _number,
    "similar_to": _text, "rubric": _text,
}
"""Operator → its value's validator (which may compile it: a regex, a schema validator)."""


def parse_path(text: Any) -> Path_:
    """`output.items[0].name` → ("output", "items", 0, "name"); ValueError when malformed."""
    if not isinstance(text, str) or not text:
        raise ValueError("a path is a string such as output.category")
    parts: list[str | int] = []
    position = 0
    for match in _PART.finditer(text):
        gap = text[position:match.start()]
        if gap not in ("", ".") or (gap == "." and not parts):
            break
        parts.append(int(match[2]) if match[2] is not None else match[1])
        position = match.end()
    if position != len(text) or not isinstance(parts[0], str):
        raise ValueError(f"cannot read the path {text!r}: write output.items[0].name")
    if parts[0] not in SUBJECT_FIELDS:
        guess = _did_you_mean(str(parts[0]), SUBJECT_FIELDS)
        raise ValueError(f"a path starts with one of {', '.join(SUBJECT_FIELDS)}"
                         + (f"; {guess}" if guess else ""))
    return tuple(parts)


def parse_expect(items: Any, at: Path_, source: SourceMap
                 ) -> tuple[list[Assertion], list[Diagnostic]]:
    """A case's `expect:` list → assertions, and a located diagnostic per problem."""
    if not isinstance(items, list):
        return [], [source.diagnostic("`expect` is a list of assertions", at)]
    found: list[Assertion] = []
    problems: list[Diagnostic] = []
    for index, item in enumerate(items):
        where = (*at, index)
        try:
            found += _item(item, where, source)
        except _Problem as exc:
            problems.append(source.diagnostic(exc.message, exc.path or where, hint=exc.hint,
                                              key=exc.key))
    return found, problems


class _Problem(Exception):
    def __init__(self, message: str, path: Path_ = (), hint: str | None = None,
                 key: bool = False) -> None:
        super().__init__(message)
        self.message, self.path, self.hint, self.key = message, path, hint, key


def _item(item: Any, where: Path_, source: SourceMap) -> list[Assertion]:
    if not isinstance(item, dict) or not item:
        raise _Problem("an assertion is a mapping such as {path: output.category, "
                       "equals: billing}")
    if "path" in item:
        ops = {key: value for key, value in item.items() if key != "path"}
        path, at = item["path"], (*where, "path")
    elif len(item) == 1 and next(iter(item)) in SUBJECT_FIELDS:
        [(path, ops)] = item.items()
        at = where = (*where, path)
        ops = ops if isinstance(ops, dict) else {"equals": ops}
    else:
        first = next(iter(item))
        raise _Problem("an assertion needs a `path` (or one subject field as its key: "
                       "{finished_by: escalate})", (*where, first), key=True,
                       hint=_did_you_mean(first, ("path", *SUBJECT_FIELDS)))
    try:
        parts = parse_path(path)
    except ValueError as exc:
        raise _Problem(str(exc), at) from None
    line = (source.locate(where) or (None, None))[0]
    return _operators(ops, parts, path, where, line)


def _operators(ops: dict[str, Any], parts: Path_, path: str, where: Path_,
               line: int | None) -> list[Assertion]:
    names = [op for op in ops if op in OPERATORS]
    allowed = {option for op in names for option in OPTIONS.get(op, ())}
    for key in ops:
        if key in OPERATORS or key in allowed:
            continue
        if key in _ALL_OPTIONS:
            raise _Problem(f"`{key}` goes with {_owner(key)}", (*where, key), key=True)
        raise _Problem(f"unknown assertion key '{key}'", (*where, key), key=True,
                       hint=_did_you_mean(key, (*OPERATORS, *_ALL_OPTIONS)))
    if not names:
        raise _Problem(f"no operator: use one of {', '.join(OPERATORS)}", where)
    found = []
    for op in names:
        expected = _value(op, ops[op], parts, (*where, op))
        options = {key: ops[key] for key in OPTIONS.get(op, ()) if key in ops}
        found.append(Assertion(path, parts, op, ops[op], expected, _options(op, options, where),
                               line))
    return found


def _value(op: str, value: Any, parts: Path_, at: Path_) -> Any:
    try:
        if op in ("min", "max") and parts == ("latency",):
            return parse_duration(value)
        return OPERATORS[op](value)
    except ValueError as exc:
        raise _Problem(f"`{op}` {exc}", at) from None


def _options(op: str, options: dict[str, Any], where: Path_) -> dict[str, Any]:
    threshold = options.get("threshold", 0.8) if op == "similar_to" else None
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(
            threshold, int | float) or not 0 <= threshold <= 1):
        raise _Problem("`threshold` is a similarity between 0 and 1", (*where, "threshold"))
    model = options.get("model")
    if model is not None and not (isinstance(model, str) and model) and not (
            isinstance(model, list) and model and all(isinstance(m, str) for m in model)):
        raise _Problem("`model` names a model tier (or a list of tiers)", (*where, "model"))
    return {key: value for key, value in (("threshold", threshold), ("model", model))
            if value is not None}


def _owner(option: str) -> str:
    return " or ".join(f"`{op}`" for op, keys in OPTIONS.items() if option in keys)


def _did_you_mean(word: str, choices: Any) -> str | None:
    close = closest(word, choices)
    return f"did you mean '{close}'?" if close else None


# -- checking --------------------------------------------------------------------------------

def subject_of(result: RunResult) -> dict[str, Any]:
    """What assertions read: the result's fields plus the route, the cost and the latency."""
    ordered = sorted(result.events, key=lambda event: event.start)
    trace = [event.to_json() for event in ordered]
    cost = result.usage()[2]
    return {
        "output": result.output, "status": result.status, "finished_by": result.finished_by,
        "handed_off": result.handed_off, "error": result.error,
        "degraded": list(result.degraded), "trace": trace,
        "stages": {event.stage: event.outcome for event in ordered},
        "route": [event.stage for event in ordered if event.outcome != "skipped"],
        "cost_usd": cost, "latency": result.duration,
    }


def resolve(subject: Mapping[str, Any], parts: Path_) -> Any:
    """The value at `parts`, or MISSING when a key or an index is not there."""
    value: Any = subject
    for part in parts:
        fits = (0 <= part < len(value) if isinstance(part, int) else False) if isinstance(
            value, list) else isinstance(part, str) and isinstance(value, dict) and part in value
        if not fits:
            return MISSING
        value = value[part]
    return value


def check(assertion: Assertion, actual: Any) -> str | None:
    """None when `actual` meets the assertion, else what is wrong (for a model-free
    operator: the model-graded ones are `engine.quality.judge`'s)."""
    if actual is MISSING:
        return f"no value at {assertion.path}"
    return _CHECKS[assertion.op](actual, assertion.expected)


def _same(a: Any, b: Any) -> bool:
    """Equality as JSON means it: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _got(actual: Any) -> str:
    return f"got {short(actual)}"


def _equals(actual: Any, expected: Any) -> str | None:
    return None if _same(actual, expected) else _got(actual)


def _one_of(actual: Any, expected: list[Any]) -> str | None:
    return None if any(_same(actual, item) for item in expected) else _got(actual)


def _contains(actual: Any, expected: Any) -> str | None:
    if isinstance(actual, str):
        found = isinstance(expected, str) and expected in actual
    elif isinstance(actual, list):
        found = any(_same(item, expected) for item in actual)
    elif isinstance(actual, dict):
        found = isinstance(expected, str) and expected in actual  # JSON keys are strings
    else:
        return f"cannot look inside {short(actual)}"
    return None if found else _got(actual)


def _regex(actual: Any, pattern: re.Pattern[str]) -> str | None:
    if not isinstance(actual, str):
        return f"not text: {short(actual)}"
    return None if pattern.search(actual) else _got(actual)


def _json_schema(actual: Any, validator: Draft202012Validator) -> str | None:
    errors = sorted(validator.iter_errors(actual), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(part) for part in first.absolute_path)
    return str(first.message) + (f" (at {where})" if where else "")


def _superset_of(actual: Any, expected: list[Any]) -> str | None:
    if not isinstance(actual, list):
        return f"not a list: {short(actual)}"
    absent = [item for item in expected if not any(_same(item, a) for a in actual)]
    return f"lacks {short(absent)} ({_got(actual)})" if absent else None


def _subset_of(actual: Any, expected: list[Any]) -> str | None:
    if not isinstance(actual, list):
        return f"not a list: {short(actual)}"
    extra = [item for item in actual if not any(_same(item, e) for e in expected)]
    return f"has {short(extra)} besides" if extra else None


def _count_of(actual: Any) -> int | None:
    return len(actual) if isinstance(actual, list | dict | str) else None


def _number_of(actual: Any) -> float | None:
    return None if isinstance(actual, bool) or not isinstance(actual, int | float) else actual


def _bounded(measure: Callable[[Any], float | None], within: Callable[[float, float], bool],
             missing: str, got: Callable[[Any, float], str]) -> Callable[[Any, Any], str | None]:
    """A min/max check: `measure` the value (None: it has no such measure), compare it."""

    def check(actual: Any, bound: float) -> str | None:
        value = measure(actual)
        if value is None:
            return f"{missing}: {short(actual)}"
        return None if within(value, bound) else got(actual, value)

    return check


def _counted(actual: Any, count: float) -> str:
    return f"has {count:g} ({_got(actual)})"


def _numbered(actual: Any, number: float) -> str:
    return f"got {number:g}"


_min_count = _bounded(_count_of, operator.ge, "has no length", _counted)
_max_count = _bounded(_count_of, operator.le, "has no length", _counted)
_min = _bounded(_number_of, operator.ge, "not a number", _numbered)
_max = _bounded(_number_of, operator.le, "not a number", _numbered)


_CHECKS: Mapping[str, Callable[[Any, Any], str | None]] = {
    "equals": _equals, "one_of": _one_of, "contains": _contains, "regex": _regex,
    "json_schema": _json_schema, "superset_of": _superset_of, "subset_of": _subset_of,
    "min_count": _min_count, "max_count": _max_count, "min": _min, "max": _max,
}
