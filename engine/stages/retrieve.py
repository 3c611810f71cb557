"""`retrieve`: the passages of a document index that answer a question.

```yaml
resources:
  kb:
    type: index
    documents: ["kb/*.md", "kb/faq.jsonl"]   # globs relative to this file's folder
    chunk_size: 800                          # characters per chunk (default 800)
    chunk_overlap: 100                       # (default 100)
stages:
  kb:
    type: retrieve
    needs: [guard]
    with:
      resource: kb
      query: "{{ stages.guard.output.text }}"
      top_k: 3                               # at most this many passages (1..50)
      threshold: 0.85                        # cosine similarity a passage needs (0..1)
```

Output: `found` (any passage passed), `passages` best first — each with its `rank` (1, 2,
...), `id` (`<document>#<chunk>`), `source` (the document id), `title`, `text` and `score` —
and `best_score`, the top similarity even when it missed the threshold (None for an empty
index), so a threshold can be tuned from traces. A prompt renders them as:

```jinja
{% for p in stages.kb.output.passages %}[{{ p.rank }}] {{ p.title }}
{{ p.text }}
{% endfor %}
```

The documents are embedded once and persisted in `.engine/index/<resource>/` next to the
pipeline; later runs embed only new or changed files (see `engine.index.store`). Compiling
only checks that every glob matches a file; `warm_up` loads or builds the index.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import Field, ValidationError

from engine.index import DocumentError, DocumentIndex, Hit, IndexSettings
from engine.runtime.context import StageContext
from engine.spec.models import PipelineSpec, Resource
from engine.spec.types import ResourceRefStr
from engine.spec.validation import closest
from engine.stages.base import Setup, SetupError, Stage, StageConfig
from engine.template import TemplateStr

__all__ = ["RetrieveConfig", "RetrieveStage"]

DEFAULT_THRESHOLD = 0.85


class RetrieveConfig(StageConfig):
    resource: ResourceRefStr = Field(description="a resource of type index")
    query: TemplateStr = Field(description="what to look for (the sanitized text)")
    top_k: int = Field(3, ge=1, le=50, description="at most this many passages")
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0, le=1,
                             description="cosine similarity a passage needs")


class RetrieveStage(Stage[RetrieveConfig]):
    Config = RetrieveConfig

    def __init__(self, setup: Setup[RetrieveConfig]) -> None:
        super().__init__(setup)
        name = self.config.resource
        spec = _index_resource(setup.pipeline, name)
        try:
            self.index: DocumentIndex = setup.resources.index(name, spec, setup.base_dir)
            self.index.files()  # globbing only: a glob that finds nothing fails compilation
        except ValidationError as exc:
            raise SetupError(f"resource '{name}': {_problems(exc)}", ("resource",)) from None
        except (DocumentError, ValueError) as exc:
            raise SetupError(f"resource '{name}': {exc}", ("resource",)) from None
        self.embedder = setup.resources.embedder()

    async def warm_up(self) -> None:
        """Load the model and the index before the first record. A broken document does not
        stop the run here: each record then fails with its message, and `on_error` decides."""
        await self.embedder.warm_up()
        with contextlib.suppress(DocumentError):
            await self.index.load()

    async def run(self, ctx: StageContext) -> Any:
        query = str(ctx.render(self.config.query) or "").strip()
        hits = await self.index.search(query, self.config.top_k) if query else []
        # The cut is made on the score as shown (4 decimals): a passage shown at 0.85 passes 0.85.
        hits = [hit._replace(score=round(hit.score, 4)) for hit in hits]
        passed = [hit for hit in hits if hit.score >= self.config.threshold]
        best = hits[0].score if hits else None
        ctx.note(retrieved=len(passed), best_score=best)
        return {"found": bool(passed), "passages": _passages(passed), "best_score": best}


def _index_resource(pipeline: PipelineSpec, name: str) -> Resource:
    """The resource `name`, which must exist and be an index."""
    spec = pipeline.resources.get(name)
    if spec is None:
        guess = closest(name, pipeline.resources)
        hint = f"; did you mean '{guess}'?" if guess else ""
        raise SetupError(f"unknown resource '{name}'{hint}", ("resource",))
    if spec.type != "index":
        raise SetupError(f"resource '{name}' is a {spec.type}, not an index", ("resource",))
    return spec


def _passages(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"rank": rank, "id": hit.chunk.id, "source": hit.chunk.source,
             "title": hit.chunk.title, "text": hit.chunk.text, "score": hit.score}
            for rank, hit in enumerate(hits, start=1)]


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors as `key: problem` (what a user can act on), typos with a guess."""
    keys = list(IndexSettings.model_fields)
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(map(str, error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "missing required key"
        elif error["type"] == "extra_forbidden":
            guess = closest(where, keys)
            message = (f"unknown key; did you mean '{guess}'?" if guess
                       else f"unknown key; expected {', '.join(keys)}")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
