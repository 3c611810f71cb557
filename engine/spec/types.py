"""Small value types shared by the pipeline models and the stage configs.

`ModelRef` and `ResourceRef` are `str` subclasses on purpose: a stage's `Config` declares a
field as one of them, and the compiler finds every such value in a validated config and checks
it against the pipeline's `models:` / `resources:` — no stage has to do that by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

__all__ = [
    "Duration",
    "ModelRef",
    "ModelRefStr",
    "Rate",
    "RateStr",
    "ResourceRef",
    "ResourceRefStr",
    "StageName",
    "StageNames",
    "parse_duration",
    "parse_rate",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: Any) -> float:
    """`250ms`, `10s`, `2m`, `1h`, `1d`, or a bare number of seconds → seconds.

    A number written as a string (`"30"`) counts as seconds too: that is what a
    `${TIMEOUT}` reference produces, since environment values are always strings."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match[1]) * _UNITS[match[2] or "s"]  # "30" from ${VAR} too
    raise ValueError("expected a duration such as 250ms, 10s, 2m or 1h")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DURATION.pattern},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: 250ms, 10s, 2m, 1h, 1d, or seconds",
        }
    ),
]


_RATE = re.compile(
    r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*"
    r"(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hour|hours|d|day|days)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAMES = {1.0: "sec", 60.0: "min", 3600.0: "hour", 86400.0: "day"}


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `per_seconds`; also the bucket's capacity (the allowed burst)."""

    count: int
    per_seconds: float

    @property
    def interval(self) -> float:
        """Seconds for one token to come back."""
        return self.per_seconds / self.count

    def __str__(self) -> str:
        unit = _NAMES.get(self.per_seconds)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.per_seconds:g}s"


def parse_rate(value: Any) -> Rate:
    """`20/min`, `100/minute`, `5/sec`, `1000/hour`, `50/day`, or with a multiple: `5/2s`.

    The message names no value (it may come from a `${VAR}`), like `parse_duration`'s."""
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        match = _RATE.match(value)
        if match:
            count = int(match[1])
            per = float(match[2] or 1) * _UNIT_SECONDS[match[3][0].lower()]
            if count >= 1 and per > 0:
                return Rate(count, per)
    raise ValueError("expected a rate such as 20/min (N per sec, min, hour or day; N ≥ 1)")


RateStr = Annotated[
    Rate,
    BeforeValidator(parse_rate),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": _RATE.pattern, "description": "a rate: 20/min, 5/sec"}
    ),
]


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"'{value}' is not a valid name: use letters, digits and _, not starting with "
            "a digit (templates refer to a stage as stages.<name>)"
        )
    return value


StageName = Annotated[str, AfterValidator(_identifier)]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StageNames = Annotated[
    list[StageName],
    BeforeValidator(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "a stage name, or a list of them",
        }
    ),
]
"""`needs: a` or `needs: [a, b]`; kept as a list."""


class ModelRef(str):
    """The name of an entry of the pipeline's `models:`."""

    __slots__ = ()


class ResourceRef(str):
    """The name of an entry of the pipeline's `resources:`."""

    __slots__ = ()


def _ref(kind: type[str], what: str) -> Any:
    def validate(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected the name of one of the pipeline's {what}")
        return kind(value)

    return validate


ModelRefStr = Annotated[ModelRef, PlainValidator(_ref(ModelRef, "models")),
                        WithJsonSchema({"type": "string", "description": "a name from models:"})]
ResourceRefStr = Annotated[
    ResourceRef,
    PlainValidator(_ref(ResourceRef, "resources")),
    WithJsonSchema({"type": "string", "description": "a name from resources:"}),
]
