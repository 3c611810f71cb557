"""Structured answers: ask a tier for JSON the way it supports, and read what comes back.

A tier whose model litellm knows to support JSON-schema responses gets the schema as a
`response_format` (the provider then enforces it); any other tier is instructed in the
prompt, and its reply is parsed leniently: models wrap JSON in code fences and prose, leave
trailing commas and use single quotes, and `json_repair` undoes all of that better than
regexes would. Either way the caller validates the parsed value: a provider's enforcement is
not a guarantee.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from engine.providers.client import is_local, load_litellm

__all__ = ["instruction", "parse_json", "schema_format", "supports_schema"]


@cache
def supports_schema(model: str) -> bool:
    """Whether litellm knows `model` to accept a JSON-schema `response_format` (asked once)."""
    if is_local(model):
        return False
    try:
        return bool(load_litellm().supports_response_schema(model=model))
    except Exception:  # a model litellm has never heard of: instruct and parse instead
        return False


def schema_format(name: str, schema: dict[str, Any], *, strict: bool = True
                  ) -> dict[str, Any]:
    """The OpenAI-style `response_format` asking for JSON that matches `schema`; `strict`
    asks the provider to enforce it (only for schemas that meet its strict subset)."""
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict}}


def instruction(schema: dict[str, Any]) -> str:
    """The system message that asks a tier without schema support for the same shape."""
    return ("Answer with JSON only — no prose, no code fences — matching this JSON Schema:\n"
            + json.dumps(schema))


def parse_json(text: str) -> Any:
    """The JSON value in a model's reply, repaired when damaged; None when there is none or
    it is ambiguous — a re-ask is better than a guess.

    In order: the reply as it is; the complete JSON objects (or arrays) embedded in prose or
    fences — one, or the same one repeated, while different ones are ambiguous; then
    `json_repair` for damaged JSON, unless the reply was cut off inside a string or after a
    key (the rest of the value is unknowable); a value that arrives JSON-encoded twice is
    decoded once more. An error page (HTML) holds no answer.
    """
    text = text.strip().lstrip("\ufeff")
    try:
        return _unwrapped(json.loads(text))
    except ValueError:
        pass
    if not text or text[:9].lower().startswith(("<!doctype", "<html", "<?xml")):
        return None
    embedded = _embedded(text)
    if embedded:
        return embedded[0] if all(value == embedded[0] for value in embedded) else None
    if _cut_off(text):
        return None
    from json_repair import loads

    value = _unwrapped(loads(text))
    return None if value in ("", {}, []) else value


_DECODER = json.JSONDecoder()


def _embedded(text: str) -> list[Any]:
    """The complete, valid JSON values in `text` from its first `{` on (its first `[` when it
    has no object: a citation like `[2]` in the prose must not stand in for the answer), one
    after the other. None when the first is damaged: a valid object nested in damaged JSON is
    not the answer."""
    bracket, brace = text.find("["), text.find("{")
    if bracket != -1 and (brace == -1 or bracket < brace):
        try:
            outer, _ = _DECODER.raw_decode(text, bracket)
        except ValueError:
            return []  # the objects are items of a damaged array
        if any(isinstance(item, dict | list) for item in outer):
            brace = -1  # an array of records, not a citation: read arrays
    for opener in "{[":
        position = brace if opener == "{" else text.find(opener)
        if position == -1:
            continue
        values: list[Any] = []
        while position != -1:
            try:
                value, end = _DECODER.raw_decode(text, position)
            except ValueError:
                break
            values.append(value)
            position = text.find(opener, end)
        return values
    return []


def _cut_off(text: str) -> bool:
    """Whether the JSON in `text` stops mid-value: inside a string or after a key, with
    brackets still open (after a comma the members so far are whole: those are kept)."""
    start = min((i for i in (text.find("{"), text.find("[")) if i != -1), default=-1)
    if start == -1:
        return False
    depth, in_string, escaped = 0, False, False
    for char in text[start:]:
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = char == "\\", char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return depth > 0 and (in_string or text.rstrip().endswith(":"))


def _unwrapped(value: Any) -> Any:
    """A JSON object or array that arrived encoded as a JSON string, decoded."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        if isinstance(inner, dict | list):
            return inner
    return value
