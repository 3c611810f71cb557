"""Durations: `250ms`, `10s`, `2m`, `1h`, `1d`, or a bare number of seconds."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from engine.spec.types import Duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 3s ", 3.0),
        ("0s", 0.0),
        ("10", 10.0),
        (30, 30.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_valid_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["fast", "10 sec", "-1s", "1w", "s", "", "1h30m", ".5s", -1, True, None, [1], "10S"],
)
def test_invalid_durations_say_what_a_duration_looks_like(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 250ms, 10s, 2m or 1h"):
        parse_duration(text)


class _Timed(BaseModel):
    timeout: Duration


def test_duration_fields_store_seconds_and_reject_words() -> None:
    assert _Timed.model_validate({"timeout": "2m"}).timeout == 120.0
    with pytest.raises(ValidationError):
        _Timed.model_validate({"timeout": "fast"})


def test_duration_json_schema_accepts_strings_and_numbers() -> None:
    schema = _Timed.model_json_schema()["properties"]["timeout"]
    assert {option["type"] for option in schema["anyOf"]} == {"string", "number"}
