"""Pydantic validation errors → `Diagnostic`s that point into the YAML file.

Pydantic reports *all* errors with a `loc` path; we map each path through the source map and
rewrite the message for people: an unknown key gets a "did you mean" hint built from the
fields the model at that place really has, and a value that came from `${VAR}` is never
echoed back.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine.errors import Diagnostic
from engine.spec.loader import SourceMap

__all__ = ["closest", "diagnostics_from", "validate"]

M = TypeVar("M", bound=BaseModel)


def closest(word: str, choices: typing.Iterable[str]) -> str | None:
    """The likeliest intended spelling of `word` among `choices`, if any is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def validate(
    model: type[M], data: Any, source: SourceMap, base: tuple[str | int, ...] = ()
) -> M | list[Diagnostic]:
    """Validate `data` as `model`; on failure return every problem as a Diagnostic."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return diagnostics_from(exc, model, source, base, data)


def diagnostics_from(
    exc: ValidationError,
    model: type[BaseModel],
    source: SourceMap,
    base: tuple[str | int, ...],
    data: Any = None,
) -> list[Diagnostic]:
    out = []
    for error in exc.errors(include_url=False):
        loc, on_key = _data_path(error["loc"], data)
        path = (*base, *loc)
        if error["type"] == "extra_forbidden":
            out.append(_unknown_key(model, loc, path, source))
            continue
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if error["type"] == "missing":
            message = f"missing required key '{loc[-1]}'" if loc else "missing required key"
        elif any(path[:end] in source.from_env for end in range(len(path) + 1)):
            if isinstance(value, str) and value:  # a custom message may quote the value
                message = message.replace(value, "<value from the environment>")
        elif _echoable(value) and repr(value) not in message:
            message += f", got {value!r}"
        out.append(source.diagnostic(message, path, key=on_key))
    return out


def _data_path(loc: tuple[str | int, ...], data: Any) -> tuple[tuple[str | int, ...], bool]:
    """The YAML path of an error: pydantic's `loc` without the type tags it adds for unions
    (`int`, `function-after[...]`), found by following the data itself. The flag says the
    error is about a mapping key (pydantic's `[key]`) rather than its value."""
    path: list[str | int] = []
    current = data
    for part in loc:
        if part == "[key]":
            return tuple(path), True
        if _holds(current, part):
            current = current[part]
        elif _is_union_tag(part):
            continue
        else:
            current = None  # a key the data lacks: a missing required key, or below one
        path.append(part)
    return tuple(path), False


def _holds(data: Any, part: str | int) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)


def _unknown_key(
    model: type[BaseModel], loc: tuple[str | int, ...], path: tuple[str | int, ...],
    source: SourceMap,
) -> Diagnostic:
    key = str(loc[-1])
    allowed = _field_names(_model_at(model, loc[:-1]))
    guess = closest(key, allowed)
    hint = f"did you mean '{guess}'?" if guess else None
    if allowed:
        listing = f"expected one of: {', '.join(sorted(allowed))}"
        hint = f"{hint} {listing}" if hint else listing
    return source.diagnostic(f"unknown key '{key}'", path, hint=hint, key=True)


def _echoable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 60


def _is_union_tag(part: str | int) -> bool:
    """Pydantic inserts type names such as `function-after[...]` into union error paths."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _field_names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Follow a pydantic error path through the model's annotations to the model it lands in."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        else:
            current = _container_item(current)
        current = _first_model_or_container(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _container_item(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[-1] if args else None


def _first_model_or_container(annotation: Any) -> Any:
    """Strip Optional/Annotated/unions down to a model or a dict/list annotation."""
    for candidate in _flatten(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        if typing.get_origin(candidate) in (dict, list, tuple):
            return candidate
    return annotation


def _flatten(annotation: Any) -> Iterator[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _flatten(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _flatten(arg)
    else:
        yield annotation
