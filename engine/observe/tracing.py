"""OpenTelemetry spans for each record's run, built from its `RunResult` once it finishes.

```python
tracing = Tracing()                        # OTLP/HTTP if OTEL_EXPORTER_OTLP_ENDPOINT is set
tracing = Tracing(otlp_endpoint="http://localhost:4318")   # Jaeger, Tempo, a collector...
tracing.observe(pipeline.name, record, result)   # per record; never raises
header = traceparent_for(result, record)   # W3C value naming the run's root span
tracing.close()                            # flush; shut down what it built
```

The tree, with the times the run recorded (`started_at` + each event's offsets):

    run <pipeline>                 engine.pipeline, engine.status, engine.finished_by, ...
      stage <name>                 engine.stage.outcome (+ engine.cache.outcome, ...)
        chat <model>               gen_ai.* usage and models, engine.tier, engine.cost_usd

Skipped stages get no span; stages are all children of the run (a DAG is not a tree: `needs`
are not parent links). A model call's note has no clock of its own, so its `chat` span
borrows its stage's start and end, and says so with `engine.timing = "stage"`.

Trace ids: the root span's trace id is `RunResult.trace_id`, so JSON logs and traces join
on it. It is set by an `IdGenerator` bound to this module's tracer only (wrapping the
provider's own one, which still makes every other id): for the root span alone it hands out
the result's trace id and a span id derived from it, which is what lets `traceparent_for`
name the root span without a lookup. A parent context was the alternative, but it gives the
root a parent span that never existed, which backends show as a broken trace.

W3C trace context: a record (a dict) with a valid `traceparent` field makes the run's root a
child of that span, in that trace; the result's own trace id cannot be the trace id then, so
logs carry the traceparent's (`engine.observe.logs.trace_id_for`) and the root span keeps
the result's as `engine.result.trace_id`. A malformed value is ignored: a new trace. The
parent's sampled flag is honoured (the SDK's default parent-based sampler): `-00` records
nothing. Propagation goes one way only: `traceparent_for` gives the header a server returns
or passes on, but the calls to model providers carry no `traceparent`, because these spans
are made after the run, when those requests are long gone.

Export: OTLP over HTTP through a `BatchSpanProcessor` when an endpoint is given or the
standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variable is
set; else nothing unless a provider is passed (tests: an in-memory exporter). Error messages
and stage details stay out of spans: they may hold PII, and the logs scrub them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from engine.observe import traceparent
from engine.observe.observers import Failures
from engine.observe.traceparent import TraceParent, parent_of
from engine.results import RunResult, StageEvent

__all__ = ["Tracing", "traceparent_for"]

logger = logging.getLogger("engine.observe")

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACES_PATH = "/v1/traces"
FLUSH_MS = 5000
"""How long `close` waits for the exporter: a dead collector must not hang the exit."""

Attributes = dict[str, AttributeValue]


def traceparent_for(result: RunResult, record: Any = None) -> str:
    """The W3C `traceparent` of the run's root span, e.g. for a response header.

    Pass the input record when it may carry a `traceparent`: the run then lives in that
    trace, with that trace's sampled flag.
    """
    if len(result.trace_id) != 32:
        raise ValueError(f"result #{result.index} has no trace id")
    return traceparent.header(result.trace_id, record)


class _RunIds(IdGenerator):
    """Ids for the span started inside `root(...)`; elsewhere, the wrapped generator's."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._root: ContextVar[tuple[int, int] | None] = ContextVar("engine_root_ids",
                                                                    default=None)

    @contextmanager
    def root(self, trace_id: int, span_id: int) -> Iterator[None]:
        token = self._root.set((trace_id, span_id))
        try:
            yield
        finally:
            self._root.reset(token)

    def generate_trace_id(self) -> int:
        pending = self._root.get()
        return pending[0] if pending else self.inner.generate_trace_id()

    def generate_span_id(self) -> int:
        pending = self._root.get()
        return pending[1] if pending else self.inner.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # the executor draws trace ids from 128 random bits


