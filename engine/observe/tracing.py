"""OpenTelemetry spans for each record's run, built from its `RunResult` once it finishes.

```python
tracing = Tracing()                        # OTLP/HTTP if OTEL_EXPORTER_OTLP_ENDPOINT is set
tracing = Tracing(otlp_endpoint="http://localhost:4318")   # Jaeger, Tempo, a collector...
tracing = Tracing(InMemorySpanExporter())  # any SDK SpanExporter (tests)
tracing.observe(pipeline.name, record, result)   # per record; never raises
header = traceparent_for(result, record)   # W3C value naming the run's root span
tracing.flush()                            # export what is waiting, now
tracing.close()                            # flush; shut down what it built
```

The tree, with the times the run recorded (`started_at` + each event's offsets):

    run <pipeline>                 engine.pipeline, engine.status, engine.finished_by, ...
      stage <name>                 engine.stage.outcome (+ engine.cache.outcome, ...)
        chat <model>               gen_ai.* usage and models, engine.tier, engine.cost_usd

Skipped stages get no span; stages are all children of the run (a DAG is not a tree: `needs`
are not parent links). A model call's note has no clock of its own, so its `chat` span
borrows its stage's start and end, and says so with `engine.timing = "stage"`.

Cost: `observe` only decides whether the run is traced and queues it (~1 µs); a worker
thread builds the spans in batches, finished (SDK `ReadableSpan`s), and hands each batch to
the exporter in one call. No `Tracer` is involved: a live span, its context and the per-span
processor calls cost ~19 µs a span, ~2.5 µs built finished, and these spans are never live —
the run is over. So no `SpanProcessor` or global provider sees them. The worker shares the
GIL with the event loop: its work is no cheaper for being there (bench/observe.py counts it),
but it is off the request's path.

Trace ids: the root span's trace id is `RunResult.trace_id`, so JSON logs and traces join on
it, and its span id is derived from it (`traceparent.root_span_id`): `traceparent_for` names
the root span without a lookup, and model calls name it while the run is going on. Other
span ids are random.

W3C trace context: a record (a dict) with a valid `traceparent` field makes the run's root a
child of that span, in that trace; the result's own trace id cannot be the trace id then, so
logs carry the traceparent's (`engine.observe.logs.trace_id_for`) and the root span keeps
the result's as `engine.result.trace_id`. A malformed value is ignored: a new trace.
Propagation: `traceparent_for` gives the header a server returns or passes on, and the calls
to model providers carry the run's (`StageContext.traceparent`), so their spans join it.

Sampling, per run (its stage and call spans follow it): a caller's traceparent decides with
its sampled flag (`-00` records nothing), as the SDK's parent-based sampler does; else
`sample` is the share of runs traced, by trace id, as the SDK's `TraceIdRatioBased`.

Export: to the exporter passed; else OTLP over HTTP (`engine.observe.otlp`: the SDK's
exporter, with the protobuf written by hand) when an endpoint is given or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variable is set
(`OTEL_SDK_DISABLED=true` turns it off); else nothing. The worker exports every `BATCH` runs,
and at least every `DELAY_S`. At most `MAX_WAITING` runs wait: past that the oldest are
dropped and counted, so a stalled collector cannot grow memory.

Error messages and stage details stay out of spans: they may hold PII, and the logs scrub
them.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
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
BATCH = 256
"""Runs queued before the worker is woken (~2,000 spans a batch on a 7-stage pipeline)."""
DELAY_S = 2.0
"""The longest a traced run waits for export when traffic is too thin to fill a batch."""
MAX_WAITING = 16384
"""Runs kept while the exporter is behind; older ones are dropped."""
SCOPE = InstrumentationScope(__name__)
OWN_TRACE = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
"""The flags of a run's own trace: sampled, and its id is 128 random bits."""
UNSET = Status(StatusCode.UNSET)

Attributes = dict[str, AttributeValue]


class _Run(NamedTuple):
    """A run waiting for its spans: what `observe` knew, so the worker needs nothing else."""

    pipeline: str
    parent: TraceParent | None
    result: RunResult
    started: int
    """The run's start, epoch ns."""


def traceparent_for(result: RunResult, record: Any = None) -> str:
    """The W3C `traceparent` of the run's root span, e.g. for a response header.

    Pass the input record when it may carry a `traceparent`: the run then lives in that
    trace, with that trace's sampled flag.
    """
    if len(result.trace_id) != 32:
        raise ValueError(f"result #{result.index} has no trace id")
    return traceparent.header(result.trace_id, record)


