"""What a cached answer is filed under, so that an answer is only ever served for the same
question asked of the same pipeline, in the same scope, with the same prompts and models.

- The *key text* is normalized (NFKC, case folded, whitespace collapsed): "Reset  my
  Password" and "reset my password" are one question. Semantic search and the near-miss
  guards read the same text with its case kept. A key that renders to data (a whole
  conversation, say) is serialized canonically, so every turn takes part.
- The *fingerprint* hashes the pipeline as loaded — every stage's config, the models and
  their parameters — and the content of every file a stage or a resource names (prompt
  templates, the documents an index is built from, by path or glob): editing a prompt, a
  knowledge-base article or a parameter never serves old answers. It is deliberately the
  whole pipeline, not only what lies downstream of the cache stage: over-invalidating costs
  a few misses after a deploy; under-invalidating serves wrong answers.
- The *partition* = pipeline + scope values + fingerprint. Semantic search never crosses it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.spec.models import PipelineSpec
from engine.values import strings

__all__ = ["CacheControl", "exact_key", "fingerprint", "key_text", "partition", "query_text"]

_SPACES = re.compile(r"\s+")


def query_text(value: Any) -> str:
    """The question as embedded and as the near-miss guards read it: NFKC, whitespace
    collapsed, case kept (the guards tell named entities by their capitals)."""
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", value)).strip()


def key_text(query: str) -> str:
    """The text an exact entry is keyed by: the query text, case folded."""
    return query.casefold()


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


def fingerprint(spec: PipelineSpec, base_dir: Path) -> str:
    """A hash of everything in the pipeline that can shape an answer (see module docstring)."""
    dumped = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True,
                        default=str)
    files = [f"{path}\0{path.read_text(encoding='utf-8', errors='replace')}"
             for path in sorted(set(_named_files(spec, base_dir)))]
    return _digest(dumped, *files)


def _named_files(spec: PipelineSpec, base_dir: Path) -> Iterator[Path]:
    """Files that stage configs and resources name by a relative path or glob (prompt
    templates, an index's documents and the like)."""
    configs = [stage.with_ for stage in spec.stages.values()]
    configs += [resource.model_dump() for resource in spec.resources.values()]
    for value in strings(configs):
        if len(value) < 256 and "\n" not in value and "{" not in value:
            if any(char in value for char in "*?["):
                yield from (path for path in base_dir.glob(value) if path.is_file())
            elif (base_dir / value).is_file():
                yield base_dir / value


def partition(pipeline: str, scope: Sequence[str], print_: str) -> str:
    return _digest(pipeline, json.dumps(list(scope)), print_)


def exact_key(partition_: str, text: str) -> str:
    return _digest(partition_, text)


@dataclass(frozen=True, slots=True)
class CacheControl:
    """HTTP `Cache-Control` semantics: `no-cache` skips the lookup, `no-store` skips storing,
    `max-age=N` serves only entries younger than N seconds."""

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None

    @classmethod
    def parse(cls, value: Any) -> CacheControl:
        if not value:
            return cls()
        directives = [d.strip().lower() for d in str(value).split(",") if d.strip()]
        max_age = None
        for directive in directives:
            name, _, number = directive.partition("=")
            if name == "max-age" and number.strip().isdigit():
                max_age = float(number)
        return cls("no-cache" in directives, "no-store" in directives, max_age)
