"""A batch on Ray: blocks of records run on worker actors, results written by the driver.

Why actors, not Ray Data or plain tasks: a compiled pipeline holds models, clients, caches
and indexes that are costly to build. An actor compiles it once and keeps it (and its async
event loop) for every block it runs; a task would compile per block, and Ray Data's
`map_batches` adds a dataset layer we do not need (our unit is a record with an index, our
output a JSONL stream written by one process), while its actor pools would give us nothing
more than a handful of actors do here.

The driver reads the input lazily, cuts it into blocks of `block_size` records and keeps at
most `_IN_FLIGHT` blocks queued per actor, so memory stays flat for inputs of any length.
Each actor runs one block at a time with `run_batch` at `concurrency`, as a local run does.
Only the driver calls `sink`, so output lines keep the one-line-per-record guarantee of
`engine.runtime.resume`: a worker lost mid-block has that block retried by Ray on the
restarted actor, and the block's reference resolves once, from the attempt that finished;
results are still keyed by index and a block is delivered once (duplicates dropped, missing
records become error results). A block that fails for good (retries exhausted) becomes one
error result per record, so the summary and exit code count it; nothing is lost silently.

The pipeline file (and the prompts, data it names) must be readable on the workers at the
same path: true for a local Ray; on a cluster, ship it with a `runtime_env` working_dir.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from engine.compile import compile_file
from engine.errors import EngineError
from engine.resources import Resources
from engine.results import RunResult
from engine.runtime.batch import InputRecord, run_batch

__all__ = ["WORKER_PREFIX", "ClusterError", "run_on_ray"]

WORKER_PREFIX = "engine-worker-"
"""Worker actors are named `engine-worker-<run>-<n>`, so `ray list actors` shows them."""

_IN_FLIGHT = 2
"""Blocks queued per actor: one running, one ready to start the moment it ends."""

AUTH_HINT = ("; a cluster with token authentication (Ray's default) needs "
             "RAY_AUTH_MODE=token here, and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
_RETRIES = 3
"""Restarts of a lost actor, and retries of the block it was running."""


class _Worker:
    """One Ray actor: compiles the pipeline once, then runs blocks on Ray's event loop."""

    def __init__(self, file: Path, env: Mapping[str, str] | None,
                 redis_url: str | None) -> None:
        self.pipeline = compile_file(file, env=env, resources=Resources(redis_url=redis_url))

    async def run_block(self, block: list[InputRecord], concurrency: int) -> list[RunResult]:
        results: list[RunResult] = []
        await run_batch(self.pipeline, block, results.append, concurrency)
        return results

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        await self.pipeline.resources.aclose()


async def run_on_ray(file: Path, env: Mapping[str, str] | None, items: Iterable[InputRecord],
                     sink: Callable[[RunResult], None], *, address: str | None,
                     workers: int = 2, concurrency: int = 16, block_size: int = 64,
                     redis_url: str | None = None) -> None:
    """Run `items` through the pipeline in `file` on Ray; `sink` gets one result per item.

    `address` None starts a local Ray with `workers` CPUs; otherwise it is passed to
    `ray.init` ("auto", "ray://head:10001"). Ray is shut down at the end only if this call
    started it. Results reach `sink` as blocks complete, not in input order.
    """
    ray = _import_ray()
    started = _init(ray, address, workers)
    actors: list[Any] = []
    try:
        actors = _start_workers(ray, file, env, workers, redis_url)
        await _ready(actors, file)
        await _drive(actors, iter(items), sink, concurrency, max(1, block_size))
        await _gather(actor.close.remote() for actor in actors)
    finally:
        for actor in actors:  # ends any block still running (after an error or Ctrl-C)
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


class ClusterError(EngineError):
    """Ray cannot run the job: not installed, not reachable, or its workers cannot compile
    the pipeline. Said in one line to the user, not as a traceback."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("running on Ray needs Ray: pip install 'engine[ray]'") from None
    return ray


def _init(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to (or start) Ray unless already connected; True if this call did it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines, no telemetry
    if address is None:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        return True
    try:
        ray.init(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc}"
                           f"{AUTH_HINT if address.startswith('ray://') else ''}") from None
    return True


def _start_workers(ray: Any, file: Path, env: Mapping[str, str] | None,
                   workers: int, redis_url: str | None) -> list[Any]:
    """One actor per worker; `max_concurrency=1` keeps each to one block at a time, so a
    worker never has more than `concurrency` records in flight."""
    actor_class = ray.remote(num_cpus=1, max_restarts=_RETRIES, max_task_retries=_RETRIES,
                             max_concurrency=1)(_Worker)
    run = uuid.uuid4().hex[:8]
    return [actor_class.options(name=f"{WORKER_PREFIX}{run}-{n}").remote(Path(file), env,
                                                                          redis_url)
            for n in range(max(1, workers))]


async def _ready(actors: list[Any], file: Path) -> None:
    """Wait until every worker has compiled the pipeline: one that cannot (the file is not
    on that machine, say) is a setup error, reported once, not an error for every record."""
    results = await _gather(actor.ready.remote() for actor in actors)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise ClusterError(f"a Ray worker could not compile {file}: {failed}") from failed


async def _gather(refs: Iterable[Any]) -> list[Any]:
    """Await Ray object references; a failure is returned in place of its value."""
    futures = [asyncio.wrap_future(ref.future()) for ref in refs]
    return await asyncio.gather(*futures, return_exceptions=True)


async def _drive(actors: list[Any], source: Iterator[InputRecord],
                 sink: Callable[[RunResult], None], concurrency: int, block_size: int) -> None:
    """Keep every actor's queue full from `source`; deliver each block once, as it ends."""
    pending: dict[asyncio.Future[Any], tuple[int, list[InputRecord]]] = {}

    def submit(n: int) -> bool:
        block = list(itertools.islice(source, block_size))
        if not block:
            return False
        future = asyncio.wrap_future(actors[n].run_block.remote(block, concurrency).future())
        pending[future] = (n, block)
        return True

    more = all(submit(n) for n in range(len(actors)) for _ in range(_IN_FLIGHT))
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                n, block = pending.pop(future)
                _deliver(block, future, sink)
                more = more and submit(n)
    finally:
        for future in pending:  # the actors are killed next: nothing else to wait for
            future.cancel()


def _deliver(block: list[InputRecord], future: asyncio.Future[Any],
             sink: Callable[[RunResult], None]) -> None:
    """Sink exactly one result per record of `block`: the first for each index, or an error
    result for a record the block did not answer (its worker failed for good)."""
    exc = future.exception()
    results: list[RunResult] = [] if exc is not None else future.result()
    expected = {item.index: item for item in block}
    for result in results:
        if expected.pop(result.index, None) is not None:
            sink(result)
    for item in expected.values():
        sink(_lost(item, exc))


def _lost(item: InputRecord, exc: BaseException | None) -> RunResult:
    message = f"worker failed: {type(exc).__name__}: {exc}" if exc else "no result from worker"
    error = {"stage": None, "type": "WorkerLost", "message": message}
    return RunResult(item.index, item.id, "error", error=error)
