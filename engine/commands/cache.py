"""`engine cache clear|stats`: invalidate or inspect a pipeline's shared (Redis) caches.

A memory cache lives inside the process that serves the pipeline; only caches shared
through Redis can be reached from the command line.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.cache.store import CacheStoreError
from engine.commands import (
    EXIT_BAD_SPEC,
    EXIT_OK,
    EXIT_RECORD_ERRORS,
    compile_or_report,
    stderr,
    stdout,
)


def cache(action: str, file: Path, scope: list[str]) -> int:
    pipeline = compile_or_report(file)
    if pipeline is None:
        return EXIT_BAD_SPEC
    shared = {name: str(getattr(spec, "backend", "memory"))
              for name, spec in pipeline.loaded.spec.resources.items() if spec.type == "cache"}
    out = stdout()
    if not shared:
        out.print(f"{file}: no cache resources", markup=False)
    for name, backend in shared.items():
        if backend == "memory":
            out.print(f"{name}: a memory cache lives in the serving process; restart it, or "
                      "share the cache through redis:// to manage it from here", markup=False)
            continue
        try:
            said = asyncio.run(_act(action, backend, pipeline.name, scope))
        except CacheStoreError as exc:
            stderr().print(f"{name}: {exc}", style="red", markup=False)
            return EXIT_RECORD_ERRORS
        out.print(f"{name}: {said}", markup=False)
    return EXIT_OK


async def _act(action: str, url: str, pipeline: str, scope: list[str]) -> str:
    from engine.cache.store import open_store

    store = open_store(url)
    try:
        if action == "clear":
            removed = await store.clear(pipeline=pipeline, scope=scope or None)
            return f"{removed} entries removed"
        return ", ".join(f"{key} {value}" for key, value in (await store.stats()).items())
    finally:
        await store.aclose()