class Tracing:
    """A results consumer that turns each `RunResult` into spans; see the module docstring."""

    def __init__(self, exporter: SpanExporter | None = None, *,
                 otlp_endpoint: str | None = None, sample: float = 1.0) -> None:
        """`exporter`: where spans go instead of OTLP (it stays the caller's: flushed on
        `close`, not shut down). `sample`: the share of runs traced. A span costs ~2.5 µs of
        CPU to build, ~4 more to encode for OTLP (bench/observe.py): a busy service samples."""
        if exporter is not None and otlp_endpoint is not None:
            raise ValueError("give Tracing an exporter or an OTLP endpoint, not both")
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample is a share of runs, from 0 to 1, not {sample}")
        self.endpoint = _endpoint(otlp_endpoint) if otlp_endpoint else None
        self._bound = TraceIdRatioBased.get_bound_for_rate(sample)
        self._batches: _Batches | None = None
        if exporter is not None:
            self._batches = _Batches(exporter, owned=False)
        elif _otlp_wanted(otlp_endpoint):
            self._batches = _Batches(_otlp_exporter(self.endpoint), owned=True)

    @property
    def enabled(self) -> bool:
        """False when nothing would receive the spans: `observe` then does nothing."""
        return self._batches is not None

    def observe(self, pipeline: str, record: Any, result: RunResult) -> None:
        if self._batches is None:
            return
        try:
            parent = parent_of(record)
            if self._sampled(parent, result.trace_id):
                started = _ns(result.started_at or time.time() - result.duration)
                self._batches.add(_Run(pipeline, parent, result, started))
        except Exception:
            self._batches.failures(result.index)

    def flush(self) -> None:
        """Export every run observed so far, in this thread."""
        if self._batches is not None:
            self._batches.export()

    def close(self) -> None:
        """Flush; stop the worker; shut down the exporter if this built it."""
        batches, self._batches = self._batches, None
        if batches is not None:
            batches.close()

    def _sampled(self, parent: TraceParent | None, trace_id: str) -> bool:
        if parent is not None:
            return bool(parent.flags & TraceFlags.SAMPLED)
        return int(trace_id[16:] or "0", 16) < self._bound  # the low 64 bits, as the SDK


class _Batches:
    """Traced runs waiting for export, and the thread that builds and exports their spans
    (what the SDK's `BatchSpanProcessor` does with spans, done with runs)."""

    def __init__(self, exporter: SpanExporter, *, owned: bool) -> None:
        """`owned`: this built the exporter, so `close` shuts it down."""
        self.exporter, self.owned = exporter, owned
        self.spans = _Spans(_resource())
        self.failures = Failures(logger, "tracing")
        self.waiting: deque[_Run] = deque(maxlen=MAX_WAITING)
        self.dropped = self.reported = 0  # each written by one thread: no lost counts
        self.exporting = threading.Lock()
        self.wake = threading.Event()
        self.closing = False
        self.worker = threading.Thread(target=self._work, name="engine-tracing", daemon=True)
        self.worker.start()
        atexit.register(self.close)

    def add(self, run: _Run) -> None:
        if len(self.waiting) == self.waiting.maxlen:
            self.dropped += 1
        self.waiting.append(run)
        if len(self.waiting) >= BATCH and not self.wake.is_set():
            self.wake.set()

    def export(self) -> None:
        """Build and export every waiting run's spans, one export call a batch; never raises
        (the exporter logs its own errors; this thread must outlive them)."""
        with self.exporting:
            while self.waiting:
                count = min(len(self.waiting), BATCH)
                spans: list[ReadableSpan] = []
                for run in (self.waiting.popleft() for _ in range(count)):
                    spans.extend(self._spans(run))
                try:
                    self.exporter.export(spans)
                except Exception:
                    logger.warning("tracing: export failed", exc_info=True)
            self._report_dropped()

    def close(self) -> None:
        atexit.unregister(self.close)
        self.closing = True
        self.wake.set()
        self.worker.join(FLUSH_MS / 1000)
        if self.worker.is_alive():
            logger.warning("tracing: the exporter is stuck; %d runs' spans not sent",
                           len(self.waiting))
        try:
            if self.owned:
                self.exporter.shutdown()
            else:
                self.exporter.force_flush(FLUSH_MS)
        except Exception:
            logger.warning("tracing: could not flush the spans", exc_info=True)

    def _work(self) -> None:
        while not self.closing:
            self.wake.wait(DELAY_S)
            self.wake.clear()
            self.export()
        self.export()

    def _spans(self, run: _Run) -> list[ReadableSpan]:
        """One run's spans, or none when its result is malformed (logged, not raised)."""
        try:
            return self.spans.build(run)
        except Exception:
            self.failures(run.result.index)
            return []

    def _report_dropped(self) -> None:
        dropped = self.dropped  # add() counts on the loop's thread; this runs on the worker
        if dropped > self.reported:
            logger.warning("tracing: the exporter fell behind; %d runs' spans dropped",
                           dropped - self.reported)
            self.reported = dropped