class Tracing:
    """A results consumer that turns each `RunResult` into spans; see the module docstring."""

    def __init__(self, provider: TracerProvider | None = None, *,
                 otlp_endpoint: str | None = None, sample: float = 1.0) -> None:
        """`sample`: the share of runs traced when this builds the provider (head sampling
        by trace id; a caller's traceparent decides for its runs). Tracing costs ~15 µs a
        span on the event loop (bench/observe.py): a busy service samples."""
        self.endpoint = _endpoint(otlp_endpoint) if otlp_endpoint else None
        exporting = otlp_endpoint is not None or (provider is None and _env_configured())
        self._owned = provider is None and exporting
        if provider is None and exporting:
            provider = TracerProvider(resource=_resource(), sampler=ParentBased(
                TraceIdRatioBased(sample)))
        self._exporting: SpanProcessor | None = None
        if provider is not None and exporting:
            self._exporting = BatchSpanProcessor(_otlp_exporter(self.endpoint))
            provider.add_span_processor(self._exporting)
        self._provider = provider
        self._tracer: trace.Tracer | None = None
        self._ids: _RunIds | None = None
        if provider is not None:
            self._tracer, self._ids = _bound_tracer(provider)
        self._failures = Failures(logger, "tracing")

    @property
    def enabled(self) -> bool:
        """False when nothing would receive the spans: `observe` then does nothing."""
        return self._tracer is not None

    def observe(self, pipeline: str, record: Any, result: RunResult) -> None:
        if self._tracer is None:
            return
        try:
            self._spans(self._tracer, pipeline, parent_of(record), result)
        except Exception:
            self._failures(result.index)

    def close(self) -> None:
        """Flush; shut down the provider if this built it, else only the exporter it added."""
        provider, self._tracer, self._provider = self._provider, None, None
        if provider is None:
            return
        try:
            provider.force_flush(FLUSH_MS)
            if self._owned:
                provider.shutdown()
            elif self._exporting is not None:
                self._exporting.shutdown()
        except Exception:
            logger.warning("tracing: could not flush the spans", exc_info=True)

    def _spans(self, tracer: trace.Tracer, pipeline: str, parent: TraceParent | None,
               result: RunResult) -> None:
        started = _ns(result.started_at or time.time() - result.duration)
        root = self._root(tracer, _parent_context(parent), f"run {pipeline}",
                          _run_attributes(pipeline, result, parent), started, result)
        if not root.is_recording():  # sampled out: its stage and call spans would be too
            return
        if result.error is not None:
            root.set_status(Status(StatusCode.ERROR, str(result.error.get("type"))))
        under_root = trace.set_span_in_context(root)
        for event in result.events:
            if event.outcome != "skipped":
                _stage_span(tracer, under_root, started, event)
        root.end(end_time=started + _ns(result.duration))

    def _root(self, tracer: trace.Tracer, parent: context_api.Context, name: str,
              attributes: Attributes, start: int, result: RunResult) -> trace.Span:
        if self._ids is None or len(result.trace_id) != 32:
            return tracer.start_span(name, parent, attributes=attributes, start_time=start)
        with self._ids.root(int(result.trace_id, 16), traceparent.root_span_id(result.trace_id)):
            return tracer.start_span(name, parent, attributes=attributes, start_time=start)


def _bound_tracer(provider: TracerProvider) -> tuple[trace.Tracer, _RunIds | None]:
    """This module's tracer, its id generator wrapped (once) so root spans get run ids.
    Only this tracer's: the provider's other tracers keep theirs."""
    tracer = provider.get_tracer(__name__)
    if not isinstance(tracer, Tracer):  # OTEL_SDK_DISABLED: a no-op tracer, ids moot
        return tracer, None
    ids = tracer.id_generator
    if not isinstance(ids, _RunIds):
        ids = tracer.id_generator = _RunIds(ids)
    return tracer, ids


def _parent_context(parent: TraceParent | None) -> context_api.Context:
    """The traceparent's span as a remote parent, else an empty context: never whatever
    span happens to be current, whose trace id would replace the run's."""
    if parent is None:
        return context_api.Context()
    span_context = trace.SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16),
                                     is_remote=True, trace_flags=trace.TraceFlags(parent.flags))
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context),
                                     context_api.Context())


