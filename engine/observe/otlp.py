"""OTLP/HTTP export of finished spans, with the protobuf written by hand.

The SDK's encoder builds a protobuf object per span, attribute and value before it
serializes them: ~15 µs a span, five times what building the span costs, and the larger part
of what tracing adds to a request (bench/observe.py). The wire format is small and stable
(opentelemetry-proto's `ExportTraceServiceRequest`), so `encode` writes the bytes directly,
and keeps the bytes of each attribute it has seen — a pipeline's spans repeat the same keys
and most of the same values (pipeline, stage, model, tier, outcome) run after run.

`encode(spans)` parses to exactly the message the SDK's `encode_spans(spans)` builds (a test
compares them on every kind of span this engine exports). `OTLPExporter` is the SDK's
`OTLPSpanExporter` — endpoint, headers, TLS, compression, timeout and retries from the
standard `OTEL_EXPORTER_OTLP_*` variables — posting what `encode` wrote through the SDK's
own HTTP client, under its export metrics and request-size limit. Those three are private
attributes of the SDK's exporter (`_client`, `_metrics`, `_max_request_size`): an SDK without
them gets the SDK's whole `export`, and a test checks the installed one takes the fast path.

Measured (bench/observe.py and tests/observe/test_otlp.py's spans): ~4 µs a span against the
SDK encoder's ~15.

Not written: span events, links and trace state, which these spans never have (`encode`
refuses a span that has them rather than drop them).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanKind

__all__ = ["OTLPExporter", "encode"]

# Span.kind in the proto counts from SPAN_KIND_UNSPECIFIED = 0; the API's from INTERNAL = 0.
_KINDS = {kind: bytes((0x30, number)) for kind, number in (
    (SpanKind.INTERNAL, 1), (SpanKind.SERVER, 2), (SpanKind.CLIENT, 3), (SpanKind.PRODUCER, 4),
    (SpanKind.CONSUMER, 5))}
# Span.flags (fixed32, field 16): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and with a remote
# parent SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK too.
_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", 0x100)
_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", 0x300)
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7) and end_time_unix_nano (8)
_CACHED = 8192
"""Encodings kept per memo; past that a memo starts again (ids and counts vary)."""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An `AnyValue`, as the SDK maps Python values (bool before int: a bool is an int)."""
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} does not fit an int64")  # the SDK drops it, and says so
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    raise TypeError(f"no OTLP value for {type(value).__name__}")


class _Memo(dict[Any, bytes]):
    """Encodings by what they encode, bounded (see `_CACHED`)."""

    def keep(self, key: Any, encoded: bytes) -> bytes:
        if len(self) >= _CACHED:
            self.clear()
        self[key] = encoded
        return encoded


_pairs, _names, _statuses = _Memo(), _Memo(), _Memo()


def _attributes(number: int, attributes: Iterable[tuple[str, Any]]) -> bytes:
    """`KeyValue` fields, each encoded once per (key, type, repr of the value): True is not
    1, 1.0 is not 1, -0.0 is not 0.0, not even inside a list."""
    out = []
    for key, value in attributes:
        memo_key = (number, key, type(value), repr(value))
        encoded = _pairs.get(memo_key)
        if encoded is None:
            encoded = _pairs.keep(memo_key, _field(
                number, _field(1, key.encode()) + _field(2, _any_value(value))))
        out.append(encoded)
    return b"".join(out)


def _status(span: ReadableSpan) -> bytes:
    code, description = span.status.status_code.value, span.status.description
    encoded = _statuses.get((code, description))
    if encoded is None:
        payload = _field(2, description.encode()) if description else b""
        payload += b"\x18" + _varint(code) if code else b""
        encoded = _statuses.keep((code, description), _field(15, payload))
    return encoded


def _span(span: ReadableSpan) -> bytes:
    if span.events or span.links or span.context.trace_state:
        raise ValueError(f"span {span.name!r} has events, links or trace state: "
                         "engine.observe.otlp does not write them")
    context, parent = span.context, span.parent
    name = _names.get(span.name) or _names.keep(span.name, _field(5, span.name.encode()))
    out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"),
           b"\x12\x08", context.span_id.to_bytes(8, "big")]
    if parent is not None:
        out += [b"\x22\x08", parent.span_id.to_bytes(8, "big")]
    out += [name, _KINDS[span.kind],
            _TIMES.pack(0x39, span.start_time or 0, 0x41, span.end_time or 0),
            _attributes(9, (span.attributes or {}).items())]
    if span.dropped_attributes:
        out += [b"\x50", _varint(span.dropped_attributes)]
    out += [_status(span),
            _REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT]
    return b"".join(out)


def _scope(scope: InstrumentationScope | None, spans: list[bytes]) -> bytes:
    """A `ScopeSpans` message."""
    about = b""  # present even when empty, as the SDK writes it
    if scope is not None:
        about = _field(1, scope.name.encode())
        if scope.version:
            about += _field(2, scope.version.encode())
        about += _attributes(3, (scope.attributes or {}).items())
    out = [_field(1, about)]
    out += [_field(2, span) for span in spans]
    if scope is not None and scope.schema_url:
        out.append(_field(3, scope.schema_url.encode()))
    return b"".join(out)


def _resource(resource: Resource, scopes: dict[InstrumentationScope | None, list[bytes]]
              ) -> bytes:
    """A `ResourceSpans` message."""
    out = [_field(1, _attributes(1, resource.attributes.items()))]  # a Resource
    out += [_field(2, _scope(scope, spans)) for scope, spans in scopes.items()]
    if resource.schema_url:
        out.append(_field(3, resource.schema_url.encode()))
    return b"".join(out)


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized `ExportTraceServiceRequest` for `spans`, grouped by resource, then by
    instrumentation scope, in the order first seen (as the SDK groups them)."""
    grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    for span in spans:
        scopes = grouped.setdefault(span.resource, {})
        scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
    return b"".join(_field(1, _resource(resource, scopes)) for resource, scopes in grouped.items())


class OTLPExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, posting the bytes `encode` wrote."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        client = getattr(self, "_client", None)
        fast = hasattr(self, "_metrics")  # the SDK's own export metrics, kept on the fast path
        self._post: Callable[[bytes], Any] | None = getattr(client, "export", None) \
            if fast else None

    @property
    def encodes(self) -> bool:
        """True when `encode` writes the requests (else the SDK's own encoder does)."""
        return self._post is not None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Post `encode(spans)`; what it does not write, a shut-down exporter and a request
        over `max_request_size` go the SDK's way (its warning, its drop, its failure)."""
        if self._post is None or getattr(self, "_shutdown", False):
            return super().export(spans)
        try:
            body = encode(spans)
        except (TypeError, ValueError):
            return super().export(spans)
        limit = getattr(self, "_max_request_size", 0)
        if limit and limit > 0 and len(body) > limit:
            return super().export(spans)
        with self._metrics.export_operation(len(spans)) as outcome:
            sent = self._post(body)  # the SDK's client: compression, retries, logs
            if not sent.success:
                outcome.error = sent.error
                outcome.error_attrs = ({HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                                       if sent.status_code is not None else None)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
