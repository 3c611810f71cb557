"""What one `engine run` feeds its results to: the run store (by default), Prometheus
metrics, OpenTelemetry traces and JSON logs — each optional, each fed every record.

Every consumer has `observe(pipeline, record, result)` (cheap, on the event loop, never
raises) and `close()`. `Observers` builds the ones asked for, keeps the input record of each
record in flight (traces read its `traceparent`, logs pseudonymize its `user_id`), and closes
them in reverse order when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from engine.results import RunResult

if TYPE_CHECKING:
    from engine.compile import CompiledPipeline
    from engine.runtime.batch import InputRecord

__all__ = ["Consumer", "Failures", "ObserveOptions", "Observers", "default_store"]


class Consumer(Protocol):
    def observe(self, pipeline: str, record: Any, result: RunResult) -> None: ...

    def close(self) -> None: ...


class Failures:
    """A consumer's failures: counted, and logged with their traceback the first time and
    every 1000th after — the same fault repeats for every record, and a run must never fail
    because its observers did (call it from an `except` block)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.count = 0

    def __call__(self, index: int) -> None:
        self.count += 1
        if self.count == 1 or self.count % 1000 == 0:
            self.logger.warning("%s failed for record %d (%d so far)", self.what, index,
                                self.count, exc_info=True)


def default_store() -> Path:
    """`ENGINE_RUNS_DIR`, else `runs/`: where runs are stored and `engine report` reads."""
    return Path(os.environ.get("ENGINE_RUNS_DIR", "runs"))


@dataclass(frozen=True, slots=True)
class ObserveOptions:
    store: Path | None = None
    """The run store's folder; None: not stored."""
    metrics_port: int | None = None
    otlp: str | None = None
    """An OTLP/HTTP endpoint for traces (else OTEL_EXPORTER_OTLP_ENDPOINT, else no traces)."""
    log_json: str | None = None
    """A file for JSON log lines, or "-" for stderr."""
    trace_sample: float = 1.0
    """The share of runs traced."""


class Observers:
    def __init__(self, pipeline: CompiledPipeline, options: ObserveOptions) -> None:
        self.pipeline = pipeline.name
        self.consumers: list[Consumer] = []
        self.records: dict[int, Any] = {}
        self.run_id: str | None = None
        self.metrics_port: int | None = None
        self._log_file: TextIO | None = None
        self._open(pipeline, options)

    def _open(self, pipeline: CompiledPipeline, options: ObserveOptions) -> None:
        if options.store is not None:
            from engine.observe.store import RunStore

            store = RunStore(options.store)
            self.run_id = store.open_pipeline(pipeline)
            self.consumers.append(store)
        if options.metrics_port is not None:
            from engine.observe.metrics import Metrics

            metrics = Metrics()
            metrics.watch_breakers(pipeline.resources)
            self.metrics_port = metrics.serve(options.metrics_port)
            self.consumers.append(metrics)
        self._open_traces(options)
        if options.log_json is not None:
            self._open_logs(options.log_json)

    def _open_traces(self, options: ObserveOptions) -> None:
        if options.otlp is None and not _otlp_configured():
            return
        from engine.observe.tracing import Tracing

        self.consumers.append(Tracing(otlp_endpoint=options.otlp, sample=options.trace_sample))

    def _open_logs(self, target: str) -> None:
        from engine.observe.logs import JsonLogs, configure, warm_up

        stream = sys.stderr if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
        self._log_file = None if target == "-" else stream
        run_id = self.run_id or os.urandom(8).hex()
        configure(stream, run_id=run_id)
        warm_up()  # the PII scanner, before the first record rather than inside it
        self.consumers.append(JsonLogs(stream, run_id=run_id))

    def remember(self, items: Iterable[InputRecord]) -> Iterator[InputRecord]:
        """Pass the input through, keeping each record until its result arrives."""
        for item in items:
            self.records[item.index] = item.record
            yield item

    def observe(self, result: RunResult) -> None:
        record = self.records.pop(result.index, None)
        for consumer in self.consumers:
            consumer.observe(self.pipeline, record, result)

    def close(self) -> None:
        for consumer in reversed(self.consumers):
            with contextlib.suppress(Exception):  # a consumer's own failure: already logged
                consumer.close()
        if self._log_file is not None:
            self._log_file.close()


def _otlp_configured() -> bool:
    return any(os.environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