def _stage_span(tracer: trace.Tracer, parent: context_api.Context, started: int,
                event: StageEvent) -> None:
    start = started + _ns(event.start)
    end = start + _ns(event.duration)
    span = tracer.start_span(f"stage {event.stage}", parent, start_time=start,
                             attributes=_stage_attributes(event))
    if event.outcome in ("error", "timeout"):
        span.set_status(Status(StatusCode.ERROR, event.outcome))
    calls = (event.notes or {}).get("llm") or []
    under_stage = trace.set_span_in_context(span)
    for call in calls:
        if isinstance(call, Mapping):
            _chat_span(tracer, under_stage, call, start, end)
    span.end(end_time=end)


def _chat_span(tracer: trace.Tracer, parent: context_api.Context, call: Mapping[str, Any],
               start: int, end: int) -> None:
    model = call.get("model")
    span = tracer.start_span(f"chat {model}" if model else "chat", parent, kind=SpanKind.CLIENT,
                             start_time=start, attributes=_chat_attributes(call))
    if call.get("tier") is None:
        attempts = call.get("attempts") or [["", "unknown"]]
        span.set_attribute("error.type", str(attempts[-1][-1]))
        span.set_status(Status(StatusCode.ERROR, "no tier answered"))
    span.end(end_time=end)


def _run_attributes(pipeline: str, result: RunResult, parent: TraceParent | None
                    ) -> Attributes:
    attributes: Attributes = {"engine.pipeline": pipeline, "engine.status": result.status,
                              "engine.record_index": result.index}
    if result.finished_by is not None:
        attributes["engine.finished_by"] = result.finished_by
        attributes["engine.handed_off"] = result.handed_off
    if result.error is not None:
        attributes["error.type"] = str(result.error.get("type"))
        if result.error.get("stage") is not None:
            attributes["engine.error.stage"] = str(result.error["stage"])
    if result.degraded:
        attributes["engine.degraded"] = [str(reason) for reason in result.degraded]
    if parent is not None:
        attributes["engine.result.trace_id"] = result.trace_id
    return attributes


def _stage_attributes(event: StageEvent) -> Attributes:
    attributes: Attributes = {"engine.stage": event.stage, "engine.stage.outcome": event.outcome}
    notes = event.notes or {}
    if isinstance(notes.get("cache"), str):
        attributes["engine.cache.outcome"] = notes["cache"]
    if isinstance(notes.get("blocked"), str):
        attributes["engine.guard.blocked"] = notes["blocked"]
    return attributes


def _chat_attributes(call: Mapping[str, Any]) -> Attributes:
    attributes: Attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": int(call.get("input_tokens") or 0),
        "gen_ai.usage.output_tokens": int(call.get("output_tokens") or 0),
        "engine.cost_usd": float(call.get("cost_usd") or 0.0),
        "engine.attempts": ",".join(f"{tier}:{outcome}"
                                    for tier, outcome in call.get("attempts") or ()),
        "engine.timing": "stage",
    }
    model = call.get("model")
    if model:
        # The note keeps the configured model, which is the one that answered.
        attributes["gen_ai.request.model"] = attributes["gen_ai.response.model"] = str(model)
        if "/" in str(model):
            attributes["gen_ai.provider.name"] = str(model).split("/", 1)[0]
    if call.get("tier") is not None:
        attributes["engine.tier"] = str(call["tier"])
    if call.get("ttft_ms") is not None:
        attributes["engine.ttft_ms"] = float(call["ttft_ms"])
    return attributes


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _env_configured() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_ENVS)


def _endpoint(base: str) -> str:
    """A collector's base URL (`http://host:4318`, as the env variable takes) or the full
    traces URL: either way, the URL spans are posted to."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    """The OTLP/HTTP exporter; with no endpoint it reads the standard OTEL_* variables
    (endpoint, headers, timeout, TLS)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def _resource() -> Resource:
    """What the environment says (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), with
    `service.name = engine` when it names no service."""
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: "engine"}))
    return detected
