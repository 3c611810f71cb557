"""engine.observe.otlp: the hand-written OTLP protobuf against the SDK's, and a real post."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from engine.observe import tracing as tracing_module
from engine.observe.otlp import OTLPExporter, encode
from engine.observe.traceparent import parse_traceparent
from engine.observe.tracing import Tracing
from engine.results import RunResult, StageEvent

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALL = {"tier": "smart", "model": "openai/smart", "input_tokens": 12, "output_tokens": 7,
        "cost_usd": 0.00042, "attempts": [["smart", "ok"]], "ttft_ms": 81.5}
FAILED_CALL = {"tier": None, "model": None, "attempts": [["smart", "timeout"]]}


def results() -> list[tuple[RunResult, str | None]]:
    """Runs of every shape the engine traces, with the traceparent their record carried."""
    events = [StageEvent("guard", 0.0, 0.001, "ok", notes={"blocked": "rate_limit"}),
              StageEvent("lookup", 0.001, 0.002, "ok", notes={"cache": "miss"}),
              StageEvent("skipped", 0.003, 0.0, "skipped"),
              StageEvent("answer", 0.003, 0.25, "ok", notes={"llm": [CALL, FAILED_CALL]}),
              StageEvent("check", 0.26, 0.01, "error")]
    return [
        (RunResult(0, "hi", "ok", events=events, duration=0.3, started_at=1.7e9,
                   trace_id="1" * 32, finished_by="lookup", handed_off=False,
                   degraded=["static answer", "ünïcode"]), None),
        (RunResult(1, None, "error", error={"type": "Timeout", "stage": "answer"},
                   duration=5.0, started_at=1.7e9 + 1, trace_id="2" * 32), None),
        (RunResult(2, "x", "ok", events=events[:2], duration=0.01, started_at=1.7e9 + 2,
                   trace_id="3" * 32), PARENT),
        (RunResult(-3, "x", "ok", duration=0.0, started_at=1.7e9 + 3, trace_id="4" * 32),
         None),
    ]


def built() -> list[ReadableSpan]:
    """The spans `Tracing` builds for `results()`."""
    spans = tracing_module._Spans(tracing_module._resource())
    out: list[ReadableSpan] = []
    for result, parent in results():
        out += spans.build(tracing_module._Run(
            "triage", parse_traceparent(parent) if parent else None, result,
            tracing_module._ns(result.started_at or 0.0)))
    return out


def test_the_bytes_parse_to_the_sdks_message() -> None:
    spans = built()
    assert {span.kind for span in spans} == {SpanKind.INTERNAL, SpanKind.CLIENT}
    assert any(span.parent is not None and span.parent.is_remote for span in spans)
    ours = ExportTraceServiceRequest.FromString(encode(spans))
    assert ours == encode_spans(spans)
    assert len(ours.resource_spans[0].scope_spans[0].spans) == len(spans)
    assert encode(spans) == encode(spans)  # the attribute memo changes nothing


def test_other_resources_and_scopes_are_grouped_as_the_sdk_groups_them() -> None:
    context = SpanContext(5, 6, False, TraceFlags(1))
    resource = Resource({"service.name": "other", "n": 3}, "https://schema/1")
    scope = InstrumentationScope("lib", "1.2", "https://schema/2", {"a": True})
    extra = [ReadableSpan("plain", context, None, resource, {"i": -7, "f": 0.5, "b": b"\x00"},
                          kind=SpanKind.SERVER, status=Status(StatusCode.OK),
                          start_time=1, end_time=2, instrumentation_scope=scope),
             ReadableSpan("no scope", context, None, resource, None, start_time=3, end_time=4)]
    spans = [*built()[:2], *extra, *built()[2:4]]
    assert ExportTraceServiceRequest.FromString(encode(spans)) == encode_spans(spans)


def test_the_memo_tells_values_apart_by_type() -> None:
    """Equal values of other types (True == 1 == 1.0, -0.0 == 0.0) encode differently."""
    context = SpanContext(5, 6, False, TraceFlags(1))
    values = [(1, 0), (True, False), (1.0, 0.0), 1, True, 1.0, 0.0, -0.0, [1], ["1"]]
    spans = [ReadableSpan("s", context, attributes={"k": value}, start_time=1, end_time=2)
             for value in values]
    assert ExportTraceServiceRequest.FromString(encode(spans)) == encode_spans(spans)


def test_what_it_does_not_write_it_refuses() -> None:
    context = SpanContext(5, 6, False, TraceFlags(1))
    span = ReadableSpan("with event", context, events=[Event("e", {}, 1)], start_time=1,
                        end_time=2)
    with pytest.raises(ValueError, match="events, links or trace state"):
        encode([span])
    too_big = ReadableSpan("big", context, attributes={"n": 2**64}, start_time=1, end_time=2)
    with pytest.raises(ValueError, match="does not fit an int64"):
        encode([too_big])


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """An OTLP/HTTP endpoint on 127.0.0.1 that keeps what it is sent."""
    _Collector.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Collector.bodies
    server.shutdown()
    server.server_close()


def test_tracing_posts_the_hand_written_request(
        collector: tuple[str, list[tuple[str, bytes]]]) -> None:
    url, bodies = collector
    tracing = Tracing(otlp_endpoint=url)
    assert tracing._batches is not None
    exporter = tracing._batches.exporter
    assert isinstance(exporter, OTLPExporter) and exporter.encodes  # not the SDK's encoder
    for result, parent in results():
        tracing.observe("triage", {"traceparent": parent} if parent else None, result)
    tracing.close()
    [(path, body)] = bodies
    assert path == "/v1/traces"
    sent = ExportTraceServiceRequest.FromString(body)
    spans = sent.resource_spans[0].scope_spans[0].spans
    assert sorted(span.name for span in spans) == sorted(span.name for span in built())
    assert {span.trace_id.hex() for span in spans if span.name == "run triage"} == {
        "1" * 32, "2" * 32, PARENT[3:35], "4" * 32}


def test_a_request_over_max_request_size_is_dropped_as_the_sdk_drops_it(
        collector: tuple[str, list[tuple[str, bytes]]]) -> None:
    url, bodies = collector
    exporter = OTLPExporter(endpoint=f"{url}/v1/traces", max_request_size=100)
    assert exporter.export(built()).name == "FAILURE"
    assert bodies == []
    exporter.shutdown()
