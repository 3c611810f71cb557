"""`engine run`: one record (`--set`) or a JSONL batch through a pipeline.

Results are JSON lines on `--output` (or stdout), written as records complete, one per input
record, each line whole (`--resume` picks up an interrupted run: `engine.runtime.resume`).
Progress, `--trace` timelines and the summary go to stderr, so stdout stays data.
Exit codes: 0 every record ok, 1 some records errored, 2 the spec or command line is wrong,
130 interrupted (what was done is flushed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.commands import (
    EXIT_BAD_SPEC,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RECORD_ERRORS,
    compile_or_report,
    stderr,
)
from engine.compile import CompiledPipeline
from engine.observe.observers import ObserveOptions, Observers
from engine.observe.summary import Summary
from engine.observe.timeline import timeline
from engine.resources import Resources
from engine.results import RunResult
from engine.runtime.batch import InputRecord, read_jsonl, run_batch
from engine.runtime.ray_runner import ClusterError
from engine.runtime.resume import Done, InputChanged, LineWriter, done_in, remaining


class _UsageError(Exception):
    """A wrong command line: reported in one line, exit code 2."""


@dataclass(frozen=True, slots=True)
class Cluster:
    """`--on`: where the records run — here (None), a local Ray ("ray"), or a Ray cluster
    ("ray://head:10001", "auto") — and with how many workers."""

    on: str | None = None
    workers: int = 2
    redis_url: str | None = None
    """State shared by every process of the run (breakers, provider limits, caches, budgets)."""

    @property
    def address(self) -> str | None:
        return None if self.on == "ray" else self.on


def run(file: Path, input_path: str | None, output_path: Path | None, sets: list[str],
        concurrency: int, trace: bool, observe: ObserveOptions | None = None,
        resume: bool = False, retry_errors: bool = False,
        cluster: Cluster | None = None) -> int:
    err = stderr()
    cluster = cluster or Cluster()
    pipeline = compile_or_report(file, resources=Resources(redis_url=cluster.redis_url))
    if pipeline is None:
        return EXIT_BAD_SPEC
    try:
        done = _done(output_path, resume, retry_errors, err)
        with (_inputs(pipeline, input_path, sets) as (items, total),
              _output(output_path, resume) as out,
              _observers(pipeline, observe or ObserveOptions(), err) as observers):
            if total is not None:
                total -= len(done.ids)
            todo = observers.remember(remaining(items, done))
            summary = asyncio.run(_execute(pipeline, todo, total, out, concurrency, trace, err,
                                           observers, cluster))
    except InputChanged as exc:
        err.print(f"error: --resume: {exc}; start a new output file", style="red",
                  markup=False)
        return EXIT_BAD_SPEC
    except (_UsageError, ClusterError) as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        return EXIT_BAD_SPEC
    for table in summary.tables():
        err.print(table)
    if observe is not None and observe.store is not None:
        err.print(f"stored as run {observers.run_id}: engine report {observe.store}",
                  markup=False)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if done.errors:
        err.print(f"{done.errors} records had errored before and were not retried "
                  "(--retry-errors)", markup=False)
    return EXIT_RECORD_ERRORS if summary.errored or done.errors else EXIT_OK


@contextlib.contextmanager
def _observers(pipeline: CompiledPipeline, options: ObserveOptions, err: Console
               ) -> Iterator[Observers]:
    try:
        observers = Observers(pipeline, options)
    except OSError as exc:  # a port in use, an unwritable log file
        raise _UsageError(f"cannot start observability: {exc}") from None
    if observers.metrics_port is not None:
        err.print(f"metrics on http://127.0.0.1:{observers.metrics_port}/metrics", markup=False)
    try:
        yield observers
    finally:
        observers.close()


async def _execute(pipeline: CompiledPipeline, items: Iterator[InputRecord], total: int | None,
                   out: IO[str] | LineWriter, concurrency: int, trace: bool, err: Console,
                   observers: Observers, cluster: Cluster) -> Summary:
    summary = Summary()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, disable=not err.is_terminal or total == 1) as progress:
        task = progress.add_task(pipeline.name, total=total)

        def sink(result: RunResult) -> None:
            out.write(json.dumps(result.to_json(), ensure_ascii=False, default=str) + "\n")
            out.flush()
            summary.add(result)
            observers.observe(result)
            if trace:
                progress.console.print(timeline(result), markup=False)
            progress.advance(task)

        try:
            if cluster.on is None:
                await run_batch(pipeline, items, sink, concurrency)
            else:
                from engine.runtime.ray_runner import run_on_ray

                await run_on_ray(Path(pipeline.loaded.file), None, items, sink,
                                 address=cluster.address, workers=cluster.workers,
                                 concurrency=concurrency, redis_url=cluster.redis_url)
        except asyncio.CancelledError:
            summary.interrupted = True
        finally:
            await pipeline.resources.aclose()
    return summary


@contextlib.contextmanager
def _inputs(pipeline: CompiledPipeline, input_path: str | None, sets: list[str]
            ) -> Iterator[tuple[Iterator[InputRecord], int | None]]:
    if sets and input_path:
        raise _UsageError("give either --set or --input, not both")
    if sets:
        yield iter([InputRecord(0, _record_from_sets(pipeline, sets))]), 1
        return
    if input_path is None and sys.stdin.isatty():
        raise _UsageError("no input: give --set key=value, --input records.jsonl, or pipe JSONL")
    if input_path in (None, "-"):
        yield read_jsonl(sys.stdin.buffer, "<stdin>"), None
        return
    path = Path(input_path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _UsageError(f"cannot read --input {path}: {exc.strerror}") from None
    with handle:
        total = sum(1 for line in handle if line.strip())
        handle.seek(0)
        yield read_jsonl(handle, str(path)), total


def _done(path: Path | None, resume: bool, retry_errors: bool, err: Console) -> Done:
    """What an earlier output answers (with --resume), its torn lines dropped."""
    if retry_errors and not resume:
        raise _UsageError("--retry-errors goes with --resume")
    if not resume:
        return Done()
    if path is None:
        raise _UsageError("--resume needs --output FILE: the file says what is done")
    try:
        done = done_in(path, retry_errors=retry_errors)
    except OSError as exc:
        raise _UsageError(f"cannot resume from --output {path}: {exc.strerror}") from None
    err.print(f"resuming: {len(done.ids)} records already answered in {path}"
              + (f", {done.dropped} lines dropped to redo" if done.dropped else ""),
              markup=False)
    return done


@contextlib.contextmanager
def _output(path: Path | None, append: bool) -> Iterator[IO[str] | LineWriter]:
    if path is None:
        yield sys.stdout
        return
    try:
        writer = LineWriter(path, append=append)
    except OSError as exc:
        raise _UsageError(f"cannot write --output {path}: {exc.strerror}") from None
    try:
        yield writer
    finally:
        writer.close()


def _record_from_sets(pipeline: CompiledPipeline, sets: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs → a record; values are JSON unless the schema says string."""
    properties = pipeline.loaded.spec.input.schema_.get("properties", {})
    record: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--set expects key=value, got {item!r}")
        record[key] = raw if properties.get(key, {}).get("type") == "string" else _json_or(raw)
    return record


def _json_or(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
