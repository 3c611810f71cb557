"""The model engine: every label set in one call, the answer constrained to the label sets.

The request carries a JSON Schema in which each label set is an enum of its labels plus a
`confidence` in [0, 1]. A tier that supports JSON-schema responses gets it as its
`response_format`; every tier also gets it spelled out in the system message with the
labels' descriptions and a few examples (few-shot), so a tier without that support still
answers in the same shape. The reply is parsed leniently and validated against the schema
(compiled once); a label in the wrong case is accepted as the label.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from engine.providers.structured import parse_json

__all__ = ["Choice", "LabelPrompt", "Verdict"]


@dataclass(frozen=True, slots=True)
class Choice:
    """One label as the model is told about it."""

    description: str
    examples: Sequence[str]


@dataclass(frozen=True, slots=True)
class Verdict:
    labels: dict[str, str]
    confidence: float


class LabelPrompt:
    def __init__(self, sets: Mapping[str, Mapping[str, Choice]], *, shots: int,
                 instructions: str | None) -> None:
        self.sets = sets
        self.schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                **{name: {"type": "string", "enum": list(labels)}
                   for name, labels in sets.items()},
                "confidence": {"type": "number"},  # clipped to [0, 1]: strict modes
                # of some providers reject numeric bounds in a schema
            },
            "required": [*sets, "confidence"],
            "additionalProperties": False,
        }
        self.validator = Draft202012Validator(self.schema)
        self.system = self._system(shots, instructions)

    def _system(self, shots: int, instructions: str | None) -> str:
        lines = ["You classify one message. For each label set below choose exactly one "
                 "label. Answer with JSON only, matching this JSON Schema:",
                 json.dumps(self.schema), ""]
        for name, labels in self.sets.items():
            lines.append(f"Label set `{name}`:")
            for label, choice in labels.items():
                lines.append(f"- {label}: {choice.description}".rstrip(": "))
                lines += [f"    example: {example}" for example in choice.examples[:shots]]
        lines.append("`confidence`: how sure you are of the least certain label, 0 to 1.")
        if instructions:
            lines += ["", instructions]
        return "\n".join(lines)

    def messages(self, text: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": text}]

    def read(self, reply: str) -> Verdict | str:
        """The labels in a reply, or what is wrong with it."""
        value = parse_json(reply)
        if not isinstance(value, dict):
            return "the reply holds no JSON object"
        value = {key: self._label(key, item) for key, item in value.items()}
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = ".".join(str(p) for p in errors[0].path) or "<root>"
            return f"{where}: {errors[0].message}"
        labels = {name: value[name] for name in self.sets}
        return Verdict(labels, min(1.0, max(0.0, float(value["confidence"]))))

    def _label(self, key: str, value: Any) -> Any:
        """`"Billing "` → `"billing"` when the set has that label; anything else unchanged."""
        if key in self.sets and isinstance(value, str):
            folded = {label.casefold(): label for label in self.sets[key]}
            return folded.get(value.strip().casefold(), value)
        return value
