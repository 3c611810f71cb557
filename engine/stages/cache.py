"""`cache`: answer a question asked before without asking a model again.

```yaml
resources:
  responses: {type: cache, backend: memory, max_entries: 100000}   # or redis://127.0.0.1:6379/0
stages:
  lookup:
    type: cache
    needs: [guard]
    with:
      resource: responses
      key: "{{ stages.guard.output.text }}"     # the sanitized text: no raw PII is stored
      scope: ["{{ input.tenant }}"]             # must match exactly
      mode: semantic                            # exact | semantic | both (exact first)
      threshold: 0.8                            # cosine similarity (of the canonical forms)
      ttl: 1d
      control: "{{ input.cache_control }}"      # no-cache, no-store, max-age=N
```

A hit finishes the run at once with the cached answer; the trace says exact or semantic, the
similarity and the age. A miss lets the run go on, and when it ends *well* (status ok, not
degraded: no static fallback, no error, no blocked input — those finish or fail the run) the
answer is stored in the background, off the request's critical path. A semantic hit must
also pass the near-miss guards (numbers, negations, the object asked about must match).
Both sides are compared in their canonical form (engine/cache/canonical.py): pleasantries
dropped, shorthand spelled out, typos corrected.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from engine.cache.canonical import canonical
from engine.cache.canonical import warm_up as warm_up_canonical
from engine.cache.keys import (
    CacheControl,
    exact_key,
    fingerprint,
    key_text,
    partition,
    query_text,
)
from engine.runtime.context import StageContext
from engine.spec.types import Duration, ResourceRefStr
from engine.stages.base import Finish, Setup, SetupError, Stage, StageConfig
from engine.template import TemplateStr

__all__ = ["CacheConfig", "CacheStage"]


class CacheConfig(StageConfig):
    resource: ResourceRefStr = Field(description="a resource of type cache")
    key: TemplateStr = Field(description="what the answer depends on (the sanitized text)")
    scope: list[TemplateStr] = Field(default_factory=list, description="must match exactly")
    mode: Literal["exact", "semantic", "both"] = "exact"
    threshold: float = Field(0.8, gt=0, le=1, description=(
        "cosine similarity for a hit, between the canonical forms of the queries; 0.8 with "
        "the guards is the measured balance (bench/cache_eval.py)"))
    guards: bool = Field(True, description="near-miss guards on semantic hits")
    ttl: Duration = 86400.0
    control: TemplateStr | None = Field(None, description="no-cache, no-store, max-age=N")


class CacheStage(Stage[CacheConfig]):
    Config = CacheConfig

    def __init__(self, setup: Setup[CacheConfig]) -> None:
        super().__init__(setup)
        resource = setup.pipeline.resources[self.config.resource]
        if resource.type != "cache":
            raise SetupError(f"resource '{self.config.resource}' is a {resource.type}, "
                             "not a cache", ("resource",))
        backend = str(getattr(resource, "backend", "memory"))
        if backend != "memory" and not backend.startswith(("redis://", "rediss://", "unix://")):
            raise SetupError(f"resource '{self.config.resource}' has backend {backend!r}; "
                             "expected memory or a redis:// URL", ("resource",))
        self.resources = setup.resources
        self.spec = resource
        self.pipeline = setup.pipeline.name
        self.fingerprint = fingerprint(setup.pipeline, setup.base_dir)

    async def warm_up(self) -> None:
        if self.config.mode != "exact":
            await self.resources.embedder().warm_up()
            await asyncio.to_thread(warm_up_canonical)

    async def run(self, ctx: StageContext) -> Any:
        store = self.resources.cache(self.config.resource, self.spec)
        text = query_text(ctx.render(self.config.key))
        scope = [str(ctx.render(item)) for item in self.config.scope]
        part = partition(self.pipeline, scope, self.fingerprint)
        key = exact_key(part, key_text(text))
        control = CacheControl.parse(self.control(ctx))
        vector = None
        if not control.no_cache:
            hit, vector = await self.lookup(store, key, part, text, control)
            if hit is not None:
                ctx.note(**hit[1])
                return Finish(hit[0])
        if not control.no_store:
            self.store_on_success(ctx, store, key, part, scope, text, vector)
        ctx.note(cache="miss")
        return {"hit": False}

    async def lookup(self, store: Any, key: str, part: str, text: str,
                     control: CacheControl) -> tuple[tuple[Any, dict[str, Any]] | None, Any]:
        """The answer and what to say about the hit (or None), and the query's vector."""
        now = self.resources.wall()
        if self.config.mode in ("exact", "both"):
            entry = await store.get(key)
            if entry is not None and _fresh(entry, now, control):
                store.record("exact_hit", key)
                return (entry.answer, {"cache": "exact", "age_s": round(now - entry.created, 3)}
                        ), None
        if self.config.mode == "exact":
            store.record("miss")
            return None, None
        vector = await self.embed(text)
        for entry, similarity in await store.nearest(part, vector):  # best first
            if similarity < self.config.threshold:
                break
            if not _fresh(entry, now, control):
                continue
            reason = self.near_miss(text, entry.query)
            if reason is None:
                store.record("semantic_hit", entry.key)
                return (entry.answer, {"cache": "semantic", "similarity": round(similarity, 4),
                                       "age_s": round(now - entry.created, 3)}), vector
            store.record("guard_rejection")
        store.record("miss")
        return None, vector

    async def embed(self, text: str) -> Any:
        """The query's vector — of its canonical form: greetings, "please" and typos moved
        paraphrases further apart than meaning does (engine/cache/canonical.py)."""
        return (await self.resources.embedder().embed([canonical(text)]))[0]

    def control(self, ctx: StageContext) -> Any:
        """The request's own `Cache-Control` (a header `engine serve` received) wins over the
        stage's `control` template: the caller knows whether it wants a fresh answer."""
        if ctx.hooks.cache_control is not None:
            return ctx.hooks.cache_control
        return ctx.render(self.config.control) if self.config.control is not None else None

    def near_miss(self, text: str, cached: str) -> str | None:
        if not self.config.guards:
            return None
        from engine.cache.near_miss import near_miss

        return near_miss(text, cached)

    def store_on_success(self, ctx: StageContext, store: Any, key: str, part: str,
                         scope: list[str], text: str, vector: Any) -> None:
        """Store the run's answer if it ends well, in the background."""

        def store_answer(output: Any) -> None:
            self.resources.spawn(self.put(store, key, part, scope, text, vector, output))

        ctx.on_success(store_answer)

    async def put(self, store: Any, key: str, part: str, scope: list[str], text: str,
                  vector: Any, answer: Any) -> None:
        from engine.cache.store import CacheEntry

        if vector is None and self.config.mode != "exact":
            vector = await self.embed(text)
        await store.put(CacheEntry(
            key=key, partition=part, pipeline=self.pipeline, scope=tuple(scope), query=text,
            answer=answer, created=self.resources.wall(), ttl=self.config.ttl, vector=vector))


def _fresh(entry: Any, now: float, control: CacheControl) -> bool:
    return control.max_age is None or now - entry.created <= control.max_age