class _Spans:
    """A run's spans, built finished: children first, the root last, as they would end."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def build(self, run: _Run) -> list[ReadableSpan]:
        result, parent = run.result, run.parent
        root = _root_context(result.trace_id, parent)
        spans: list[ReadableSpan] = []
        for event in result.events:
            if event.outcome != "skipped":
                self._stage(spans, root, run.started, event)
        status = UNSET
        if result.error is not None:
            status = Status(StatusCode.ERROR, str(result.error.get("type")))
        caller = _remote(parent) if parent is not None else None
        spans.append(ReadableSpan(f"run {run.pipeline}", root, caller, self.resource,
                                  _run_attributes(run.pipeline, result, parent), status=status,
                                  start_time=run.started,
                                  end_time=run.started + _ns(result.duration),
                                  instrumentation_scope=SCOPE))
        return spans

    def _stage(self, spans: list[ReadableSpan], root: SpanContext, started: int,
               event: StageEvent) -> None:
        start = started + _ns(event.start)
        end = start + _ns(event.duration)
        stage = _child(root)
        if event.notes and event.notes.get("llm"):
            spans.extend(self._chat(stage, call, start, end) for call in event.notes["llm"]
                         if isinstance(call, Mapping))
        failed = event.outcome in ("error", "timeout")
        status = Status(StatusCode.ERROR, event.outcome) if failed else UNSET
        spans.append(ReadableSpan(f"stage {event.stage}", stage, root, self.resource,
                                  _stage_attributes(event), status=status, start_time=start,
                                  end_time=end, instrumentation_scope=SCOPE))

    def _chat(self, stage: SpanContext, call: Mapping[str, Any], start: int, end: int
              ) -> ReadableSpan:
        model = call.get("model")
        attributes, status = _chat_attributes(call), UNSET
        if call.get("tier") is None:
            attempts = call.get("attempts") or [["", "unknown"]]
            attributes["error.type"] = str(attempts[-1][-1])
            status = Status(StatusCode.ERROR, "no tier answered")
        return ReadableSpan(f"chat {model}" if model else "chat", _child(stage), stage,
                            self.resource, attributes, kind=SpanKind.CLIENT, status=status,
                            start_time=start, end_time=end, instrumentation_scope=SCOPE)


def _root_context(trace_id: str, parent: TraceParent | None) -> SpanContext:
    """The run's root span: in the caller's trace under a traceparent, else the run's own;
    its id derived from the run's trace id (random ids for a result that has none)."""
    own = len(trace_id) == 32
    span_id = traceparent.root_span_id(trace_id) if own else _random_id(64)
    if parent is not None:
        flags = TraceFlags.SAMPLED | parent.flags & TraceFlags.RANDOM_TRACE_ID
        return SpanContext(int(parent.trace_id, 16), span_id, False, TraceFlags(flags))
    return SpanContext(int(trace_id, 16) if own else _random_id(128), span_id, False, OWN_TRACE)


def _child(parent: SpanContext) -> SpanContext:
    return SpanContext(parent.trace_id, _random_id(64), False, parent.trace_flags)


def _remote(parent: TraceParent) -> SpanContext:
    return SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), True,
                       TraceFlags(parent.flags))


def _random_id(bits: int) -> int:
    return random.getrandbits(bits) or 1  # zero is the invalid id


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
    notes = event.notes
    if notes:
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


def _otlp_wanted(endpoint: str | None) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return endpoint is not None or any(os.environ.get(name) for name in ENDPOINT_ENVS)


def _endpoint(base: str) -> str:
    """A collector's base URL (`http://host:4318`, as the env variable takes) or the full
    traces URL: either way, the URL spans are posted to."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    """The OTLP/HTTP exporter (engine.observe.otlp); with no endpoint it reads the standard
    OTEL_* variables (endpoint, headers, timeout, TLS)."""
    from engine.observe.otlp import OTLPExporter

    return OTLPExporter(endpoint=endpoint)


def _resource() -> Resource:
    """What the environment says (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), with
    `service.name = engine` when it names no service."""
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: "engine"}))
    return _HashedOnce(detected)


class _HashedOnce(Resource):
    """A resource whose hash is computed once: the OTLP encoder groups every span by its
    resource, and the SDK's hash JSON-encodes the attributes each time (~2 µs a span)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash
