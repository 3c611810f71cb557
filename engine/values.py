"""Walking JSON-like data (dicts, lists, strings): every string inside, or a copy with each
string transformed — for the checks that read what a stage produced whatever its shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["map_strings", "strings"]


def strings(value: Any) -> Iterator[str]:
    """Every string in `value`, depth first, dict values in order (keys are not content)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """A copy of `value` with `fn` applied to every string in it."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_strings(item, fn) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [map_strings(item, fn) for item in value]
    return value
