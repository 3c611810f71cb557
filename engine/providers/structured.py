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

__all__ = ["parse_json", "schema_format", "supports_schema"]


@cache
def supports_schema(model: str) -> bool:
    """Whether litellm knows `model` to accept a JSON-schema `response_format` (asked once)."""
    if is_local(model):
        return False
    try:
        return bool(load_litellm().supports_response_schema(model=model))
    except Exception:  # a model litellm has never heard of: instruct and parse instead
        return False


def schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-style `response_format` asking for JSON that matches `schema`."""
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True}}


def parse_json(text: str) -> Any:
    """The JSON value in a model's reply, repaired when damaged; None when there is none."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    from json_repair import loads

    value = loads(text)
    return None if value == "" else value
