"""What a structured answer must be: a JSON Schema file or a Pydantic model, loaded once.

`OutputSchema.load("schemas/reply.json", base_dir)` or `OutputSchema.load("pkg.mod:Reply",
base_dir)`. `read(text)` parses a model's reply — leniently, the way
`engine.providers.structured.parse_json` repairs fenced, wrapped or damaged JSON — and checks
it: every error is listed with its JSON path, precise enough to send back to the model in a
re-ask. The JSON Schema validator (or the Pydantic model) is built once, never per reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from engine.providers.structured import parse_json
from engine.refs import import_ref

__all__ = ["OutputSchema", "Reading"]

Parse = Literal["ok", "repaired", "failed"]


@dataclass(frozen=True, slots=True)
class Reading:
    """A reply as read: the value (None when it did not parse), how it parsed, what is wrong."""

    value: Any
    parse: Parse
    errors: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return self.parse != "failed" and not self.errors


class OutputSchema:
    def __init__(self, schema: dict[str, Any], model: type[BaseModel] | None = None) -> None:
        self.schema = schema
        self.model = model
        self.validator = None if model else Draft202012Validator(schema)

    @classmethod
    def load(cls, ref: str, base_dir: Path) -> OutputSchema:
        """A JSON Schema file (relative to the pipeline) or `package.module:Model`; raises
        ValueError with what is wrong."""
        if ":" in ref and not ref.endswith((".json", ".yaml", ".yml")):
            model = _import_model(ref)
            return cls(model.model_json_schema(), model)
        path = base_dir / ref
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read the schema file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"{path} is not a valid JSON Schema: {exc.message}") from None
        return cls(schema)

    def read(self, text: str) -> Reading:
        parse: Parse = "ok"
        try:
            value = json.loads(text)
        except ValueError:
            value, parse = parse_json(text), "repaired"
        if value is None:
            return Reading(None, "failed", ("the reply holds no JSON value",))
        return Reading(value, parse, self.errors(value))

    def errors(self, value: Any) -> tuple[str, ...]:
        if self.model is not None:
            try:
                self.model.model_validate(value)
            except ValidationError as exc:
                return tuple(f"{_where(e['loc'])}: {e['msg']}"
                             for e in exc.errors(include_url=False))
            return ()
        assert self.validator is not None
        return tuple(f"{_where(e.absolute_path)}: {e.message}"
                     for e in sorted(self.validator.iter_errors(value),
                                     key=lambda e: list(map(str, e.absolute_path))))

    def strict(self) -> bool:
        """Whether the schema meets OpenAI's strict mode (every object closed and fully
        required), so a provider may be asked to enforce it rather than to follow it."""
        return _closed(self.schema)


def _closed(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties") is not False:
                return False
            if set(node.get("required", ())) != set(node.get("properties", {})):
                return False
        return all(_closed(value) for value in node.values())
    if isinstance(node, list):
        return all(_closed(item) for item in node)
    return True


def _where(path: Any) -> str:
    return ".".join(str(part) for part in path) or "<root>"


def _import_model(ref: str) -> type[BaseModel]:
    target = import_ref(ref)
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise ValueError(f"{ref} is not a Pydantic model")
    return target
