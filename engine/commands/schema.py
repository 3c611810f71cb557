"""`engine schema`: the JSON Schema of pipeline files, for editors."""

from __future__ import annotations

import json
import sys

from engine.commands import EXIT_OK
from engine.registry import Registry
from engine.spec.schema import pipeline_schema


def schema(builtin_only: bool) -> int:
    registry = Registry.from_entry_points(builtin_only=builtin_only)
    sys.stdout.write(json.dumps(pipeline_schema(registry), indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK
