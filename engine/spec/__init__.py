"""Pipeline files: safe YAML with a source map (`loader`), the core models (`models`),
their pydantic errors as located diagnostics (`validation`) and the JSON Schema (`schema`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SpecError
from engine.spec.loader import Document, SourceMap, load_file, load_text
from engine.spec.models import PipelineSpec
from engine.spec.validation import validate

__all__ = ["LoadedSpec", "load_spec", "parse_spec", "validate_document"]


@dataclass(frozen=True)
class LoadedSpec:
    """A validated pipeline with the map back to its file."""

    spec: PipelineSpec
    source: SourceMap
    base_dir: Path

    @property
    def file(self) -> str:
        return self.source.file


def load_spec(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedSpec:
    """Read, parse and validate a pipeline file; raises SpecError with every problem found."""
    return validate_document(load_file(path, env))


def parse_spec(text: str, file: str = "<string>", env: Mapping[str, str] | None = None,
               base_dir: Path | None = None) -> LoadedSpec:
    return validate_document(load_text(text, file, env, base_dir=base_dir))


def validate_document(doc: Document) -> LoadedSpec:
    """Validate a loaded YAML document's core keys (stage `with:` blocks are the compiler's)."""
    if not isinstance(doc.data, dict):
        raise SpecError([doc.source.diagnostic(
            "a pipeline file must be a mapping", hint="start with `version: 1` and `name: ...`"
        )])
    result = validate(PipelineSpec, doc.data, doc.source)
    if isinstance(result, list):
        raise SpecError(result)
    return LoadedSpec(result, doc.source, doc.base_dir)

