"""The JSON Schema of pipeline files, generated from the models and the registered stages.

Editors (yaml-language-server) use it to complete and check pipelines. Each stage type's
`with:` schema is attached with an `if type == X then with: XConfig` rule, so completion
inside `with:` follows the stage's `type`, and unknown types (plugins not installed when the
schema was generated) are still accepted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engine.registry import Registry
from engine.spec.models import PipelineSpec

__all__ = ["SCHEMA_ID", "pipeline_schema"]

SCHEMA_ID = "https://engine.dev/schemas/pipeline.schema.json"


def pipeline_schema(registry: Registry) -> dict[str, Any]:
    names = registry.names()
    configs: list[type[BaseModel]] = [registry.get(name).Config for name in names]
    models: list[tuple[type[BaseModel], Any]] = [(PipelineSpec, "validation")]
    models += [(config, "validation") for config in configs]
    refs, document = models_json_schema(models, ref_template="#/$defs/{model}", by_alias=True)
    defs = document["$defs"]
    root = defs.pop(refs[(PipelineSpec, "validation")]["$ref"].rsplit("/", 1)[-1])
    stage = defs["StageSpec"]
    stage["properties"]["type"] = {
        "anyOf": [{"enum": names}, {"type": "string"}],
        "description": "a registered stage type",
    }
    stage["allOf"] = [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": {"with": refs[(config, "validation")]}},
        }
        for name, config in zip(names, configs, strict=True)
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **root,
        "title": "engine pipeline (version 1)",
        "$defs": dict(sorted(defs.items())),
    }
